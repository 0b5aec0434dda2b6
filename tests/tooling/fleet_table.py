"""The demo's fleet table: each lab device as its control server and the device itself see it.

    python tests/tooling/fleet_table.py NAME:PROFILE...

One row per device: its door and arch (the lab), the installed version and backend state (read on the device, one
round trip through `fleetlab exec`), and from the lab's headscale node list the node's name, online flag, tailnet
addresses, tags and approved routes. The node is matched by the tailnet addresses the device reports, so nodes of
earlier runs (offline, same hostname) never stand in for it. Exit status 1 if a device is not Running and online.
"""

from __future__ import annotations

import json
import sys

from fleetlab import control, lab

PROBE = r"""v=$(tailscale version 2>/dev/null | head -n1); a=$(uname -m)
if j=$(tailscale status --json 2>/dev/null); then echo "$a|$v|$j"; else echo "$a|$v|{}"; fi"""


def row(name: str, profile: str, nodes: list[dict]) -> tuple[list[str], bool]:
    device = lab.get(name)
    door = next((d for d in ("telnet", "adb", "ssh") if d in device.services), "-")
    proc = lab.exec_(name, ["sh", "-c", PROBE], timeout=60)
    arch, version, status_json = (proc.stdout.strip().split("|", 2) + ["-", "-", "{}"])[:3]
    try:
        status = json.loads(status_json)
    except json.JSONDecodeError:
        status = {}
    state = status.get("BackendState") or "not-running"
    ips = set((status.get("Self") or {}).get("TailscaleIPs") or [])
    node = next((n for n in nodes if ips and set(n.get("ip_addresses") or []) == ips), None)
    if node is None:
        cells = [name, profile, door, arch or "-", version or "-", state, "-", "-", "-", "-", "-"]
        return cells, False
    online = bool(node.get("online"))
    approved = ",".join(node.get("approved_routes") or []) or "-"
    cells = [
        name,
        profile,
        door,
        arch or "-",
        version or "-",
        state,
        node.get("given_name") or node.get("name") or "-",
        "online" if online else "offline",
        ",".join(sorted(ips, key=lambda ip: (":" in ip, ip))),
        ",".join(node.get("tags") or []) or "-",
        approved,
    ]
    return cells, state == "Running" and online


def main(argv: list[str]) -> int:
    nodes = control.nodes()
    header = ["HOST", "PROFILE", "DOOR", "ARCH", "VERSION", "STATE", "NODE", "CONTROL", "TAILNET IPS", "TAGS"]
    header.append("APPROVED ROUTES")
    rows, healthy = [header], True
    for entry in argv:
        name, _sep, profile = entry.partition(":")
        cells, ok = row(name, profile, nodes)
        rows.append(cells)
        healthy = healthy and ok
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip())
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
