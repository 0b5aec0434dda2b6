# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to the fleetmesh.tailscale collection: not a public API, may change without notice.

Subnet routes on the controller: the exit routes and Tailscale's own address ranges, and the validation (netaddr)
that the subnet route filters, tailscale_prefs' planner and the control actions share.
"""

from __future__ import annotations

import typing as t

try:
    import netaddr
except ImportError:  # a controller without netaddr fails with a clear message when routes are validated
    netaddr = None

# The two routes of an exit node (the advertise_exit_node setting, never subnet routes).
EXIT_ROUTES = ("0.0.0.0/0", "::/0")
# Tailscale's address ranges: a controller reaching a device at one of these rides on the tailnet itself.
TAILNET_RANGES = ("100.64.0.0/10", "fd7a:115c:a1e0::/48")


class RouteError(ValueError):
    """A route list that cannot be advertised (bad CIDR, overlap, exit route...), or no netaddr to check it."""


def require_netaddr() -> None:
    if netaddr is None:
        raise RouteError("validating routes needs the netaddr Python library on the controller (pip install netaddr)")


def normalize_routes(routes: t.Iterable[t.Any]) -> list[str]:
    """Validate subnet routes and return them canonical and sorted as Tailscale stores them.

    Fails on a bad CIDR, a bare address, host bits set, duplicates, overlapping routes and the exit routes (those
    are `advertise_exit_node`), so a bad list is refused before any change.
    """
    require_netaddr()
    nets: list[t.Any] = []
    for raw in routes:
        text = str(raw).strip()
        if "/" not in text:
            raise RouteError(f"route {text!r} is not a CIDR prefix (write e.g. {text}/32 for one host)")
        try:
            net = netaddr.IPNetwork(text)
        except (netaddr.AddrFormatError, ValueError, TypeError) as exc:
            raise RouteError(f"route {text!r} is not a valid CIDR prefix: {exc}") from None
        if net.ip != net.network:
            raise RouteError(f"route {text!r} has host bits set (did you mean {net.cidr}?)")
        if str(net.cidr) in EXIT_ROUTES:
            raise RouteError(f"route {text!r} is an exit-node route: use advertise_exit_node instead")
        nets.append(net.cidr)
    for i, a in enumerate(nets):
        for b in nets[i + 1 :]:
            if a.version == b.version and (a in b or b in a):
                what = "is listed twice" if a == b else f"overlaps {b}"
                raise RouteError(f"route {a} {what}: advertise each subnet once")
    # CalcAdvertiseRoutes order: IPv4 before IPv6, then by prefix length and address (as the node reports them).
    nets.sort(key=lambda n: (n.version, n.prefixlen, n.value))
    return [str(n) for n in nets]


def route_families(routes: t.Iterable[str]) -> list[int]:
    """IP versions present in a (validated) route list, e.g. [4] or [4, 6]."""
    require_netaddr()
    return sorted({netaddr.IPNetwork(r).version for r in routes})
