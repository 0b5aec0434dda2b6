"""login + routing roles on a lab sysvinit device through the real telnet connection plugin, real Tailscale.

The real tailscale and tailscaled (the lab's build of the newer pinned release) are copied onto the device and
tailscaled is started by hand (userspace networking: the sysvinit lab box has no iptables), so only the login and
routing roles run; the node logs in to the lab's headscale with a key minted for this module.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from repo_checkout import REPO, ansible_env

sys.path.insert(0, str(REPO / "tests" / "lab"))
from fleetlab import control, inventory, lab, tailscale_release  # noqa: E402  # the lab package lives in the repo

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
]

NAME = "lr-route"
KEYS: dict[str, str] = {}  # the module's pre-auth key, minted by the device fixture
HOST_SYSCTLS = ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding")


def dev(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return lab.exec_(NAME, list(argv), input=stdin, timeout=60)


def start_tailscaled() -> None:
    root = lab.get(NAME).root
    for kind, path in tailscale_release.binaries(tailscale_release.NEW_VERSION, "amd64").items():
        shutil.copyfile(path, root / "usr/bin" / kind)
        (root / "usr/bin" / kind).chmod(0o755)
    res = dev(
        "sh",
        "-c",
        "mkdir -p /var/lib/tailscale; TS_NO_LOGS_NO_SUPPORT=1 TS_DISABLE_PORTMAPPER=1 setsid tailscaled"
        " --statedir=/var/lib/tailscale --tun=userspace-networking --no-logs-no-support"
        " </dev/null >/tmp/tailscaled.log 2>&1 & i=0; while ! tailscale status --json >/dev/null 2>&1; do "
        "i=$((i+1)); [ $i -gt 100 ] && exit 1; sleep 0.2; done",
    )
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    lab.down(NAME)
    device = lab.up(NAME, "sysvinit")
    start_tailscaled()
    control.up()  # idempotent; the session's lab_control_plane fixture stops it at the end
    KEYS["key"] = control.mint_key(reusable=True, tags=["tag:fleetmesh-sysvinit"])
    work = tmp_path_factory.mktemp("routing")
    inv = inventory.build([device])
    (work / "inventory.yml").write_text(yaml.safe_dump(inv))
    (work / "play.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  roles:\n"
        "    - fleetmesh.tailscale.device\n    - fleetmesh.tailscale.login\n    - fleetmesh.tailscale.routing\n"
    )
    yield work
    lab.down(NAME)


def play(work: Path, *extra: str, **variables: object) -> subprocess.CompletedProcess[str]:
    vars_file = work / "vars.json"
    vars_file.write_text(json.dumps({"login_auth_key": KEYS["key"], "login_hostname": "relay1", **variables}))
    vars_file.chmod(0o600)
    try:
        return subprocess.run(
            ["ansible-playbook", "-i", str(work / "inventory.yml"), "-e", f"@{vars_file}", *extra,
             str(work / "play.yml")],
            env=ansible_env(work, ANSIBLE_CONFIG=str(REPO / "ansible.cfg")),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )  # fmt: skip
    finally:
        vars_file.unlink()


def prefs() -> dict:
    return json.loads(dev("tailscale", "debug", "prefs").stdout)


def sysctl(family: int) -> str:
    path = HOST_SYSCTLS[0] if family == 4 else HOST_SYSCTLS[1]
    return dev("cat", path).stdout.strip()


def host_sysctls() -> list[str]:
    return [Path(p).read_text().strip() for p in HOST_SYSCTLS]


def test_bad_route_fails_before_any_change(device: Path) -> None:
    before = (prefs(), sysctl(4), host_sysctls())
    res = play(device, routing_routes=["192.168.225.1/24"])
    assert res.returncode != 0
    assert "host bits set (did you mean 192.168.225.0/24?)" in res.stdout
    assert dev("test", "-e", "/etc/init.d/fleetmesh-ipforward").returncode == 1
    # login ran before routing; the route check is the routing role's first task, before any device change.
    assert prefs()["AdvertiseRoutes"] is None
    assert sysctl(4) == before[1] == "0"
    assert host_sysctls() == before[2]


def test_first_run_logs_in_and_routes_ipv4_only_second_run_changes_nothing(device: Path) -> None:
    host_before = host_sysctls()
    key = KEYS["key"]
    key_b64 = base64.b64encode(f"{key}\n".encode())[:24]
    seen: list[str] = []
    stop = threading.Event()

    def sample() -> None:  # the device's processes are in a child pid namespace: visible in the host's /proc
        while not stop.is_set():
            for proc in Path("/proc").iterdir():
                with contextlib.suppress(OSError):
                    cmdline = (proc / "cmdline").read_bytes() if proc.name.isdigit() else b""
                    if key.encode() in cmdline or key_b64 in cmdline:
                        seen.append(proc.name)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        res = play(device, "-vvv", routing_routes=["192.168.225.0/24"])
    finally:
        stop.set()
        sampler.join()
    assert res.returncode == 0, res.stdout[-3000:]
    assert key not in res.stdout + res.stderr
    # The telnet plugin may type the key file through the shell as base64: that must not be logged either.
    assert key_b64.decode() not in res.stdout + res.stderr
    assert seen == []
    status = json.loads(dev("tailscale", "status", "--json").stdout)
    assert status["BackendState"] == "Running" and status["Self"]["HostName"] == "relay1"
    assert prefs()["AdvertiseRoutes"] == ["192.168.225.0/24"]
    assert (sysctl(4), sysctl(6)) == ("1", "0")  # only the family present
    assert host_sysctls() == host_before
    again = play(device, routing_routes=["192.168.225.0/24"])
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-3000:]


def test_key_is_nowhere_on_the_device_disk(device: Path) -> None:
    dirs = "/bin /data /etc /lib /root /run /sbin /tmp /usr /var"
    grep = f"grep -r -l -F -f /dev/stdin {dirs} 2>/dev/null"
    # Positive control: the same grep finds a string we know is on the device.
    assert "/etc/init.d/fleetmesh-ipforward" in dev("sh", "-c", grep, stdin="Managed by fleetmesh\n").stdout
    res = dev("sh", "-c", grep, stdin=KEYS["key"] + "\n")
    assert res.stdout.strip() == "", res.stdout
    assert dev("sh", "-c", "ls -a /tmp | grep fleetmesh-ts").stdout == ""


def test_adding_a_route_uses_set_and_ipv6_turns_on_v6_forwarding(device: Path) -> None:
    key_before = json.loads(dev("tailscale", "status", "--json").stdout)["Self"]["PublicKey"]
    res = play(device, "-v", "--diff", routing_routes=["192.168.225.0/24", "fd00:225::/64"])
    assert res.returncode == 0, res.stdout[-3000:]
    advertise = res.stdout[res.stdout.index("TASK [fleetmesh.tailscale.routing : Advertise the routes]") :]
    assert "command: set" in advertise and "- --advertise-routes=192.168.225.0/24,fd00:225::/64" in advertise
    assert prefs()["AdvertiseRoutes"] == ["192.168.225.0/24", "fd00:225::/64"]
    assert (sysctl(4), sysctl(6)) == ("1", "1")
    assert json.loads(dev("tailscale", "status", "--json").stdout)["Self"]["PublicKey"] == key_before


def test_forwarding_survives_reboot(device: Path) -> None:
    # The device's netns outlives a lab reboot, so zero the sysctls first: only the boot script can restore them.
    dev("sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward; echo 0 > /proc/sys/net/ipv6/conf/all/forwarding")
    lab.reboot(NAME)
    deadline = time.monotonic() + 20
    while sysctl(4) != "1" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (sysctl(4), sysctl(6)) == ("1", "1")


def test_empty_route_list_withdraws_routes(device: Path) -> None:
    start_tailscaled()  # the reboot stopped the hand-started daemon (no boot role in this module's play)
    res = play(device, routing_routes=[])
    assert res.returncode == 0, res.stdout[-3000:]
    assert "advertises no subnet routes" in res.stdout
    assert prefs()["AdvertiseRoutes"] is None


def test_absent_removes_the_boot_script_only_and_keeps_running_forwarding(device: Path) -> None:
    """fleetmesh_state=absent: the rc script and its link the role wrote go (check mode first changes nothing); a
    file at the sysctl drop-in path the role did not write stays; the running sysctls stay as they are."""
    files = (
        "/etc/init.d/fleetmesh-ipforward /etc/rc5.d/S01fleetmesh-ipforward /etc/sysctl.d/99-fleetmesh-tailscale.conf"
    )
    foreign = "net.ipv4.ip_forward = 1  # the owner's own\n"
    dev("sh", "-c", "mkdir -p /etc/sysctl.d && cat > /etc/sysctl.d/99-fleetmesh-tailscale.conf", stdin=foreign)

    def present() -> str:
        return dev("sh", "-c", f"for f in {files}; do [ -e $f ] || [ -L $f ] && echo $f; done").stdout

    assert present().split() == files.split()
    running = (sysctl(4), sysctl(6))
    (device / "absent.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  roles:\n    - fleetmesh.tailscale.device\n"
        "    - fleetmesh.tailscale.routing\n"
    )
    base = ["-e", "fleetmesh_state=absent", str(device / "absent.yml")]
    run = [
        subprocess.run(
            ["ansible-playbook", "-i", str(device / "inventory.yml"), *extra, *base],
            env=ansible_env(device, ANSIBLE_CONFIG=str(REPO / "ansible.cfg")),
            capture_output=True, text=True, timeout=300, check=False,
        )
        for extra in (["--check"], [], [])
    ]  # fmt: skip
    for res, changed in zip(run, (1, 1, 0), strict=True):
        assert res.returncode == 0 and f"changed={changed} " in res.stdout, res.stdout[-3000:]
    assert present().split() == ["/etc/sysctl.d/99-fleetmesh-tailscale.conf"]
    assert dev("cat", "/etc/sysctl.d/99-fleetmesh-tailscale.conf").stdout == foreign
    assert (sysctl(4), sysctl(6)) == running
