"""networking role on lab devices through the real connection plugins (adb, telnet): every branch of the decision.

- quecopen (adb, kernel has tun, no node): kernel mode with the node created; the published boot lines recreate it
  after `fleetlab reboot` (and, once the boot role is in site.yml, the boot integration does it by itself).
- sysvinit (telnet) with tun hidden from its kernel view (`fleetlab up --hide-tun`: a /proc/misc without tun
  bind-mounted over the real one, an empty /sys/class/misc) and no node: auto ends in userspace; lo gets back the
  127.0.0.1 it lost and the real tailscaled started with the published flags answers SOCKS5 on the device's
  loopback; forced kernel fails before any change; a tun.ko the kernel refuses fails and leaves nothing behind;
  switching modes and back is a no-op the run after.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
]

lab = pytest.importorskip("fleetlab.lab", reason="the fleetlab package (tests/lab) is not installed")

from provision_lab import RECAP_RE, release_mirror, run_site, stop_sessions  # noqa: E402

from fleetlab import tailscale_release  # noqa: E402
from fleetlab.inventory import host_vars  # noqa: E402
from repo_checkout import REPO, ansible_env  # noqa: E402

QUEC = "net-q1"
BOX = "net-s1"
NODE = "/dev/net/tun"
# A SOCKS5 client's greeting (version 5, one method: no authentication) on the device's loopback; the answer in hex.
# Retried for a few seconds: the listener comes up just after the daemon.
SOCKS5_GREETING = (
    "i=0; while a=$(printf '\\005\\001\\000' | nc -w 2 127.0.0.1 1055 | od -An -tx1 | head -1);"
    ' [ -z "$a" ] && [ $i -lt 10 ]; do i=$((i+1)); sleep 0.5; done; echo "$a"'
)
# Undo the lab's --hide-tun mounts in the running device (the kernel view then lists tun again).
UNHIDE_TUN = "umount /sys/class/misc; umount /proc/misc"

PLAY = """
- name: Networking only
  hosts: all
  gather_facts: false
  roles:
    - role: fleetmesh.tailscale.device
    - role: fleetmesh.tailscale.networking
  post_tasks:
    - name: Hand the published fact to the test
      ansible.builtin.copy:
        content: "{{ ansible_facts.fleetmesh_networking | default({}) | to_json }}"
        dest: "{{ facts_file }}"
        mode: "0600"
      changed_when: false  # a test hand-over, not a change of the device
      delegate_to: localhost
      when: (fleetmesh_state | default('present')) == 'present'
"""


class Result:
    def __init__(self, proc: subprocess.CompletedProcess[str], host: str, facts_file: Path) -> None:
        self.rc = proc.returncode
        self.output = proc.stdout + proc.stderr
        recap = {m.group(1): m for m in RECAP_RE.finditer(self.output)}.get(host)
        self.changed = int(recap.group(3)) if recap else -1
        self.facts = json.loads(facts_file.read_text()) if self.rc == 0 and facts_file.exists() else {}
        facts_file.unlink(missing_ok=True)
        self.text = " ".join(self.output.split())


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("net-lab")
    (path / "play.yml").write_text(PLAY)
    (path / "home").mkdir()
    yield path
    stop_sessions(path / "cp")


def play(device: Any, work: Path, extra: dict[str, Any] | None = None, *, check: bool = False) -> Result:
    hv = host_vars(device)
    hv.update(fleetmesh_telnet_control_path_dir=str(work / "cp"), facts_file=str(work / "facts.json"))
    hv.update(extra or {})
    inv = work / "inventory.yml"
    inv.write_text(yaml.safe_dump({device.profile: {"hosts": {device.name: hv}}}))
    proc = subprocess.run(
        ["ansible-playbook", "-i", str(inv), str(work / "play.yml"), *(["--check"] if check else [])],
        env=ansible_env(work / "home", ANSIBLE_CONFIG=str(REPO / "ansible.cfg")),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )
    return Result(proc, device.name, work / "facts.json")


def sh(device: Any, script: str, stdin: str | None = None) -> str:
    proc = lab.exec_(device.name, ["sh", "-c", script], input=stdin)
    return proc.stdout + proc.stderr


def node(device: Any) -> str:
    """'absent', or the node's type+mode and major, minor as ls shows them."""
    return sh(device, f"if [ -e {NODE} ]; then ls -l {NODE} | awk '{{print $1, $5, $6}}'; else echo absent; fi")


@pytest.fixture(scope="module")
def quec() -> Iterator[Any]:
    lab.down(QUEC)
    device = lab.up(QUEC, "quecopen")
    yield device
    lab.down(QUEC)


@pytest.fixture(scope="module")
def box() -> Iterator[Any]:
    lab.down(BOX)
    device = lab.up(BOX, "sysvinit", hide_tun=True)  # tun hidden from its kernel view, no node
    # The real tailscaled of the newer pinned release, put straight into the device's root filesystem.
    daemon = tailscale_release.binaries(tailscale_release.NEW_VERSION, "amd64")["tailscaled"]
    shutil.copyfile(daemon, device.root / "usr/bin/tailscaled")
    (device.root / "usr/bin/tailscaled").chmod(0o755)
    yield device
    lab.down(BOX)


def test_quecopen_without_node_gets_it_and_the_boot_lines_bring_it_back(quec: Any, work: Path) -> None:
    assert node(quec) == "absent\n"
    checked = play(quec, work, check=True)
    assert checked.rc == 0 and checked.changed == 1, checked.output[-2000:]
    assert node(quec) == "absent\n"
    first = play(quec, work)
    assert first.rc == 0 and first.changed == 1, first.output[-2000:]
    assert node(quec) == "crw------- 10, 200\n"
    facts = first.facts
    assert (facts["mode"], facts["branch"], facts["tailscaled_args"]) == ("kernel", "mknod", [])
    assert facts["tun"] == {"node": False, "kernel": True, "module_loaded": False}
    again = play(quec, work)
    assert again.rc == 0 and again.changed == 0, again.output[-2000:]
    assert again.facts["branch"] == "node" and again.facts["boot_commands"] == facts["boot_commands"]
    lab.reboot(QUEC)
    assert node(quec) == "absent\n"  # /dev is rebuilt at boot: the node must be made again every time
    # What the boot integration runs before tailscaled: the published lines, in the device's own sh.
    for line in facts["boot_commands"]:
        sh(quec, line)
    assert node(quec) == "crw------- 10, 200\n"
    assert play(quec, work).changed == 0


def test_hidden_tun_forced_kernel_fails_before_any_change(box: Any, work: Path) -> None:
    sh(box, "ip addr del 127.0.0.1/8 dev lo")
    assert "tun" not in sh(box, "cat /proc/misc; ls /sys/class/misc")
    failed = play(box, work, {"networking_mode": "kernel"})
    assert failed.rc != 0
    assert "networking_mode=kernel cannot work on this device: the kernel has no tun driver" in failed.text
    assert "Nothing was changed" in failed.text
    assert node(box) == "absent\n" and "127.0.0.1" not in sh(box, "ip -4 addr show dev lo")


def test_hidden_tun_auto_is_userspace_with_socks5_on_loopback(box: Any, work: Path) -> None:
    # The KOReader case: without 127.0.0.1 on lo the proxy cannot bind.
    refused = sh(box, "tailscaled --tun=userspace-networking --socks5-server=127.0.0.1:1055 --state=mem: 2>&1")
    assert "bind: cannot assign requested address" in refused
    first = play(box, work)
    assert first.rc == 0 and first.changed == 1, first.output[-2000:]
    facts = first.facts
    assert (facts["mode"], facts["branch"]) == ("userspace", "userspace")
    assert facts["tailscaled_args"] == [
        "--tun=userspace-networking",
        "--socks5-server=127.0.0.1:1055",
        "--outbound-http-proxy-listen=127.0.0.1:1055",
    ]
    assert "[WARNING]" in first.output and "userspace networking (the kernel has no tun driver" in first.text
    assert "inet 127.0.0.1/8" in sh(box, "ip -4 addr show dev lo")
    assert node(box) == "absent\n"  # userspace leaves /dev alone
    # Start the daemon as the boot integration will (boot lines, then tailscaled with the flags) and greet SOCKS5.
    args = " ".join(facts["tailscaled_args"])
    boot = "; ".join(facts["boot_commands"])
    sh(box, f"{boot}; tailscaled {args} --state=mem: --socket=/tmp/ts.sock >/tmp/tsd.log 2>&1 & echo $! > /tmp/tsd.pid")
    try:
        greeting = sh(box, SOCKS5_GREETING)
        assert greeting.split()[:2] == ["05", "00"], sh(box, "cat /tmp/tsd.log")
    finally:
        sh(box, "kill $(cat /tmp/tsd.pid)")
    assert play(box, work).changed == 0


def test_module_the_kernel_refuses_leaves_nothing_behind(box: Any, work: Path) -> None:
    sh(box, "mkdir -p /opt/tailscale")  # the storage dir, as the binary role leaves it
    ko = work / "tun.ko"
    ko.write_bytes(b"\x7fELF not a module for this kernel")
    failed = play(box, work, {"networking_mode": "kernel", "networking_tun_module": str(ko)})
    assert failed.rc != 0 and "insmod /opt/tailscale/tun.ko.fmtmp failed" in failed.text, failed.output[-2000:]
    assert sh(box, "ls /opt/tailscale/ 2>&1").strip() == "", "the upload was not cleaned up"
    assert node(box) == "absent\n"
    absent = play(box, work, {"fleetmesh_state": "absent", "networking_tun_module": str(ko)})
    assert absent.rc == 0 and absent.changed == 0


def test_switching_modes_and_back_then_nothing_to_do(box: Any, work: Path) -> None:
    sh(box, UNHIDE_TUN)
    kernel = play(box, work)
    assert kernel.rc == 0 and kernel.changed == 1 and kernel.facts["mode"] == "kernel", kernel.output[-2000:]
    assert node(box) == "crw------- 10, 200\n"
    user = play(box, work, {"networking_mode": "userspace"})
    assert user.rc == 0 and user.changed == 0 and user.facts["mode"] == "userspace"
    back = play(box, work)
    assert back.rc == 0 and back.changed == 0
    for key in ("mode", "tailscaled_args", "boot_commands"):
        assert back.facts[key] == kernel.facts[key]


BOOTED = "net-s2"
# The daemon's command line (one unique line per running daemon).
DAEMON_ARGS = (
    "for p in $(pidof tailscaled); do { tr '\\0' ' ' < /proc/$p/cmdline; echo; } 2>/dev/null; done"
    " | grep tailscaled | sort -u"
)
WAIT_DAEMON = "i=0; while [ ! -e /var/run/tailscale/tailscaled.sock ] && [ $i -lt 150 ]; do sleep 0.2; i=$((i+1)); done"
# The node's public key as the daemon reports it (Self comes before Peer in `tailscale status --json`).
NODE_KEY = "tailscale status --json | grep -m1 '\"PublicKey\"'"


def test_site_boot_remakes_the_node_and_a_mode_switch_restarts_keeping_the_node(work: Path) -> None:
    # A sysvinit box whose /dev has no tun node at any boot; the kernel has tun. tailscaled's kernel mode needs
    # iptables: the amd64 bundle works for real in the device's netns.
    lab.down(BOOTED)
    device = lab.up(BOOTED, "sysvinit", tun_node=False)
    # The lab's key comes with run_site (root-only under /run/fleetlab; the inventory holding it is removed at the end).
    extra = {"iptables_shim_enabled": True, "networking_mode": "auto"}
    (work / "site").mkdir(mode=0o700, exist_ok=True)
    try:
        with release_mirror(work / "mirror") as url:
            first = run_site(device, work / "site", url, extra)
            assert first.rc == 0, first.output[-3000:]
            assert node(device) == "crw------- 10, 200\n"
            kernel_args = sh(device, DAEMON_ARGS)
            assert "tailscaled" in kernel_args and "userspace-networking" not in kernel_args
            key = sh(device, NODE_KEY)
            assert "nodekey:" in key
            lab.reboot(BOOTED)
            sh(device, WAIT_DAEMON)  # the init script starts tailscaled in the background
            assert node(device) == "crw------- 10, 200\n"  # made by the boot integration before tailscaled
            assert sh(device, DAEMON_ARGS) == kernel_args
            user = run_site(device, work / "site", url, {**extra, "networking_mode": "userspace"})
            assert user.rc == 0 and user.changed >= 1, user.output[-3000:]
            user_args = sh(device, DAEMON_ARGS)
            assert "--tun=userspace-networking --socks5-server=127.0.0.1:1055" in user_args
            assert "--outbound-http-proxy-listen=127.0.0.1:1055" in user_args
            greeting = sh(device, SOCKS5_GREETING)
            assert greeting.split()[:2] == ["05", "00"]
            back = run_site(device, work / "site", url, extra)
            assert back.rc == 0 and sh(device, DAEMON_ARGS) == kernel_args, back.output[-3000:]
            assert sh(device, NODE_KEY) == key  # the same node through both switches
            again = run_site(device, work / "site", url, extra)
            assert again.rc == 0 and again.changed == 0, again.output[-3000:]
    finally:
        stop_sessions(work / "site" / "cp")
        (work / "site" / "inventory.yml").unlink(missing_ok=True)
        lab.down(BOOTED)
