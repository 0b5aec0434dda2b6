"""device_facts: the script's recorded outputs become the right facts."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleActionFail
from ansible_collections.fleetmesh.tailscale.plugins.action.device_facts import build_facts, render_script

# Recorded from a Kobo-like busybox device (armv7l, old glibc, udev, /mnt/onboard FAT, no iptables, no tun node).
KOBO = """\
@@uname
Linux
4.9.77
armv7l
unknown
@@elf
 7f 45 4c 46 01 01 01 00 00 00 00 00 00 00 00 00
 02 00 28 00
@@libc
GNU C Library (Ubuntu EGLIBC 2.19-0ubuntu6) stable release version 2.19, by Roland McGrath et al.
@@init
udev
@@applets
ash cat grep setsid sha256sum wget
@@commands
setsid /bin/setsid
sha256sum /usr/bin/sha256sum
wget /usr/bin/wget
@@mounts
/dev/root / ext4 ro,relatime 0 0
proc /proc proc rw 0 0
/dev/mmcblk0p3 /mnt/onboard vfat rw,noatime 0 0
@@df
/\t/dev/root 258048 200000 58048 78% /
/tmp\ttmpfs 1024 0 1024 0% /tmp
/mnt/onboard/.tailscale\t/dev/mmcblk0p3 7340032 2000000 5340032 27% /mnt/onboard
@@tun
misc
@@end
""".replace("\\t", "\t")

MIPS_ROUTER = """\
@@uname
Linux
5.4.0
mips
unknown
@@elf
 7f 45 4c 46 01 01 01 00 00 00 00 00 00 00 00 00
@@libc
/lib/ld-musl-mipsel-sf.so.1
@@init
procd
@@end
"""


def test_kobo_output() -> None:
    facts = build_facts(KOBO)
    assert facts["tailscale_arch"] == "arm"
    assert facts["libc"] == {"name": "glibc", "version": "2.19"}
    assert facts["init_systems"] == ["udev"]
    assert facts["iptables"] is False
    assert facts["root_readonly"] is True
    assert facts["storage"]["/mnt/onboard/.tailscale"] == {
        "mount": "/mnt/onboard",
        "total_kb": 7340032,
        "avail_kb": 5340032,
    }
    assert facts["tun"] == {"node": False, "kernel": True, "module_loaded": False}
    assert facts["commands"]["setsid"] == "/bin/setsid"
    assert facts["python"] == ""
    assert "sha256sum" in facts["busybox_applets"]


def test_mips_endianness_comes_from_the_elf_header() -> None:
    facts = build_facts(MIPS_ROUTER)
    assert facts["tailscale_arch"] == "mipsle"
    assert facts["libc"]["name"] == "musl"
    assert facts["init_systems"] == ["procd"]


def test_unknown_arch_is_reported_not_guessed() -> None:
    facts = build_facts("@@uname\nLinux\n6.1\nsparc64\n@@end\n")
    assert facts["tailscale_arch"] == ""
    assert "sparc64" in facts["tailscale_arch_error"]


def test_output_cut_short_fails_clearly() -> None:
    with pytest.raises(AnsibleActionFail, match="cut short"):
        build_facts(KOBO.replace("@@end\n", ""))


def test_paths_are_quoted_in_the_script() -> None:
    script = render_script(["/", "/mnt/on board/it's"])
    assert "'/mnt/on board/it'\"'\"'s'" in script
    assert "__PATHS__" not in script
    assert "__COMMANDS__" not in script
