# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This file only documents the action plugin of the same name: it runs on the controller and talks to the control
# server's API. Nothing of it runs on the device.

from __future__ import annotations

DOCUMENTATION = r"""
module: control_routes
short_description: Approve a node's subnet routes and exit node on the control server
version_added: 0.1.0
description:
  - Finds the node on the control server (by O(node_key), else O(addresses), else O(hostname)), waits up to O(wait)
    seconds until it announces the routes to approve, sets the node's approved routes when they differ, and waits
    until the server reports them approved.
  - On headscale it also checks that each approved subnet route is served from this node (its C(subnet_routes), the
    primary routes) unless O(require_primary=false). Tailscale's API does not say which router serves a shared
    route; there the check is approval only (RV(primary_checked) is false).
  - The approved list ends as exactly O(routes) plus the exit routes (C(0.0.0.0/0), C(::/0)) when O(exit_node) is
    true; an option left unset keeps that part of the list as it is.
  - Runs on the controller only, with check mode and diff. O(control) is required.
options:
  node_key:
    description: The node's key (C(nodekey:...), C(Self.PublicKey) of C(tailscale status --json)).
    type: str
  addresses:
    description: The node's tailnet addresses.
    type: list
    elements: str
  hostname:
    description: The node's hostname or given name; must match one node.
    type: str
  routes:
    description: Subnet routes to approve (those the node advertises); V([]) approves none. Unset leaves them.
    type: list
    elements: str
  exit_node:
    description: Approve (true) or withdraw (false) the node's exit-node routes. Unset leaves them.
    type: bool
  require_primary:
    description: Fail when an approved subnet route is served from another node (set false for an HA pair).
    type: bool
    default: true
  wait:
    description: Seconds to wait for the node to announce the routes and for the server to report them.
    type: int
    default: 60
extends_documentation_fragment:
  - fleetmesh.tailscale.control_api
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
author:
  - fleetmesh developers !UNKNOWN
"""

EXAMPLES = r"""
- name: Approve the routes the routing role advertises
  fleetmesh.tailscale.control_routes:
    control:
      type: headscale
      url: https://headscale.example.org
      api_key: "{{ vault_headscale_api_key }}"
    node_key: "{{ login_result.node.node_key }}"
    routes:
      - 192.168.225.0/24
    exit_node: false
"""

RETURN = r"""
approved_routes:
  description: The approved list the task wanted.
  returned: always
  type: list
  elements: str
node:
  description: The node as the control server reports it (id, name, addresses, tags, advertised/approved/primary).
  returned: always
  type: dict
primary_checked:
  description: Whether the server says which node serves each route (headscale does).
  returned: success
  type: bool
not_primary:
  description: Approved subnet routes served from another node.
  returned: success
  type: list
  elements: str
"""
