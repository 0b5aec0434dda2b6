# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This file only documents the action plugin of the same name: it runs on the controller and talks to the control
# server's API. Nothing of it runs on the device.

from __future__ import annotations

DOCUMENTATION = r"""
module: control_node
short_description: Look a node up on the control server, or delete it from there
version_added: 0.1.0
description:
  - Finds the node on the control server by O(node_key), else O(addresses), else O(hostname) (which must then match
    one node).
  - O(state=present) only reports it (and fails when there is none); O(state=absent) deletes it and checks the
    server no longer lists it. No node, nothing to do.
  - Runs on the controller only, with check mode and diff. O(control) is required.
  - The device keeps its state file; its node key is then unknown to the server and a new login registers it anew.
options:
  node_key:
    description: The node's key (C(nodekey:...), C(Self.PublicKey) of C(tailscale status --json)).
    type: str
  addresses:
    description: The node's tailnet addresses (every node holding one of them matches).
    type: list
    elements: str
  hostname:
    description: The node's hostname or given name.
    type: str
  state:
    description: V(present) looks the node up; V(absent) deletes it.
    type: str
    choices: [present, absent]
    default: present
  online_timeout:
    description:
      - With O(state=present), wait up to this many seconds for the server to list a matching node online (the
        binary role's health gate uses it). The task then never fails for a node that is missing, offline, or a
        server that does not answer; it returns RV(online) and says in RV(msg) what it saw last.
      - V(0) looks the node up once and fails when there is none.
    type: int
    default: 0
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
- name: Delete the node from headscale
  fleetmesh.tailscale.control_node:
    control:
      url: https://headscale.example.org
      api_key: "{{ vault_headscale_api_key }}"
    node_key: nodekey:0123abcd
    state: absent

- name: Wait up to two minutes for the node to be online on headscale
  fleetmesh.tailscale.control_node:
    control:
      url: https://headscale.example.org
      api_key: "{{ vault_headscale_api_key }}"
    node_key: nodekey:0123abcd
    online_timeout: 120
  register: seen
"""

RETURN = r"""
online:
  description: Whether a matching node was listed online.
  returned: when O(online_timeout) is set
  type: bool
msg:
  description: What the last look saw (V(listed online), V(listed offline), V(not listed), or the server's error).
  returned: when O(online_timeout) is set
  type: str
nodes:
  description: The matching nodes as the server listed them before the task (id, name, addresses, tags, ...).
  returned: always
  type: list
  elements: dict
"""
