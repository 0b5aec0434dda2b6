# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This file only documents the action plugin of the same name: the work is done on the controller, over the
# connection, with the device's own POSIX shell. Nothing of it runs on the device as a module.

from __future__ import annotations

DOCUMENTATION = r"""
module: node_status
short_description: Read a device's Tailscale node state without Python on the device
version_added: 0.1.0
description:
  - Runs one POSIX sh script on the device over the host's connection (telnet, adb, ssh, local) that reads
    C(uname -m), C(tailscale version), C(tailscale status --json --peers=false) and C(tailscale debug prefs), and
    returns the node's state as RV(node).
  - Read-only (never changes anything, C(changed) is always false). Supports check mode.
  - A missing CLI or a stopped daemon is reported (RV(node.backend_state) V(NotInstalled) or V(NoDaemon)), not
    failed.
  - Used by C(playbooks/report.yml), the fleet report (docs/report.md).
options:
  tailscale:
    description: The C(tailscale) CLI on the device (the profile's C(bin_dir)/tailscale, or a name on C(PATH)).
    type: str
    required: true
  socket:
    description: tailscaled's socket (the boot role's C(boot_socket)); unset, the CLI's default.
    type: str
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
author:
  - fleetmesh developers !UNKNOWN
"""

EXAMPLES = r"""
- name: Read the node's state
  fleetmesh.tailscale.node_status:
    tailscale: /usr/bin/tailscale
    socket: /var/run/tailscale/tailscaled.sock
  register: node_status

- name: Show it
  ansible.builtin.debug:
    msg: "{{ node_status.node.version }} {{ node_status.node.backend_state }} {{ node_status.node.tailscale_ips }}"
"""

RETURN = r"""
node:
  description: The node's state as the device sees it.
  returned: always
  type: dict
  contains:
    machine:
      description: C(uname -m).
      type: str
      sample: armv7l
    installed:
      description: Whether the C(tailscale) CLI is on the device.
      type: bool
    version:
      description: Version of the CLI (C(X.Y.Z), without the build suffix), empty when not installed.
      type: str
      sample: 1.98.10
    version_long:
      description: First line of C(tailscale version).
      type: str
    daemon_version:
      description: Version of the running tailscaled (C(X.Y.Z)), empty when it does not answer.
      type: str
    backend_state:
      description:
        - tailscaled's C(BackendState) (V(Running), V(NeedsLogin), V(Stopped), ...), or V(NotInstalled) (no CLI),
          V(NoDaemon) (C(tailscale status) failed).
      type: str
      sample: Running
    error:
      description: Why the state could not be read (the last line of the CLI's error), else empty.
      type: str
    networking:
      description: V(kernel) (a TUN device) or V(userspace) networking, from C(Status.TUN); empty when unknown.
      type: str
    tailscale_ips:
      description: The node's tailnet addresses.
      type: list
      elements: str
    node_key:
      description: The node key (C(nodekey:...)), empty when unknown.
      type: str
    hostname:
      description: The node's hostname as tailscaled reports it.
      type: str
    dns_name:
      description: The node's MagicDNS name.
      type: str
    online:
      description: Whether the node itself says it is connected to the control server; null when unknown.
      type: bool
    primary_routes:
      description: Subnet routes this node serves as the primary router.
      type: list
      elements: str
    advertised_routes:
      description: Routes the node advertises (prefs C(AdvertiseRoutes), exit-node routes included), sorted.
      type: list
      elements: str
    prefs_read:
      description: Whether C(tailscale debug prefs) answered.
      type: bool
"""
