# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter: validate subnet routes on the controller, before anything touches a device."""

from __future__ import annotations

import typing as t

from ansible.errors import AnsibleFilterError
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._routes import (
    RouteError,
    normalize_routes,
)

DOCUMENTATION = r"""
name: subnet_routes
short_description: Validate and canonicalise subnet routes
version_added: 0.1.0
description:
  - Returns the routes canonical (C(FD00:0::/64) becomes C(fd00::/64)) and in the order Tailscale stores them.
  - Fails on a bad CIDR, a bare address, host bits set, a duplicate, overlapping routes, or an exit route
    (C(0.0.0.0/0) or C(::/0), which belong to the exit-node setting).
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
- name: Validate the routes first
  ansible.builtin.set_fact:
    routes: "{{ ['192.168.225.0/24'] | fleetmesh.tailscale.subnet_routes }}"
"""

RETURN = r"""
_value:
  description: The canonical routes.
  type: list
  elements: str
"""


def subnet_routes(routes: t.Any) -> list[str]:
    if isinstance(routes, str) or not isinstance(routes, (list, tuple)):
        raise AnsibleFilterError(f"subnet routes must be a list of CIDR prefixes, got {type(routes).__name__}")
    try:
        return normalize_routes(str(r) for r in routes)
    except RouteError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self) -> dict[str, t.Callable[..., t.Any]]:
        return {"subnet_routes": subnet_routes}
