# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter: the IP versions present in a list of subnet routes (which forwarding sysctls they need)."""

from __future__ import annotations

import typing as t

from ansible.errors import AnsibleFilterError
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._routes import (
    RouteError,
    normalize_routes,
    route_families,
)

DOCUMENTATION = r"""
name: subnet_route_families
short_description: IP versions present in a list of subnet routes
version_added: 0.1.0
description:
  - Validates the routes like the C(fleetmesh.tailscale.subnet_routes) filter and returns the IP versions present,
    for example C([4]) or C([4, 6]).
options:
  _input:
    description: The routes.
    type: list
    elements: str
    required: true
author:
  - fleetmesh developers !UNKNOWN
"""

EXAMPLES = r"""
- name: Families that need forwarding
  ansible.builtin.debug:
    msg: "{{ ['10.0.0.0/8', 'fd00::/64'] | fleetmesh.tailscale.subnet_route_families }}"
"""

RETURN = r"""
_value:
  description: Sorted IP versions.
  type: list
  elements: int
"""


def subnet_route_families(routes: t.Any) -> list[int]:
    if isinstance(routes, str) or not isinstance(routes, (list, tuple)):
        raise AnsibleFilterError(f"subnet routes must be a list of CIDR prefixes, got {type(routes).__name__}")
    try:
        return route_families(normalize_routes(str(r) for r in routes))
    except RouteError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self) -> dict[str, t.Callable[..., t.Any]]:
        return {"subnet_route_families": subnet_route_families}
