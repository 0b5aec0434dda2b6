"""The kobo profile: armv7l busybox via qemu-user, telnet login, udev boot and Wi-Fi hooks, reboot keeps onboard."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from fleetlab import lab
from fleetlab.rawtelnet import RawTelnet
from fleetlab.state import Device
from fleetlab.udev import UdevRuleError

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths, binfmt_misc)"),
]

NAME = "lt-kobo"

# The blog's hooks, reduced to what the test observes: boot.sh leaves one child in its process group and one that
# escaped with setsid; the wlan hooks log their event to /mnt/onboard. The onboard is FAT under fusefat, which
# refuses to extend a file that is not empty when opened (EPERM; the kernel's vfat appends): the hooks rewrite
# their log through a new file instead of `>>`.
HOOKS = r"""
mkdir -p /usr/local/lt
cat > /etc/udev/rules.d/98-lt.rules <<'EOF'
# fleetlab test hooks
KERNEL=="loop0", RUN+="/usr/local/lt/boot.sh"
KERNEL=="wlan*", ACTION=="add", RUN+="/usr/local/lt/wlan.sh up"
KERNEL=="wlan*", ACTION=="remove", \
    RUN+="/usr/local/lt/wlan.sh down"
EOF
cat > /usr/local/lt/boot.sh <<'EOF'
#!/bin/sh
renice 0 -p $$ >/dev/null
sleep 1001 &
env -i -- setsid sleep 1002 &
{ cat /mnt/onboard/boots 2>/dev/null; echo boot; } > /tmp/boots && cat /tmp/boots > /mnt/onboard/boots
exit 0
EOF
cat > /usr/local/lt/wlan.sh <<'EOF'
#!/bin/sh
{ cat /mnt/onboard/wlan.log 2>/dev/null; echo "$1 $ACTION $INTERFACE"; } > /tmp/wlan.log
cat /tmp/wlan.log > /mnt/onboard/wlan.log
EOF
chmod +x /usr/local/lt/boot.sh /usr/local/lt/wlan.sh
"""


@pytest.fixture(scope="module")
def kobo() -> Iterator[Device]:
    lab.down(NAME)
    device = lab.up(NAME, "kobo")
    assert lab.exec_(NAME, ["sh", "-c", HOOKS]).returncode == 0
    yield device
    lab.down(NAME)


def _sleepers() -> str:
    return lab.exec_(NAME, ["ps", "-o", "args"]).stdout


def test_telnet_login_answers_armv7l(kobo: Device) -> None:
    with RawTelnet(kobo.address) as tn:
        tn.login("root")
        assert tn.run("uname -m") == ("armv7l", 0)
        # A real ARM ELF runs (through qemu-user), not an x86 one.
        out, _unused = tn.run("head -c 20 /bin/busybox | od -An -tx1 | tr -d ' \\n'")
        assert out[36:40] == "2800"  # e_machine EM_ARM


def test_kobo_layout(kobo: Device) -> None:
    out = lab.exec_(NAME, ["sh", "-c", "grep -c ' /mnt/onboard ' /proc/mounts; df -k / | tail -1"]).stdout.split()
    assert out[0] == "1"  # a separate mount, as the blog's on-boot.sh waits for
    assert int(out[2]) <= 16 * 1024  # small / (KiB)
    assert lab.exec_(NAME, ["sh", "-c", "command -v iptables || echo none"]).stdout.strip() == "none"
    assert lab.exec_(NAME, ["test", "-d", "/etc/udev/rules.d"]).returncode == 0
    assert lab.exec_(NAME, ["test", "-e", "/bin/systemctl"]).returncode != 0


def test_reboot_fires_loop0_udev_kills_group_keeps_setsid_and_onboard(kobo: Device) -> None:
    lab.exec_(NAME, ["sh", "-c", "echo keep > /mnt/onboard/keep; echo gone > /tmp/volatile"])
    lab.reboot(NAME)
    ps = _sleepers()
    assert "sleep 1002" in ps  # escaped with setsid: survives udev's kill of the process group
    assert "sleep 1001" not in ps  # only backgrounded: killed with the RUN program's group
    assert lab.exec_(NAME, ["cat", "/mnt/onboard/keep"]).stdout == "keep\n"
    assert lab.exec_(NAME, ["cat", "/mnt/onboard/boots"]).stdout.split() == ["boot"]
    assert lab.exec_(NAME, ["test", "-e", "/tmp/volatile"]).returncode == 1
    lab.reboot(NAME)
    assert lab.exec_(NAME, ["cat", "/mnt/onboard/boots"]).stdout.split() == ["boot", "boot"]
    assert _sleepers().count("sleep 1002") == 1  # the old one died with the old pid namespace


def test_wifi_fires_wlan_add_and_remove(kobo: Device) -> None:
    lab.exec_(NAME, ["rm", "-f", "/mnt/onboard/wlan.log"])
    assert [r.returncode for r in lab.wifi(NAME, "up")] == [0]
    assert [r.returncode for r in lab.wifi(NAME, "down")] == [0]
    assert lab.exec_(NAME, ["cat", "/mnt/onboard/wlan.log"]).stdout.splitlines() == [
        "up add wlan0",
        "down remove wlan0",
    ]


def test_malformed_rule_is_an_error(kobo: Device) -> None:
    bad = "/etc/udev/rules.d/99-lt-bad.rules"
    lab.exec_(NAME, ["sh", "-c", f'echo \'KERNEL=="wlan*" RUN+="/bin/true\' > {bad}'])
    try:
        with pytest.raises(UdevRuleError, match=r"99-lt-bad.rules:1: invalid rule syntax"):
            lab.wifi(NAME, "up")
    finally:
        lab.exec_(NAME, ["rm", "-f", bad])
    assert [r.returncode for r in lab.wifi(NAME, "up")] == [0]


# The blog's hooks verbatim (seeds/000), with a stand-in tailscaled that only loops.
BLOG = r"""
mkdir -p /usr/local/dstaley
cat > /etc/udev/rules.d/98-tailscale.rules <<'EOF'
KERNEL=="loop0", RUN+="/usr/local/dstaley/boot.sh"
KERNEL=="wlan*", ACTION=="add", RUN+="/usr/local/dstaley/on-wlan-up.sh"
KERNEL=="wlan*", ACTION=="remove", RUN+="/usr/local/dstaley/on-wlan-down.sh"
EOF
cat > /usr/local/dstaley/boot.sh <<'EOF'
#!/bin/sh

# Start by renicing ourselves to a neutral value, to avoid any mishap...
renice 0 -p $$

# Launch in the background, with a clean env, after a setsid call to make very very sure udev won't kill us ;).
env -i -- setsid /usr/local/dstaley/on-boot.sh &

# Done :)
exit 0
EOF
cat > /usr/local/dstaley/on-boot.sh <<'EOF'
#!/bin/sh

# make absolutely sure that iptables is in the PATH
export PATH=/usr/sbin:/usr/bin:$PATH

# make sure /mnt/onboard is mounted
timeout 5 sh -c "while ! grep /mnt/onboard /proc/mounts; do sleep 0.1; done"
if [[ $? -eq 143 ]]; then
    exit 1
fi

case "$(pidof tailscaled | wc -w)" in
0) tailscaled --state=/tailscaled.state &> /tailscaled.log &
   ;;
esac

exit 0
EOF
printf '#!/bin/sh\necho "stand-in tailscaled $*"\nwhile :; do sleep 1; done\n' > /mnt/onboard/tailscaled
chmod +x /usr/local/dstaley/boot.sh /usr/local/dstaley/on-boot.sh /mnt/onboard/tailscaled
ln -sf /mnt/onboard/tailscaled /usr/bin/tailscaled
"""


def _tailscaled_count(name: str, want: int) -> int:
    for _attempt in range(100):
        count = int(lab.exec_(name, ["sh", "-c", "pidof tailscaled | wc -w"]).stdout)
        if count == want:
            break
        time.sleep(0.1)
    return count


def test_blog_boot_hooks_start_tailscaled_once_per_boot() -> None:
    name = "lt-kblog"
    lab.down(name)
    lab.up(name, "kobo")
    try:
        assert lab.exec_(name, ["sh", "-c", BLOG]).returncode == 0
        for _attempt in range(2):
            lab.reboot(name)
            assert _tailscaled_count(name, 1) == 1
        assert lab.exec_(name, ["cat", "/tailscaled.log"]).stdout == "stand-in tailscaled --state=/tailscaled.state\n"
    finally:
        lab.down(name)
