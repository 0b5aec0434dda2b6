"""The lab control plane end to end: real headscale v0.29.2 + derper, real tailscaled/tailscale v1.98.10 built from
the released source, on two sysvinit lab devices. Everything stays in the lab: a packet watcher on the veths of
the devices and of the control namespace fails the module if any frame goes to an address outside it."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetlab import control, lab, netns, tailscale_release
from fleetlab.state import RUN_DIR, Device, ProcRef

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
]

VERSION = "1.98.10"
DEV1, DEV2 = "lt-ctl1", "lt-ctl2"
SOCK = "/tmp/tailscaled.sock"
TS = f"tailscale --socket={SOCK}"
DEVICE_TAGS = ("tag:lab", "tag:fleetmesh-sysvinit")
# Where lab traffic may go: the lab subnet, link-local/multicast/broadcast on the bridge. Anything else is a leak.
ALLOWED_NETS = [
    ipaddress.ip_network(n)
    for n in ("198.18.0.0/15", "224.0.0.0/4", "255.255.255.255/32", "0.0.0.0/32", "fe80::/10", "ff00::/8", "::/128")
]


def _note(label: str, seconds: float) -> None:
    print(f"timing: {label}: {seconds:.1f} s", file=sys.stderr)


# ------------------------------------------------------------------------------------------------ packet watcher


class Watcher:
    """AF_PACKET sniffers on host-side veths: every IPv4/IPv6 destination address seen leaving the namespaces."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def watch(self, ifname: str) -> None:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        sock.bind((ifname, 0))
        sock.settimeout(0.2)
        thread = threading.Thread(target=self._run, args=(ifname, sock), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _run(self, ifname: str, sock: socket.socket) -> None:
        with sock:
            while not self._stop.is_set():
                try:
                    frame, addr = sock.recvfrom(65535)
                except TimeoutError:
                    continue
                except OSError:
                    return  # the interface went away
                if addr[2] == socket.PACKET_OUTGOING:
                    continue  # host -> namespace (the host's own traffic towards a lab address)
                dst = _dst_address(frame)
                if dst is not None:
                    with self._lock:
                        self.seen.setdefault(ifname, set()).add(dst)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)

    def leaks(self) -> dict[str, list[str]]:
        with self._lock:
            out = {}
            for ifname, addrs in self.seen.items():
                bad = sorted(a for a in addrs if not any(ipaddress.ip_address(a) in n for n in ALLOWED_NETS))
                if bad:
                    out[ifname] = bad
            return out


def _dst_address(frame: bytes) -> str | None:
    if len(frame) < 14:
        return None
    (ethertype,) = struct.unpack("!H", frame[12:14])
    if ethertype == 0x0800 and len(frame) >= 34:
        return str(ipaddress.IPv4Address(frame[30:34]))
    if ethertype == 0x86DD and len(frame) >= 54:
        return str(ipaddress.IPv6Address(frame[38:54]))
    return None


# ------------------------------------------------------------------------------------------------ device helpers


def sh(name: str, script: str, *, input: str | None = None, timeout: float = 90) -> Any:
    return lab.exec_(name, ["sh", "-c", script], input=input, timeout=timeout)


def install_tailscale(device: Device, bins: dict[str, Path]) -> None:
    """Copy the built binaries into the device's / (its overlay, seen from the host under the device dir)."""
    target = device.root / "usr/local/bin"
    target.mkdir(parents=True, exist_ok=True)
    for name, path in bins.items():
        shutil.copy2(path, target / name)
        (target / name).chmod(0o755)


def start_tailscaled(
    name: str, *, tun: str = "userspace-networking", statedir: str = "/data/tailscale", sock: str = SOCK
) -> int:
    """tailscaled in the background inside the device; returns its pid in the device's pid namespace.

    No --port: on Linux tailscaled's default is 0 (a free port; 41641 comes from the packages' defaults file), so
    two daemons in one namespace do not collide.
    """
    script = (
        f"mkdir -p {statedir} && "
        f"TS_NO_LOGS_NO_SUPPORT=1 tailscaled --tun={tun} --statedir={statedir} --socket={sock} "
        f"--no-logs-no-support </dev/null >{statedir}/tailscaled.log 2>&1 & echo $!"
    )
    proc = sh(name, script)
    assert proc.returncode == 0, proc.stderr
    pid = int(proc.stdout.strip())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = sh(name, f"tailscale --socket={sock} status --json")
        if status.returncode in (0, 1) and status.stdout.lstrip().startswith("{"):
            return pid
        if sh(name, f"kill -0 {pid}").returncode != 0:
            break
        time.sleep(0.3)
    log = sh(name, f"cat {statedir}/tailscaled.log").stdout
    raise AssertionError(f"tailscaled on {name} did not answer on {sock}:\n{log[-3000:]}")


def stop_tailscaled(name: str, pid: int) -> None:
    """Kill the tailscaled this test started, by its recorded pid inside the device."""
    sh(name, f"kill {pid}; i=0; while kill -0 {pid} 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done")


def ts_up(
    name: str, key: str, *, sock: str = SOCK, hostname: str | None = None, extra: str = "", timeout: int = 90
) -> Any:
    """`tailscale up` with the key read from a file: the key reaches the device on stdin, never on a command line."""
    keyfile = f"/tmp/authkey.{os.getpid()}"
    write = sh(name, f"umask 077; cat > {keyfile}", input=key)
    assert write.returncode == 0, write.stderr
    try:
        return sh(
            name,
            f"tailscale --socket={sock} up --login-server={control.url()} --auth-key=file:{keyfile} "
            f"--hostname={hostname or name} --accept-dns=false --timeout={timeout}s {extra}",
            timeout=timeout + 30,
        )
    finally:
        sh(name, f"rm -f {keyfile}")


def ts_status(name: str, sock: str = SOCK) -> dict[str, Any]:
    proc = sh(name, f"tailscale --socket={sock} status --json")
    return json.loads(proc.stdout)


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def binaries() -> dict[str, Path]:
    start = time.monotonic()
    bins = tailscale_release.binaries(VERSION, "amd64")
    _note("tailscale+tailscaled binaries (cached after the first build)", time.monotonic() - start)
    return bins


@pytest.fixture(scope="module")
def watcher() -> Iterator[Watcher]:
    w = Watcher()
    yield w
    w.stop()


# Set when the control plane was running before this test session (other lab users share it): it is used, not
# stopped. One an earlier module of this session started is the session's own: this module stops it at its end (the
# next module that needs it starts it again), so `control down` is tested in the full suite as well as alone.
SHARED: list[bool] = []


@pytest.fixture(scope="module")
def control_plane(watcher: Watcher, lab_control_plane: bool) -> Iterator[str]:
    SHARED.append(control.status() is not None and not lab_control_plane)
    try:
        start = time.monotonic()
        control.binaries()
        _note("headscale+derper binaries (cached after the first build)", time.monotonic() - start)
        start = time.monotonic()
        url = control.up()
        _note("control up" + (" (already running, shared)" if SHARED[0] else ""), time.monotonic() - start)
        watcher.watch(control.VETH_HOST)
        yield url
    finally:
        if not SHARED[0]:
            control.down()


def delete_my_nodes() -> None:
    """Remove the nodes this module registers (names lt-ctl*, lt-once-*) from a possibly shared tailnet."""
    for node in control.nodes():
        if str(node.get("given_name", "")).startswith(("lt-ctl", "lt-once-")):
            control.delete_node(int(node["id"]))


@pytest.fixture(scope="module")
def devices(control_plane: str, binaries: dict[str, Path], watcher: Watcher) -> Iterator[dict[str, Device]]:
    try:
        for name in (DEV1, DEV2):
            lab.down(name)
        delete_my_nodes()  # left over from an interrupted run: headscale would rename the new ones (lt-ctl1-xyz)
        found = {name: lab.up(name, "sysvinit") for name in (DEV1, DEV2)}
        for device in found.values():
            watcher.watch(device.veth_host)
            install_tailscale(device, binaries)
        yield found
    finally:
        for name in (DEV1, DEV2):
            lab.down(name)
        if control.status() is not None:
            delete_my_nodes()


@pytest.fixture(scope="module")
def tailnet(devices: dict[str, Device]) -> dict[str, int]:
    """Both devices logged in with userspace-networking tailscaled; returns their tailscaled pids."""
    pids = {}
    for name in (DEV1, DEV2):
        pids[name] = start_tailscaled(name)
        key = control.mint_key(tags=DEVICE_TAGS)
        start = time.monotonic()
        proc = ts_up(name, key)
        _note(f"tailscale up ({name}, userspace)", time.monotonic() - start)
        assert proc.returncode == 0, f"{name}: {proc.stdout}\n{proc.stderr}"
    return pids


# --------------------------------------------------------------------------------------------------------- tests


def test_control_plane_is_recorded_and_idempotent(control_plane: str) -> None:
    assert control_plane == control.url() == "http://198.18.0.2:8080"
    assert control.status() == control_plane
    refs = {name: json.loads((RUN_DIR / f"{name}.json").read_text()) for name in control.RECORD_NAMES}
    assert set(refs) == {"control-headscale", "control-derper"}
    assert set(lab.SERVICE_RECORDS) >= set(refs)
    assert control.up() == control_plane  # idempotent: the same processes
    assert {name: json.loads((RUN_DIR / f"{name}.json").read_text()) for name in control.RECORD_NAMES} == refs
    assert Path(f"/proc/{refs['control-headscale']['pid']}/exe").resolve().name == "headscale"
    assert Path(f"/proc/{refs['control-derper']['pid']}/exe").resolve().name == "derper"
    assert netns.netns_exists(control.NETNS) and netns.link_exists(control.VETH_HOST)


def test_derper_serves_the_pinned_cert_and_stun(control_plane: str) -> None:
    derpmap = (control.CONTROL_DIR / "derpmap.yaml").read_text()
    pin = derpmap.split('certname: "', 1)[1].split('"', 1)[0]
    assert pin.startswith("sha256-raw:")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((control.ADDRESS, control.DERP_PORT), timeout=5) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None and f"sha256-raw:{hashlib.sha256(der).hexdigest()}" == pin
    # derper prints the same pin for an IP hostname in -certmode manual.
    assert pin in (control.CONTROL_DIR / "derper.log").read_text()
    # A STUN binding request as tailscale's net/stun writes it gets a binding success response. derper answers
    # only requests carrying SOFTWARE "tailnode" and a FINGERPRINT (a bare RFC 5389 request is silently dropped).
    txid = os.urandom(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(5)
        udp.sendto(stun_request(txid), (control.ADDRESS, control.STUN_PORT))
        reply = udp.recvfrom(2048)[0]
    assert reply[:2] == b"\x01\x01" and reply[8:20] == txid


def test_two_real_nodes_join_and_reach_each_other(tailnet: dict[str, int]) -> None:
    nodes = wait_for(
        lambda: (
            ns
            if len(ns := [n for n in control.nodes() if n.get("given_name") in (DEV1, DEV2) and n.get("online")]) == 2
            else None
        ),
        60,
        "both nodes online in headscale",
    )
    for node in nodes:
        assert sorted(node.get("tags") or []) == sorted(DEVICE_TAGS), node
        assert any(ip.startswith("100.") for ip in node["ip_addresses"])
    for me, peer in ((DEV1, DEV2), (DEV2, DEV1)):
        status = wait_for(
            lambda me=me, peer=peer: (
                s
                if (s := ts_status(me))["BackendState"] == "Running"
                and any(p["HostName"] == peer and p.get("Online") for p in (s.get("Peer") or {}).values())
                else None
            ),
            60,
            f"{me} Running with {peer} online",
        )
        assert status["Self"]["HostName"] == me
        peer_ip = next(p for p in status["Peer"].values() if p["HostName"] == peer)["TailscaleIPs"][0]
        ping = sh(me, f"{TS} ping --c 10 --timeout 5s {peer_ip}", timeout=90)
        print(f"{me} -> {peer}: {ping.stdout.strip()}", file=sys.stderr)
        assert ping.returncode == 0 and "pong from" in ping.stdout, ping.stdout + ping.stderr


def test_routes_are_auto_approved_by_the_policy(tailnet: dict[str, int]) -> None:
    """lt-ctl2 (tagged tag:fleetmesh-sysvinit) announces the lab's subnet routes and an exit node: the policy's
    autoApprovers approve them; approve_routes replaces the list."""
    wanted = {"192.168.225.0/24", "fd00:225::/64"}
    exit_routes = {"0.0.0.0/0", "::/0"}
    proc = sh(DEV2, f"{TS} set --advertise-routes={','.join(sorted(wanted))} --advertise-exit-node")
    assert proc.returncode == 0, proc.stderr
    try:

        def mine() -> dict[str, Any] | None:
            return next((n for n in control.routes() if n.get("given_name") == DEV2), None)

        node = wait_for(
            lambda: n if (n := mine()) and set(n.get("approved_routes") or []) >= wanted | exit_routes else None,
            30,
            "lt-ctl2's routes auto-approved",
        )
        assert set(node.get("available_routes") or []) >= wanted | exit_routes, node
        updated = control.approve_routes(int(node["id"]), ["192.168.225.0/24"])
        assert set(updated.get("approved_routes") or []) == {"192.168.225.0/24"}, updated
        wait_for(
            lambda: next(
                (
                    p
                    for p in (ts_status(DEV1).get("Peer") or {}).values()
                    if p["HostName"] == DEV2 and (p.get("PrimaryRoutes") or []) == ["192.168.225.0/24"]
                ),
                None,
            ),
            30,
            "lt-ctl1 to see only lt-ctl2's still approved subnet route",
        )
        assert set(mine()["approved_routes"]) == {"192.168.225.0/24"}  # not re-approved behind our back
    finally:
        sh(DEV2, f"{TS} set --advertise-routes= --advertise-exit-node=false")


def test_single_use_key_works_once(tailnet: dict[str, int]) -> None:
    key = control.mint_key()
    first = second = None
    pids: dict[str, int] = {}
    try:
        for name, label in ((DEV1, "a"), (DEV2, "b")):
            pids[name] = start_tailscaled(name, statedir=f"/tmp/ts-once-{label}", sock=f"/tmp/ts-once-{label}.sock")
        first = ts_up(DEV1, key, sock="/tmp/ts-once-a.sock", hostname="lt-once-a")
        assert first.returncode == 0, first.stdout + first.stderr
        second = ts_up(DEV2, key, sock="/tmp/ts-once-b.sock", hostname="lt-once-b", timeout=30)
        message = (second.stdout + second.stderr).strip()
        print(f"second use of a single-use key: rc={second.returncode}: {message}", file=sys.stderr)
        assert second.returncode != 0
        assert "authkey already used" in message or "already been used" in message, message
        names = [n.get("given_name") for n in control.nodes()]
        assert "lt-once-a" in names and "lt-once-b" not in names
    finally:
        for name, pid in pids.items():
            stop_tailscaled(name, pid)
        for node in control.nodes():
            if node.get("given_name") in ("lt-once-a", "lt-once-b"):
                control.delete_node(int(node["id"]))
    assert all(n.get("given_name") != "lt-once-a" for n in control.nodes())


def test_kernel_mode_tun(tailnet: dict[str, int]) -> None:
    """tailscaled with a real TUN (tailscale0) in the device's netns. The sysvinit box has no iptables binary:
    linuxfw falls back to nftables, which it drives over netlink (no `nft` binary needed), so the default
    --netfilter-mode=on works; `tailscale set --netfilter-mode=off` then removes its rules and traffic still flows."""
    stop_tailscaled(DEV1, tailnet[DEV1])
    pid = start_tailscaled(DEV1, tun="tailscale0", statedir="/data/ts-kernel")
    try:
        key = control.mint_key(tags=DEVICE_TAGS)
        start = time.monotonic()
        proc = ts_up(DEV1, key, hostname="lt-ctl1k")
        _note("tailscale up (kernel mode)", time.monotonic() - start)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        own = ts_status(DEV1)
        assert own["BackendState"] == "Running" and own["TUN"] is True
        my_ip = own["Self"]["TailscaleIPs"][0]
        addr = sh(DEV1, "ip -4 addr show dev tailscale0")
        assert addr.returncode == 0 and f"inet {my_ip}/32" in addr.stdout, addr.stdout + addr.stderr
        log = sh(DEV1, "cat /data/ts-kernel/tailscaled.log").stdout
        firewall = [line for line in log.splitlines() if "linuxfw" in line or "netfilter" in line or "nftables" in line]
        print("kernel-mode tailscaled firewall lines:\n" + "\n".join(firewall[:12]), file=sys.stderr)
        assert "netfilter running in nftables mode" in log
        peer_ip = wait_for(
            lambda: next(
                (
                    p["TailscaleIPs"][0]
                    for p in (ts_status(DEV1).get("Peer") or {}).values()
                    if p["HostName"] == DEV2 and p.get("Online")
                ),
                None,
            ),
            60,
            "lt-ctl2 online as seen from kernel-mode lt-ctl1",
        )
        for mode in ("on", "off"):
            if mode == "off":
                off = sh(DEV1, f"{TS} set --netfilter-mode=off")
                assert off.returncode == 0, off.stderr
            # The device's own busybox ping, through the kernel route (table 52) into tailscale0.
            icmp = sh(DEV1, f"ping -c 3 -W 5 {peer_ip}", timeout=60)
            print(f"netfilter {mode}: busybox ping {DEV1} -> {DEV2}: {icmp.stdout.strip()}", file=sys.stderr)
            assert icmp.returncode == 0, icmp.stdout + icmp.stderr
            # And the other way: ICMP from lt-ctl2 (userspace netstack) answered by lt-ctl1's kernel.
            back = sh(DEV2, f"{TS} ping --icmp --c 10 --timeout 5s {my_ip}", timeout=90)
            print(f"netfilter {mode}: icmp {DEV2} -> kernel {DEV1}: {back.stdout.strip()}", file=sys.stderr)
            assert back.returncode == 0, back.stdout + back.stderr
    finally:
        stop_tailscaled(DEV1, pid)
        for node in control.nodes():
            if node.get("given_name") == "lt-ctl1k":
                control.delete_node(int(node["id"]))


def test_cli_verbs(tailnet: dict[str, int]) -> None:
    def fleetlab(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["fleetlab", "control", *args], capture_output=True, text=True, check=False, timeout=60)

    status = fleetlab("status")
    assert status.returncode == 0 and status.stdout.strip() == f"running on {control.url()}"
    nodes = fleetlab("nodes")
    assert nodes.returncode == 0, nodes.stderr
    row = next(line.split("\t") for line in nodes.stdout.splitlines() if line.split("\t")[1] == DEV2)
    assert row[3] == "online" and set(row[4].split(",")) == set(DEVICE_TAGS), row
    key = fleetlab("key", "--tags", "tag:lab", "--expiration", "5m")
    assert key.returncode == 0 and key.stdout.startswith("hskey-auth-"), key.stderr  # never print the key itself
    routes = fleetlab("approve-routes", row[0])  # no CIDR: clear the approved routes
    assert routes.returncode == 0 and routes.stdout.strip() == f"{row[0]}\tapproved: -", routes.stdout + routes.stderr
    bad = fleetlab("key", "--tags", "nottag")
    assert bad.returncode == 1 and bad.stderr.startswith("fleetlab: headscale preauthkeys create failed"), bad.stderr


def test_nothing_left_the_lab(tailnet: dict[str, int], watcher: Watcher) -> None:
    time.sleep(1)
    seen = {k: sorted(v) for k, v in watcher.seen.items()}
    print(f"destinations seen: {seen}", file=sys.stderr)
    assert control.VETH_HOST in watcher.seen and any(d.veth_host in watcher.seen for d in lab.list_devices())
    assert watcher.leaks() == {}


def test_zz_down_leaves_nothing(control_plane: str, devices: dict[str, Device]) -> None:
    if SHARED[0]:
        pytest.skip("the control plane was running before this test session (shared with other lab users): not stopped")
    refs = [json.loads((RUN_DIR / f"{name}.json").read_text()) for name in control.RECORD_NAMES]
    for name in (DEV1, DEV2):
        lab.down(name)
    delete_my_nodes()
    control.down()
    control.down()  # idempotent
    for ref in refs:
        # Dead: gone, another process by now, or a zombie its parent has not reaped yet (one `fleetlab control up`
        # started from another process belongs to init, which reaps when it gets to it).
        assert not ProcRef(**ref).alive(), ref
    assert control.status() is None
    assert not netns.netns_exists(control.NETNS)
    assert not netns.link_exists(control.VETH_HOST)
    assert not any((RUN_DIR / f"{name}.json").exists() for name in control.RECORD_NAMES)
    assert not control.CONTROL_DIR.exists()
    with contextlib.suppress(FileNotFoundError):
        assert control.NETNS not in os.listdir("/run/netns")


def test_zzz_borrowed_stops_only_the_control_plane_it_started(lab_control_plane: bool) -> None:
    """Benchmarks borrow the control plane (control.borrowed): one they started goes at the end of the run, one that
    was already up stays up."""
    if control.status() is not None:
        if not lab_control_plane:
            pytest.skip("the control plane was running before this test session (shared with other lab users)")
        control.down()  # this session's own
    with control.borrowed() as url:
        assert control.status() == url
        with control.borrowed() as again:  # already up: used, and left up
            assert again == url
        assert control.status() == url
    assert control.status() is None
    assert not netns.netns_exists(control.NETNS)


def stun_request(txid: bytes) -> bytes:
    """tailscale.com/net/stun.Request: binding request, SOFTWARE "tailnode", FINGERPRINT (crc32 ^ 0x5354554e)."""
    software = b"tailnode"
    head = struct.pack("!HHI", 0x0001, 4 + len(software) + 8, 0x2112A442) + txid
    body = head + struct.pack("!HH", 0x8022, len(software)) + software
    return body + struct.pack("!HHI", 0x8028, 4, (zlib.crc32(body) ^ 0x5354554E) & 0xFFFFFFFF)
