"""An ARM lab kobo (armhf busybox and glibc under qemu-user 7.2) provisioned by site.yml with the real Tailscale.

What ARM proves: the release arch picked from the device (the installed tailscaled is the arm build, an ARM ELF
read back from the device), a node Running in userspace mode in the lab's headscale, the udev boot chain bringing it
back after a power cycle. Kernel mode is not what the lab gives ARM devices (`fleetlab inventory` sets
networking_mode: userspace for them): under qemu-user the router has no netfilter and no policy routing, which the
last test pins down so a qemu that learns them shows up here. Kernel mode, netfilter and the shim are proven natively
on amd64 (test_kobo_chain_lab.py). See docs/lab.md, "ARM devices under qemu-user".
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
    pytest.mark.usefixtures("iptables_bundles"),  # prepared if this machine has not yet (conftest)
]

lab = pytest.importorskip("fleetlab.lab", reason="the fleetlab package (tests/lab) is not installed")

from provision_lab import NEW, run_site, stop_sessions  # noqa: E402

from fleetlab import control, inventory, tailscale_release  # noqa: E402

KOBO = "kc-arm"
BOOT_LOG = "/usr/local/fleetmesh-tailscale/state/logs/boot.log"
DAEMON_ARGS = "tr '\\0' ' ' < /proc/$(pidof tailscaled)/cmdline"
EM_ARM = ["28", "00"]  # e_machine 40, little-endian


def sh(device: Any, script: str) -> str:
    proc = lab.exec_(device.name, ["sh", "-c", script], timeout=120)
    return proc.stdout + proc.stderr


def status(device: Any) -> dict[str, Any]:
    proc = lab.exec_(device.name, ["tailscale", "status", "--json"], timeout=120)
    try:
        return dict(json.loads(proc.stdout))
    except json.JSONDecodeError:
        return {}


def router_health(state: dict[str, Any]) -> list[str]:
    """The health messages about the router's firewall (netfilter, iptables, nftables tables)."""
    words = ("netfilter", "iptables", "nftables", "table")
    return [msg for msg in state.get("Health") or [] if any(w in msg for w in words)]


def wait_for(check: Callable[[], bool], timeout: float = 180) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(1)
    return check()


@pytest.fixture(scope="module")
def kobo(work: Path) -> Iterator[Any]:
    lab.down(KOBO)
    control.up()
    control.forget([KOBO])
    try:
        yield lab.up(KOBO, "kobo")
    finally:
        stop_sessions(work / "cp")
        lab.down(KOBO)
        control.forget([KOBO])


def test_arm_release_from_the_device_running_in_userspace(kobo: Any, work: Path, mirror: str) -> None:
    assert sh(kobo, "uname -m") == "armv7l\n"
    assert inventory.build([kobo])["all"]["children"]["kobo"]["hosts"][KOBO]["networking_mode"] == "userspace"
    run = run_site(kobo, work, mirror)
    assert run.rc == 0 and run.failed == 0, run.output[-3000:]
    # The installed tailscaled, read back from the device: a 32-bit little-endian ARM ELF, the lab's arm build.
    installed = sh(kobo, "readlink -f /usr/bin/tailscaled").strip()
    assert installed.startswith("/mnt/onboard/"), installed
    header = sh(kobo, f"head -c 20 {installed} | od -An -tx1").split()
    assert header[:6] == ["7f", "45", "4c", "46", "01", "01"] and header[18:20] == EM_ARM, header
    built = tailscale_release.binaries(NEW, "arm")["tailscaled"]
    assert sh(kobo, f"sha256sum {installed}").split()[0] == hashlib.sha256(built.read_bytes()).hexdigest()
    assert sh(kobo, "tailscale version").splitlines()[0] == NEW
    args = sh(kobo, DAEMON_ARGS)
    assert "--tun=userspace-networking" in args, args
    assert "can't find device" in sh(kobo, "ip link show tailscale0")
    state = status(kobo)
    # No router health error (the tailnet is shared: other tests' peers may bring their own messages, such as
    # "Some peers are advertising routes but --accept-routes is false").
    assert state["BackendState"] == "Running" and router_health(state) == [], state.get("Health")
    assert state["Self"]["HostName"] == KOBO
    address = state["Self"]["TailscaleIPs"][0]
    node = [n for n in control.nodes() if address in (n.get("ip_addresses") or [])]
    assert len(node) == 1 and node[0].get("online") and node[0]["given_name"] == KOBO, node
    assert node[0]["tags"] == ["tag:fleetmesh-kobo"]
    # Power cycle: the lab's loop0 uevent runs the udev hook, which starts tailscaled again; same node.
    key = state["Self"]["PublicKey"]
    lab.reboot(KOBO)
    assert wait_for(lambda: status(kobo).get("BackendState") == "Running"), sh(kobo, f"tail -20 {BOOT_LOG}")
    assert status(kobo)["Self"]["PublicKey"] == key
    assert sh(kobo, DAEMON_ARGS) == args
    again = run_site(kobo, work, mirror)
    assert again.rc == 0 and again.changed == 0, again.output[-3000:]


def test_kernel_mode_under_qemu_has_no_netfilter(kobo: Any, work: Path, mirror: str) -> None:
    """Why the lab runs ARM devices in userspace: qemu-user 7.2 cannot translate what the router's firewall needs.

    Without the shim tailscaled falls back to nftables, whose NETLINK_NETFILTER socket qemu refuses
    (EPROTONOSUPPORT); with the shim, iptables' IPT_SO_GET_INFO getsockopt gets ENOPROTOOPT. Either way the node
    runs, with a router health error and no firewall; RTM_GETRULE (EOPNOTSUPP) leaves it without policy routing.
    """
    # The inventory's shim came with the first run: take its commands away, as on a kobo that never had one.
    sh(kobo, "rm /usr/sbin/iptables /usr/sbin/ip6tables")
    # Kernel mode under qemu-user cannot mark its sockets (SO_MARK: ENOPROTOOPT), so tailscaled binds them to the
    # default route's interface, or to lo when there is none, as in a lab device: it would never reach the
    # control server. For this measurement the device gets a default route via the lab bridge (the host does not
    # forward: anything not for the lab ends there).
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "0", "the host forwards: not measuring"
    sh(kobo, "ip route add default via 198.18.0.1 dev eth0")
    run = run_site(kobo, work, mirror, {"networking_mode": "kernel", "iptables_shim_enabled": False})
    assert run.rc == 0, run.output[-3000:]
    assert "--tun=userspace-networking" not in sh(kobo, DAEMON_ARGS)
    state = status(kobo)
    assert state["BackendState"] == "Running"
    assert "create table: get table: get tables: socket: protocol not supported" in state.get("Health", []), state
    log = sh(kobo, f"cat {BOOT_LOG}")
    assert "router: error querying IP rules (does kernel have IP_MULTIPLE_TABLES?): operation not supported" in log
    assert "router: warning: running without policy routing" in log
    # With the shim (the armhf bundle: its iptables runs, `--version` works) tailscaled takes the iptables path.
    shim = run_site(kobo, work, mirror, {"networking_mode": "kernel"})
    assert shim.rc == 0, shim.output[-3000:]
    assert sh(kobo, "iptables --version").startswith("iptables v1.8.9 (legacy)")
    assert "can't initialize iptables table `filter': iptables who?" in sh(kobo, "iptables -S")
    assert wait_for(lambda: "iptables who?" in " ".join(status(kobo).get("Health", [])), 60), status(kobo)
    health = " ".join(status(kobo)["Health"])
    assert "running [/usr/sbin/iptables -t filter -N ts-input --wait]: exit status 3" in health, health
