"""_routes: subnet routes are validated and canonical before anything touches a device; one source of exit routes."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.fleetmesh.tailscale.plugins.filter.subnet_route_families import subnet_route_families
from ansible_collections.fleetmesh.tailscale.plugins.filter.subnet_routes import subnet_routes
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _control_api, _prefs
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._routes import (
    EXIT_ROUTES,
    RouteError,
    normalize_routes,
    route_families,
)


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        (["10.0.0.1/24"], r"host bits set \(did you mean 10.0.0.0/24\?\)"),
        (["10.0.0.0/33"], "not a valid CIDR prefix"),
        (["banana/8"], "not a valid CIDR prefix"),
        (["10.0.0.1"], "is not a CIDR prefix"),
        (["10.0.0.0/8", "10.1.0.0/16"], "overlaps"),
        (["10.0.0.0/8", "10.0.0.0/8"], "listed twice"),
        (["0.0.0.0/0"], "advertise_exit_node"),
    ],
)
def test_bad_routes_are_refused(routes: list[str], message: str) -> None:
    with pytest.raises(RouteError, match=message):
        normalize_routes(routes)


def test_ipv4_and_ipv6_routes_of_the_same_numbers_do_not_overlap() -> None:
    assert normalize_routes(["::/96", "0.0.0.0/1"]) == ["0.0.0.0/1", "::/96"]
    assert route_families(["10.0.0.0/8"]) == [4]
    assert route_families(["10.0.0.0/8", "fd00::/64"]) == [4, 6]


def test_routes_come_back_canonical_in_tailscales_order() -> None:
    assert normalize_routes(["FD00:0::/64", "192.168.1.0/24", "10.0.0.0/8"]) == [
        "10.0.0.0/8",
        "192.168.1.0/24",
        "fd00::/64",
    ]


def test_the_filters_validate_with_it_and_fail_as_filters() -> None:
    assert subnet_routes(["10.0.0.0/8"]) == ["10.0.0.0/8"]
    assert subnet_route_families(["fd00::/64", "10.0.0.0/8"]) == [4, 6]
    with pytest.raises(AnsibleFilterError, match="exit-node route"):
        subnet_routes(["::/0"])
    with pytest.raises(AnsibleFilterError, match="must be a list"):
        subnet_route_families("10.0.0.0/8")


def test_exit_routes_have_one_source() -> None:
    assert EXIT_ROUTES == ("0.0.0.0/0", "::/0")
    assert _prefs.EXIT_ROUTES is EXIT_ROUTES
    assert getattr(_control_api, "EXIT_ROUTES", EXIT_ROUTES) is EXIT_ROUTES  # no copy of its own
