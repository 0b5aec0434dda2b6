"""The tailnet carries traffic: site.yml-provisioned lab devices (real tailscaled 1.98.10, the lab's headscale).

- Two amd64 sysvinit boxes in kernel mode (the lab's iptables shim bundle): each reaches the other's tailnet
  address through tailscale0 (`ip route get`), a TCP connection to a busybox nc listener on the peer's tailnet IP
  gets its answer and the listener sees the caller's tailnet address, and `tailscale ping` finds a direct path over
  the lab bridge (via 198.18.x.y:port, not DERP).
- Subnet routing, userspace: a QuecOpen device (userspace networking in the lab) with a LAN behind its bridge0
  (fleetlab.lan, 192.168.225.0/24) and routing_routes for it: headscale auto-approves the route (policy
  autoApprovers) and serves it from that node; the kernel-mode peer with login_accept_routes talks TCP to the LAN
  host's server through the tailnet, and the LAN host sees the router's own LAN address.
- Subnet routing, kernel: the second sysvinit box routes its own LAN (192.168.226.0/24, then fd00:226::/64 as
  well): the routing role turns on net.ipv4.ip_forward for the IPv4 route and net.ipv6.conf.all.forwarding only
  once an IPv6 route is advertised (and neither on the peer, which advertises none); traffic from the peer reaches
  the LAN host over both families, source-NATed by the router (tailscaled's default --snat-subnet-routes).

192.168.226.0/24 is not in the lab policy's autoApprovers: it is approved by hand (control.approve_routes), so the
kernel router never shares a route with the QuecOpen one (headscale would serve a shared route from one primary).
The nodes this module registered are deleted from headscale at the end; the control plane itself is shared and
left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
]

lab = pytest.importorskip("fleetlab.lab", reason="the fleetlab package (tests/lab) is not installed")

from provision_lab import release_mirror, run_site, stop_sessions  # noqa: E402

from fleetlab import control, lan  # noqa: E402
from fleetlab.inventory import host_vars  # noqa: E402
from fleetlab.state import LabError, ProcRef  # noqa: E402

PEER = "tn-a"  # sysvinit, kernel mode, accepts routes, advertises none
BOX = "tn-b"  # sysvinit, kernel mode, subnet router of its own LAN
QUEC = "tn-q"  # quecopen, userspace networking, subnet router of the module's LAN
KERNEL = {"networking_mode": "kernel", "iptables_shim_enabled": True}
QUEC_LAN = "192.168.225.0/24"  # auto-approved by the lab policy
BOX_LAN = "192.168.226.0/24"  # approved by hand (see the module docstring)
# Not the QuecOpen's fd00:225::/64: another node of the shared tailnet (a Molecule QuecOpen, say) may hold that one,
# and then headscale did not list it among this node's announced routes (seen in a full suite run).
BOX_LAN6 = "fd00:226::/64"
LISTEN_PORT = 7001
FORWARDING = ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding")
# The caller's line on the listener's side: busybox nc -e runs it with the connection on stdin/stdout.
HELLO = f"""#!/bin/sh
echo "hello from $(hostname)"
read -r line
echo "got $line"
netstat -tn | grep ':{LISTEN_PORT} '
"""
WAIT = 90.0  # route propagation (headscale -> netmap -> table 52) and the first packets of a fresh path

T = TypeVar("T")


@dataclass
class Node:
    name: str
    work: Path
    ipv4: str
    ipv6: str
    node_id: int
    device: Any
    mirror: str


def sh(name: str, script: str, timeout: float = 60) -> str:
    proc = lab.exec_(name, ["sh", "-c", script], timeout=timeout)
    return proc.stdout + proc.stderr


def ts_status(name: str) -> dict[str, Any]:
    return json.loads(lab.exec_(name, ["tailscale", "status", "--json"]).stdout or "{}")


def wait_for(probe: Callable[[], T], ok: Callable[[T], bool], timeout: float = WAIT, every: float = 2.0) -> T:
    """The first probe() result ok() accepts, or the last one when the time is up (the caller's assert says why)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(every)


def hs_node(node_id: int) -> dict[str, Any]:
    return next((n for n in control.nodes() if int(n["id"]) == node_id), {})


def forwarding(name: str) -> tuple[str, str]:
    v4, v6 = (sh(name, f"cat {path}").strip() for path in FORWARDING)
    return v4, v6


def talk(name: str, address: str, port: int, line: str) -> str:
    """One TCP conversation from the device with busybox nc (a bare IPv6 address works): what came back for
    `line`. stdin stays open 2 s so the other side answers before nc half-closes."""
    return sh(name, f"(echo {line}; sleep 2) | nc -w 10 {address} {port} 2>&1")


def route_dev(name: str, address: str) -> str:
    family = "-6 " if ":" in address else ""
    return sh(name, f"ip {family}route get {address}")


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    control.up()  # idempotent; shared with other tests, never stopped here
    for node in control.nodes():  # leftovers of an interrupted run of this module
        if str(node.get("given_name", "")).startswith("tn-") and not node.get("online"):
            control.delete_node(int(node["id"]))
    with release_mirror(tmp_path_factory.mktemp("tn-mirror")) as url:
        yield url


@contextlib.contextmanager
def provisioned(
    name: str, profile: str, mirror: str, tmp: Path, extra: dict[str, Any], *, lan_args: dict[str, Any] | None = None
) -> Iterator[Node]:
    """A fresh lab device (with its LAN), both forwarding sysctls at 0 in its netns, site.yml run on it once."""
    work = tmp / name
    work.mkdir(mode=0o700)
    node_id = None
    device = None
    lab.down(name)
    try:
        device = lab.up(name, profile)
        if lan_args is not None:
            lan.attach(name, **lan_args)
        # A new netns may inherit the host's values: start from 0 so only the routing role can make them 1.
        sh(name, " ; ".join(f"echo 0 > {path}" for path in FORWARDING))
        assert forwarding(name) == ("0", "0")
        start = time.monotonic()
        run = run_site(device, work, mirror, extra)
        print(f"timing: site.yml on {name} ({profile}): {time.monotonic() - start:.0f} s")
        assert run.rc == 0 and run.failed == 0, run.output[-4000:]
        status = ts_status(name)
        assert status.get("BackendState") == "Running", status
        ips = status["Self"]["TailscaleIPs"]
        ipv4 = [ip for ip in ips if "." in ip][0]
        ipv6 = [ip for ip in ips if ":" in ip][0]
        node_id = [int(n["id"]) for n in control.nodes() if ipv4 in (n.get("ip_addresses") or [])][0]
        yield Node(name, work, ipv4, ipv6, node_id, device, mirror)
    finally:
        stop_sessions(work / "cp")
        if device is not None and device.profile == "quecopen" and shutil.which("adb"):
            # Drop the connection plugin's adb transport while the device still answers: an adb server holding a
            # transport whose address vanished with the netns hangs (its `kill-server` at session end then times out).
            serial = host_vars(device)["fleetmesh_adb_serial"]
            subprocess.run(["adb", "disconnect", serial], capture_output=True, timeout=30, check=False)
        (work / "inventory.yml").unlink(missing_ok=True)  # it holds the lab's pre-auth key
        lab.down(name)
        if node_id is not None:
            with contextlib.suppress(LabError):
                control.delete_node(node_id)


@pytest.fixture(scope="module")
def peer(mirror: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with provisioned(
        PEER, "sysvinit", mirror, tmp_path_factory.mktemp("tn"), {**KERNEL, "login_accept_routes": True}
    ) as node:
        yield node


@pytest.fixture(scope="module")
def box(mirror: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    extra = {**KERNEL, "routing_routes": [BOX_LAN]}
    lan_args = {"cidr": BOX_LAN, "ipv6": BOX_LAN6}
    with provisioned(BOX, "sysvinit", mirror, tmp_path_factory.mktemp("tn"), extra, lan_args=lan_args) as node:
        yield node


@pytest.fixture(scope="module")
def quec(mirror: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    # run_site gives the quecopen box userspace networking; its fixed hostname would name the node mdm9607-perf.
    extra = {"routing_routes": [QUEC_LAN], "login_hostname": QUEC}
    with provisioned(
        QUEC, "quecopen", mirror, tmp_path_factory.mktemp("tn"), extra, lan_args={"cidr": QUEC_LAN}
    ) as node:
        yield node


# ------------------------------------------------------------------------------------------ node to node (kernel)


def test_kernel_peers_route_each_other_through_tailscale0(peer: Node, box: Node) -> None:
    for src, dst in ((peer, box), (box, peer)):
        assert "dev tailscale0" in route_dev(src.name, dst.ipv4), route_dev(src.name, dst.ipv4)
        assert "dev tailscale0" in route_dev(src.name, dst.ipv6), route_dev(src.name, dst.ipv6)


def test_tcp_to_a_listener_on_the_peer_tailnet_address(peer: Node, box: Node) -> None:
    lab.exec_(box.name, ["sh", "-c", "cat > /tmp/tn-hello.sh && chmod 755 /tmp/tn-hello.sh"], input=HELLO)
    sh(box.name, f"setsid nc -l -p {LISTEN_PORT} -e /tmp/tn-hello.sh </dev/null >/dev/null 2>&1 &")
    listening = wait_for(lambda: sh(box.name, "netstat -ltn"), lambda out: f":{LISTEN_PORT} " in out, 20, 0.2)
    assert f":{LISTEN_PORT} " in listening, listening
    answer = talk(peer.name, box.ipv4, LISTEN_PORT, "tn-probe")
    assert f"hello from {BOX}" in answer and "got tn-probe" in answer, answer
    # The listener's own view of the connection: its tailnet address, the caller's tailnet address. CLOSE_WAIT
    # when the caller's half-close (after its 2 s) reached the listener before its netstat ran (a loaded machine):
    # the same connection, between the same two addresses.
    seen = (
        rf"(::ffff:)?{re.escape(box.ipv4)}:{LISTEN_PORT}\s+(::ffff:)?{re.escape(peer.ipv4)}:\d+\s+"
        r"(ESTABLISHED|CLOSE_WAIT)"
    )
    assert re.search(seen, answer), answer


def test_tailscale_ping_finds_a_direct_path(peer: Node, box: Node) -> None:
    out = sh(peer.name, f"tailscale ping {box.ipv4}", timeout=120)
    assert re.search(rf"pong from \S+ \({re.escape(box.ipv4)}\) via 198\.18\.\d+\.\d+:\d+ in ", out), out


# ------------------------------------------------------------------------------------- subnet router (userspace)


def test_quecopen_route_is_auto_approved_and_served(quec: Node) -> None:
    node = wait_for(lambda: hs_node(quec.node_id), lambda n: QUEC_LAN in (n.get("subnet_routes") or []))
    assert QUEC_LAN in (node.get("available_routes") or []), node  # announced by the routing role
    assert QUEC_LAN in (node.get("approved_routes") or []), node  # by the policy's autoApprovers, nobody else
    assert QUEC_LAN in (node.get("subnet_routes") or []), node  # served from this node (its primary)
    assert json.loads(lab.exec_(QUEC, ["tailscale", "debug", "prefs"]).stdout)["AdvertiseRoutes"] == [QUEC_LAN]
    # Userspace networking forwards inside tailscaled: the routing role leaves the sysctls alone.
    assert forwarding(QUEC) == ("0", "0")


def test_peer_reaches_the_lan_host_behind_the_quecopen_module(peer: Node, quec: Node) -> None:
    assert json.loads(lab.exec_(PEER, ["tailscale", "debug", "prefs"]).stdout)["RouteAll"] is True
    host = lan.plan(QUEC, QUEC_LAN)["host_address"]
    route = wait_for(lambda: route_dev(PEER, host), lambda out: "dev tailscale0" in out)
    assert "dev tailscale0" in route, route
    answer = wait_for(lambda: talk(PEER, host, lan.ECHO_PORT, "tn-via-quec"), lambda out: "echo: tn-via-quec" in out)
    # tailscaled's netstack dials the LAN host from the module itself: the host sees the module's bridge0 address.
    assert f"hello from {lan.netns_name(QUEC)} to {lan.plan(QUEC, QUEC_LAN)['device_address']}\n" in answer, answer
    assert "echo: tn-via-quec" in answer, answer


# ----------------------------------------------------------------------------------------- subnet router (kernel)


def test_kernel_router_forwards_ipv4_only_for_an_ipv4_route(peer: Node, box: Node) -> None:
    assert forwarding(BOX) == ("1", "0")
    assert forwarding(PEER) == ("0", "0")  # no route advertised: nothing to forward
    script = sh(BOX, "cat /etc/init.d/fleetmesh-ipforward")
    assert "/proc/sys/net/ipv4/ip_forward" in script and "ipv6" not in script, script


def test_peer_reaches_the_lan_host_behind_the_kernel_router(peer: Node, box: Node) -> None:
    info = lan.plan(BOX, BOX_LAN, BOX_LAN6)
    control.approve_routes(box.node_id, [BOX_LAN])
    node = wait_for(lambda: hs_node(box.node_id), lambda n: BOX_LAN in (n.get("subnet_routes") or []))
    assert BOX_LAN in (node.get("subnet_routes") or []), node
    route = wait_for(lambda: route_dev(PEER, info["host_address"]), lambda out: "dev tailscale0" in out)
    assert "dev tailscale0" in route, route
    answer = wait_for(
        lambda: talk(PEER, info["host_address"], lan.ECHO_PORT, "tn-via-box"), lambda out: "echo: tn-via-box" in out
    )
    # Forwarded by the box's kernel and source-NATed (tailscaled's default) to its bridge0 address.
    assert f"hello from {lan.netns_name(BOX)} to {info['device_address']}\n" in answer, answer
    assert "echo: tn-via-box" in answer, answer


@pytest.mark.xfail(
    reason="open: run after other modules (a Molecule QuecOpen scenario first, or the whole suite), headscale 0.29.2 "
    "did not list the IPv6 route a second site.yml added with `tailscale set` among the node's available_routes "
    "within the wait, although the run passed and the node's prefs advertise it; alone the test passes. Not yet "
    "understood: kept visible as xfail, not skipped",
    strict=False,
)
def test_an_ipv6_route_turns_on_ipv6_forwarding_and_carries_ipv6(peer: Node, box: Node) -> None:
    info = lan.plan(BOX, BOX_LAN, BOX_LAN6)
    start = time.monotonic()
    run = run_site(box.device, box.work, box.mirror, {**KERNEL, "routing_routes": [BOX_LAN, BOX_LAN6]})
    print(f"timing: site.yml on {BOX} adding {BOX_LAN6}: {time.monotonic() - start:.0f} s")
    assert run.rc == 0 and run.failed == 0, run.output[-4000:]
    assert forwarding(BOX) == ("1", "1")
    script = sh(BOX, "cat /etc/init.d/fleetmesh-ipforward")
    assert "/proc/sys/net/ipv6/conf/all/forwarding" in script, script
    # The node announces the new route (the collection's part); approving it is the control server's, here by hand
    # as an admin would (the lab policy auto-approves only the QuecOpen's LAN).
    node = wait_for(lambda: hs_node(box.node_id), lambda n: BOX_LAN6 in (n.get("available_routes") or []))
    assert BOX_LAN6 in (node.get("available_routes") or []), node
    if BOX_LAN6 not in (node.get("approved_routes") or []):
        control.approve_routes(box.node_id, [BOX_LAN, BOX_LAN6])
    node = wait_for(lambda: hs_node(box.node_id), lambda n: BOX_LAN6 in (n.get("subnet_routes") or []))
    assert BOX_LAN in (node.get("subnet_routes") or []) and BOX_LAN6 in (node.get("subnet_routes") or []), node
    host6 = info["host_address6"]
    route = wait_for(lambda: route_dev(PEER, host6), lambda out: "dev tailscale0" in out)
    assert "dev tailscale0" in route, route
    answer = wait_for(lambda: talk(PEER, host6, lan.ECHO_PORT, "tn-v6"), lambda out: "echo: tn-v6" in out)
    # Source-NATed for IPv6 as well (the shim's ip6tables has the nat table): the host sees the router's ::1.
    assert f"hello from {lan.netns_name(BOX)} to {info['device_address6']}\n" in answer, answer
    assert "echo: tn-v6" in answer, answer


# ---------------------------------------------------------------------------------------------- the lab's LAN


def test_lan_survives_reboot_and_goes_with_down() -> None:
    """fleetlab.lan itself: the device reaches its LAN host; reboot keeps the LAN and restarts the host's server
    (reboot kills every recorded process); down removes the LAN netns and kills the server."""
    name = "tn-l"
    lab.down(name)
    try:
        lab.up(name, "sysvinit")
        info = lan.attach(name, ipv6=lan.DEFAULT_IPV6)
        pairs = ((info["host_address"], info["device_address"]), (info["host_address6"], info["device_address6"]))
        for host, seen_as in pairs:
            answer = talk(name, host, lan.ECHO_PORT, "tn-lan")
            assert answer == f"hello from {info['netns']} to {seen_as}\necho: tn-lan\n", answer
        assert "dev bridge0" in route_dev(name, info["host_address"])
        record = lab.get(name).dir / "procs" / "lan-echo.json"
        before = json.loads(record.read_text())
        lab.reboot(name)
        after = json.loads(record.read_text())
        assert after != before and not ProcRef(**before).alive() and ProcRef(**after).alive()
        assert "echo: tn-again" in talk(name, info["host_address"], lan.ECHO_PORT, "tn-again")
        lab.down(name)
        assert not Path(f"/run/netns/{info['netns']}").exists()
        assert wait_for(lambda: ProcRef(**after).alive(), lambda alive: not alive, 5, 0.1) is False
    finally:
        lab.down(name)
