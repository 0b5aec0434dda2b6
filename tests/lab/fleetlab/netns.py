"""The lab network: bridge fleetlab0 (198.18.0.1/15) on the host, one netns + veth pair per device.

Only interfaces and namespaces whose names the lab chose are created or deleted here; no host sysctl, route or
foreign interface is touched. The host route to 198.18.0.0/15 is the kernel's own for the bridge address.

Nothing leaves the lab: a device's netns (and the control plane's) has no default route, only the connected
198.18.0.0/15 of eth0, so a packet for any other address fails in the device (`ip route get 192.0.2.1`: "Network
is unreachable") instead of reaching the host. Real tailscaled 1.98.10 needs none in the lab: its control server,
DERP relay and peers are all on that subnet (docs/lab.md, "Nothing leaves the lab").
"""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

from fleetlab.state import BRIDGE, GATEWAY, SUBNET, LabError


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], check=False, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def netns_exists(name: str) -> bool:
    return Path(f"/run/netns/{name}").exists()


def ensure_bridge() -> None:
    if link_exists(BRIDGE):
        return
    _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "add", f"{GATEWAY}/{SUBNET.prefixlen}", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")


def remove_bridge() -> None:
    if link_exists(BRIDGE):
        _ip("link", "del", BRIDGE)


def create_device_net(netns: str, veth_host: str, address: str) -> None:
    """Netns with eth0 (address/15, no default route: only the lab subnet is reachable) and lo up; host end on the
    bridge."""
    ensure_bridge()
    _ip("netns", "add", netns)
    try:
        # The device's MAC follows from its address: a name reused after `down` answers ARP with the same MAC, so
        # a neighbour entry the host (or another device) still holds for that address stays right.
        peer = ["peer", "name", "eth0", "address", device_mac(address), "netns", netns]
        _ip("link", "add", veth_host, "type", "veth", *peer)
        _ip("link", "set", veth_host, "master", BRIDGE, "up")
        _ip("-n", netns, "addr", "add", f"{address}/{SUBNET.prefixlen}", "dev", "eth0")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "link", "set", "eth0", "up")
    except LabError:
        remove_device_net(netns, veth_host)
        raise


def device_mac(address: str) -> str:
    """Locally administered unicast MAC 02:f1:ab:xx:yy:zz from the low 24 bits of the device's IPv4 address."""
    low = int(ipaddress.IPv4Address(address)) & 0xFFFFFF
    return "02:f1:ab:" + ":".join(f"{(low >> shift) & 0xFF:02x}" for shift in (16, 8, 0))


def remove_device_net(netns: str, veth_host: str) -> None:
    """Idempotent: deleting the netns also deletes the veth pair; the explicit delete covers a half-made pair."""
    if link_exists(veth_host):
        _ip("link", "del", veth_host, check=False)
    if netns_exists(netns):
        _ip("netns", "del", netns)


def lab_links() -> list[str]:
    return sorted(p.name for p in Path("/sys/class/net").iterdir() if p.name == BRIDGE or p.name.startswith("flv-"))


def lab_netns() -> list[str]:
    base = Path("/run/netns")
    return sorted(p.name for p in base.iterdir() if p.name.startswith("fleetlab-")) if base.is_dir() else []
