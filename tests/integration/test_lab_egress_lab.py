"""Nothing leaves the lab: every frame on the lab's host-side interfaces during full site.yml runs stays in the lab.

One fresh device of each profile (kobo, quecopen, sysvinit, systemd) is provisioned by site.yml (real tailscaled
1.98.10, logging in to the lab's headscale) while an AF_PACKET socket per interface captures every frame on the
bridge fleetlab0, on each of these devices' veths (flv-eg-*) and on the control plane's flv-ctl. The frames are
parsed here (Ethernet, 802.1Q, IPv4, IPv6 with its extension headers, ARP; TCP/UDP ports) and kept as flows:

- every IPv4 source and destination is in the lab subnet 198.18.0.0/15; every IPv6 one is link-local, link-local
  multicast (ff02::/16) or the unspecified source of DAD/MLD; tailnet addresses (100.64.0.0/10,
  fd7a:115c:a1e0::/48) never appear on the underlay; no other EtherType; ARP only about lab addresses;
- no DNS (UDP or TCP port 53) to or from any address;
- positive control: each device's veth carried its connections to headscale (198.18.0.2:8080), the DERP relay
  (198.18.0.2:8443) and STUN (udp 198.18.0.2:3478), and its door traffic from the controller; the sockets dropped
  no frame (PACKET_STATISTICS), so the capture is complete.

And no route out: the devices' and the control plane's netns have no default route (fleetlab/netns.py), so
`ip route get 192.0.2.1` fails inside, a connection attempt to an outside address fails at once with "Network is
unreachable" (and no frame for it appears), and tailscaled, which logs `defaultRoute=` (none), still reaches
Running; its log has no unreachable dial, so nothing it does tries to leave either. See docs/lab.md, "Nothing
leaves the lab".

The bridge also carries other lab users' broadcast and host traffic: the address checks hold for the whole lab,
and a failure names the interface and flow, so it can be told apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths, AF_PACKET)"),
]

lab = pytest.importorskip("fleetlab.lab", reason="the fleetlab package (tests/lab) is not installed")

from provision_lab import release_mirror, run_site, stop_sessions  # noqa: E402

from fleetlab import control  # noqa: E402
from fleetlab.inventory import host_vars  # noqa: E402
from fleetlab.state import BRIDGE, GATEWAY, SUBNET, LabError  # noqa: E402

DEVICES = {"eg-kobo": "kobo", "eg-quec": "quecopen", "eg-sysv": "sysvinit", "eg-sysd": "systemd"}
# quecopen's fixed hostname (mdm9607-perf) would name its node; the others are named after the device.
EXTRA = {"eg-quec": {"login_hostname": "eg-quec"}}
OUTSIDE4 = "192.0.2.1"  # TEST-NET-1: nobody's address
OUTSIDE6 = "2001:db8::1"
CONTROL = (control.ADDRESS, control.HTTP_PORT)
DERP = (control.ADDRESS, control.DERP_PORT)
STUN = (control.ADDRESS, control.STUN_PORT)
DOORS = {"kobo": 23, "sysvinit": 23, "quecopen": 5555, "systemd": 22}
DWELL = 30.0  # steady state after the runs: map polls, DERP keepalives, a netcheck (STUN) round
LOGS = {
    "kobo": "/usr/local/fleetmesh-tailscale/state/logs/boot.log",
    "quecopen": "/usrdata/tailscale/state/logs/boot.log",
    "sysvinit": "/var/lib/tailscale/logs/boot.log",
}

TAILNET4 = ipaddress.ip_network(control.PREFIX_V4)
TAILNET6 = ipaddress.ip_network(control.PREFIX_V6)
LINK_LOCAL6 = ipaddress.ip_network("fe80::/10")
LINK_MCAST6 = ipaddress.ip_network("ff02::/16")
UNSPECIFIED6 = ipaddress.ip_address("::")

# Linux AF_PACKET constants (linux/if_ether.h, linux/if_packet.h, asm-generic/socket.h).
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
RCVBUF = 32 * 1024 * 1024
SNAPLEN = 256  # headers only: the rest of a frame is cut by the kernel
ETHERTYPES = {0x0800: "ipv4", 0x86DD: "ipv6", 0x0806: "arp"}
IPV6_EXT = (0, 43, 60)  # hop-by-hop, routing, destination options: (len + 1) * 8 bytes; 44 (fragment) is 8


@dataclasses.dataclass(frozen=True)
class Flow:
    """What one frame said, without its payload: the unit the capture counts."""

    ifname: str
    kind: str  # ipv4, ipv6, arp, or "ether 0x...." for an EtherType the parser does not know
    src: str = ""
    dst: str = ""
    proto: int = -1  # IP protocol (6 TCP, 17 UDP, 58 ICMPv6, ...); ARP: the operation
    sport: int = -1
    dport: int = -1

    def __str__(self) -> str:
        ports = f" {self.sport}->{self.dport}" if self.sport >= 0 else ""
        return f"{self.ifname}: {self.kind} proto {self.proto} {self.src} -> {self.dst}{ports}"


def _ports(proto: int, l4: bytes) -> tuple[int, int]:
    if proto in (6, 17) and len(l4) >= 4:
        return struct.unpack("!HH", l4[:4])
    return -1, -1


def parse(ifname: str, frame: bytes) -> Flow:
    """One Ethernet frame (possibly cut at SNAPLEN) as a Flow."""
    ethertype = struct.unpack("!H", frame[12:14])[0] if len(frame) >= 14 else 0
    offset = 14
    while ethertype in (0x8100, 0x88A8) and len(frame) >= offset + 4:  # 802.1Q / 802.1ad tags
        ethertype = struct.unpack("!H", frame[offset + 2 : offset + 4])[0]
        offset += 4
    body = frame[offset:]
    kind = ETHERTYPES.get(ethertype, f"ether 0x{ethertype:04x}")
    if kind == "ipv4" and len(body) >= 20:
        ihl = (body[0] & 0x0F) * 4
        proto = body[9]
        src, dst = str(ipaddress.IPv4Address(body[12:16])), str(ipaddress.IPv4Address(body[16:20]))
        fragment_offset = struct.unpack("!H", body[6:8])[0] & 0x1FFF
        sport, dport = _ports(proto, body[ihl:]) if fragment_offset == 0 else (-1, -1)
        return Flow(ifname, kind, src, dst, proto, sport, dport)
    if kind == "ipv6" and len(body) >= 40:
        src, dst = str(ipaddress.IPv6Address(body[8:24])), str(ipaddress.IPv6Address(body[24:40]))
        proto, at = body[6], 40
        while proto in (*IPV6_EXT, 44) and len(body) >= at + 8:
            if proto == 44:
                if struct.unpack("!H", body[at + 2 : at + 4])[0] >> 3:  # not the first fragment: no L4 header
                    return Flow(ifname, kind, src, dst, 44)
                proto, at = body[at], at + 8
            else:
                proto, at = body[at], at + (body[at + 1] + 1) * 8
        sport, dport = _ports(proto, body[at:])
        if proto == 58 and len(body) > at:
            sport = body[at]  # ICMPv6 type in place of a port (133-137: ND, 143: MLDv2 report)
        return Flow(ifname, kind, src, dst, proto, sport, dport)
    if kind == "arp" and len(body) >= 8:
        hlen, plen, oper = body[4], body[5], struct.unpack("!H", body[6:8])[0]
        if plen == 4 and len(body) >= 8 + 2 * hlen + 8:
            spa = body[8 + hlen : 12 + hlen]
            tpa = body[12 + 2 * hlen : 16 + 2 * hlen]
            return Flow(ifname, kind, str(ipaddress.IPv4Address(spa)), str(ipaddress.IPv4Address(tpa)), oper)
        return Flow(ifname, kind, proto=oper)
    return Flow(ifname, kind)


class Capture:
    """Every frame on some host interfaces, one AF_PACKET socket each, read by one thread; counted as Flows."""

    def __init__(self) -> None:
        self.flows: Counter[Flow] = Counter()
        self.frames: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self._socks: dict[str, socket.socket] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="egress-capture", daemon=True)

    def add(self, ifname: str) -> None:
        # Protocol 0 at creation: the socket sees nothing until bound to its interface with ETH_P_ALL.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        sock.bind((ifname, ETH_P_ALL))
        sock.setblocking(False)
        with self._lock:
            self._socks[ifname] = sock

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                socks = dict(self._socks)
            if not socks:
                time.sleep(0.05)
                continue
            ready, _w, _x = select.select(list(socks.values()), [], [], 0.2)
            for sock in ready:
                ifname = next(name for name, s in socks.items() if s is sock)
                self._drain(ifname, sock)
        with self._lock:
            socks = dict(self._socks)
        for ifname, sock in socks.items():
            with contextlib.suppress(OSError):  # the device's veth may be gone already
                self._drain(ifname, sock)

    def _drain(self, ifname: str, sock: socket.socket) -> None:
        while True:
            try:
                frame = sock.recv(SNAPLEN)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ENETDOWN: the interface went away under the socket
                return
            self.frames[ifname] += 1
            self.flows[parse(ifname, frame)] += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        with self._lock:
            socks, self._socks = self._socks, {}
        for ifname, sock in socks.items():
            with contextlib.suppress(OSError):
                _packets, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
                self.drops[ifname] += drops
            sock.close()


@dataclasses.dataclass
class Egress:
    capture: Capture
    devices: dict[str, Any]
    runs: dict[str, Any]
    states: dict[str, dict[str, Any]]
    routes: dict[str, dict[str, str]]
    logs: dict[str, str]
    ifnames: list[str]


def sh(name: str, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return lab.exec_(name, ["sh", "-c", script], timeout=timeout)


def out(proc: subprocess.CompletedProcess[str]) -> str:
    return f"rc={proc.returncode} {proc.stdout}{proc.stderr}".strip()


def route_checks(name: str, profile: str) -> dict[str, str]:
    """Routing inside the device, and one real connection attempt to an outside address (while capturing)."""
    if profile == "systemd":
        connect = f"timeout 10 bash -c 'exec 3<>/dev/tcp/{OUTSIDE4}/80'"
    else:
        connect = f"nc -w 5 {OUTSIDE4} 80 </dev/null"
    return {
        "table4": out(sh(name, "ip route show")),  # busybox ip ignores a `default` selector: the whole table
        "table6": out(sh(name, "ip -6 route show")),
        "get4": out(sh(name, f"ip route get {OUTSIDE4}")),
        "get6": out(sh(name, f"ip -6 route get {OUTSIDE6}")),
        "lab": out(sh(name, f"ip route get {control.ADDRESS}")),
        "connect": out(sh(name, connect)),
    }


def host_ip(*args: str) -> str:
    """`ip` on the host, in the control plane's netns (read only)."""
    proc = subprocess.run(["ip", "-n", control.NETNS, *args], capture_output=True, text=True, check=False, timeout=30)
    return out(proc)


def daemon_log(name: str, profile: str) -> str:
    if profile == "systemd":
        return sh(name, "journalctl -u tailscaled --no-pager -o cat").stdout
    return sh(name, f"cat {LOGS[profile]}").stdout


def forget_nodes() -> None:
    """This module's nodes in the shared headscale: given names carry the eg- prefix."""
    if control.status() is None:
        return
    for node in control.nodes():
        if str(node.get("given_name", "")).startswith("eg-"):
            with contextlib.suppress(LabError):
                control.delete_node(int(node["id"]))


@pytest.fixture(scope="module")
def egress(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Egress]:
    tmp = tmp_path_factory.mktemp("egress")
    control.up()  # idempotent; shared with other tests, never stopped here
    forget_nodes()
    for name in DEVICES:
        lab.down(name)
    capture = Capture()
    ifnames = [BRIDGE, control.VETH_HOST]
    devices: dict[str, Any] = {}
    runs: dict[str, Any] = {}
    try:
        with release_mirror(tmp / "mirror") as mirror:
            for ifname in ifnames:
                capture.add(ifname)
            capture.start()
            for name, profile in DEVICES.items():
                devices[name] = lab.up(name, profile)
                capture.add(devices[name].veth_host)
                ifnames.append(devices[name].veth_host)
            for name, device in devices.items():
                work = tmp / name
                work.mkdir()
                start = time.monotonic()
                runs[name] = run_site(device, work, mirror, EXTRA.get(name))
                print(f"timing: site.yml on {name} ({device.profile}): {time.monotonic() - start:.0f} s")
                (work / "inventory.yml").unlink(missing_ok=True)  # it holds the lab's pre-auth key
            states = {
                name: json.loads(lab.exec_(name, ["tailscale", "status", "--json"], timeout=120).stdout or "{}")
                for name in devices
            }
            # Peer traffic over the underlay (disco, WireGuard), then the steady state of idle nodes.
            ips = {n: (s.get("Self") or {}).get("TailscaleIPs", [""])[0] for n, s in states.items()}
            for src, dst in (("eg-sysv", "eg-kobo"), ("eg-sysd", "eg-quec"), ("eg-kobo", "eg-sysd")):
                if ips.get(dst):
                    sh(src, f"tailscale ping -c 3 {ips[dst]}")
            time.sleep(DWELL)
            routes = {name: route_checks(name, device.profile) for name, device in devices.items()}
            routes["ctl"] = {"default4": host_ip("route", "show", "default"), "get4": host_ip("route", "get", OUTSIDE4)}
            logs = {name: daemon_log(name, device.profile) for name, device in devices.items()}
            time.sleep(1)
            capture.stop()
            yield Egress(capture, devices, runs, states, routes, logs, ifnames)
    finally:
        capture.stop()
        for name, device in devices.items():
            stop_sessions(tmp / name / "cp")
            if device.profile == "quecopen" and shutil.which("adb"):
                # Drop the plugin's adb transport while the device still answers (see test_tailnet_lab.py).
                serial = host_vars(device)["fleetmesh_adb_serial"]
                subprocess.run(["adb", "disconnect", serial], capture_output=True, timeout=30, check=False)
        for name in DEVICES:
            lab.down(name)
        forget_nodes()


def _flows(egress: Egress) -> list[tuple[Flow, int]]:
    return sorted(egress.capture.flows.items(), key=lambda item: str(item[0]))


def _in_lab4(address: str) -> bool:
    return ipaddress.IPv4Address(address) in SUBNET


def _ok6(address: str) -> bool:
    ip = ipaddress.IPv6Address(address)
    return ip in LINK_LOCAL6 or ip in LINK_MCAST6 or ip == UNSPECIFIED6


# ------------------------------------------------------------------------------------------------- no route out


def test_devices_have_no_route_out(egress: Egress) -> None:
    for name in DEVICES:
        routes = egress.routes[name]
        for table in ("table4", "table6"):
            assert routes[table].startswith("rc=0"), (name, routes)
            assert not any(line.startswith("default") for line in routes[table][5:].splitlines()), (name, routes)
        assert "Network is unreachable" in routes["get4"] and not routes["get4"].startswith("rc=0"), (name, routes)
        assert "unreachable" in routes["get6"].lower() and not routes["get6"].startswith("rc=0"), (name, routes)
        assert routes["lab"].startswith("rc=0") and "dev eth0" in routes["lab"], (name, routes)
        # A real attempt fails in the device itself, at once: nothing is sent (see the address checks below).
        assert "Network is unreachable" in routes["connect"] and not routes["connect"].startswith("rc=0"), routes


def test_control_plane_has_no_route_out(egress: Egress) -> None:
    routes = egress.routes["ctl"]
    assert routes["default4"] == "rc=0", f"{control.NETNS} has a default route (made by an older lab?): {routes}"
    assert "Network is unreachable" in routes["get4"], routes


def test_tailscaled_runs_without_a_default_route(egress: Egress) -> None:
    for name, device in egress.devices.items():
        run = egress.runs[name]
        assert run.rc == 0 and run.failed == 0, (name, run.output[-4000:])
        state = egress.states[name]
        assert state.get("BackendState") == "Running", (name, state.get("Health"))
        log = egress.logs[name]
        # netmon's view at start: no default route, eth0 with its lab address.
        assert f"link state: interfaces.State{{defaultRoute= ifs={{eth0:[{device.address}/15" in log, (name, log[:3000])
        # Nothing in the daemon tried to leave: no dial failed for want of a route.
        unreachable = [line for line in log.splitlines() if "unreachable" in line.lower()]
        assert unreachable == [], (name, unreachable[:10])


# ------------------------------------------------------------------------------------------------- the capture


def test_capture_is_complete(egress: Egress) -> None:
    assert sorted(egress.capture.frames) == sorted(egress.ifnames), egress.capture.frames
    assert sum(egress.capture.drops.values()) == 0, f"frames dropped by the sockets: {egress.capture.drops}"
    print(f"frames per interface: {dict(egress.capture.frames)}; flows: {len(egress.capture.flows)}")
    other: Counter[tuple[str, int, str, int]] = Counter()
    for flow, count in egress.capture.flows.items():
        if flow.proto != 6:
            port = flow.sport if flow.proto == 58 else flow.dport
            other[(flow.kind, flow.proto, flow.dst if flow.kind != "ipv4" else "lab", port)] += count
    print("frames other than TCP (kind, proto or ARP op, destination, port or ICMPv6 type):")
    for key, count in sorted(other.items(), key=str):
        print(f"  {key} x{count}")


def test_every_underlay_address_is_in_the_lab(egress: Egress) -> None:
    bad = []
    for flow, count in _flows(egress):
        if flow.kind in ("ipv4", "arp"):
            ok = bool(flow.src) and _in_lab4(flow.src) and _in_lab4(flow.dst)
        elif flow.kind == "ipv6":
            ok = _ok6(flow.src) and _ok6(flow.dst)
        else:
            ok = False  # an EtherType the parser does not know could carry anything
        if not ok:
            bad.append(f"{flow} x{count}")
    assert bad == [], "\n".join(bad[:40])
    kinds: Counter[str] = Counter()
    for flow, count in egress.capture.flows.items():
        kinds[flow.kind] += count
    print(f"frames by kind: {dict(kinds)}")


def test_tailnet_addresses_never_on_the_underlay(egress: Egress) -> None:
    seen = []
    for flow, count in _flows(egress):
        for address in (flow.src, flow.dst):
            if address and ipaddress.ip_address(address) in (TAILNET4 if flow.kind != "ipv6" else TAILNET6):
                seen.append(f"{flow} x{count}")
    assert seen == [], "\n".join(seen[:40])


def test_no_dns_at_all(egress: Egress) -> None:
    dns = [f"{f} x{n}" for f, n in _flows(egress) if f.proto in (6, 17) and 53 in (f.sport, f.dport)]
    assert dns == [], "\n".join(dns[:40])


def test_capture_saw_the_lab_traffic(egress: Egress) -> None:
    """Positive control: each device's veth carried its control, DERP, STUN and door traffic."""
    flows = egress.capture.flows
    for name, device in egress.devices.items():
        mine = {f: n for f, n in flows.items() if f.ifname == device.veth_host}

        def frames(src: str, dst: str, port: int, proto: int, mine: dict[Flow, int] = mine) -> int:
            return sum(n for f, n in mine.items() if (f.src, f.dst, f.dport, f.proto) == (src, dst, port, proto))

        seen = {
            "control": frames(device.address, *CONTROL, 6),
            "derp": frames(device.address, *DERP, 6),
            "stun": frames(device.address, *STUN, 17),
            "door": frames(str(GATEWAY), device.address, DOORS[device.profile], 6),
        }
        print(f"{name}: frames to headscale/DERP/STUN and from the controller to the door: {seen}")
        assert all(seen.values()), (name, seen, [str(f) for f in mine][:40])
    on_ctl = {f.dport for f in flows if f.ifname == control.VETH_HOST and f.dst == control.ADDRESS}
    assert {control.HTTP_PORT, control.DERP_PORT, control.STUN_PORT} <= on_ctl, sorted(on_ctl)


def test_no_outside_address_even_attempted(egress: Egress) -> None:
    """The connection attempts to 192.0.2.1 made while capturing left no frame (no ARP, no SYN) anywhere."""
    hits = [str(f) for f in egress.capture.flows if OUTSIDE4 in (f.src, f.dst) or OUTSIDE6 in (f.src, f.dst)]
    assert hits == []
