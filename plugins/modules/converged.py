# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This file only documents the action plugin of the same name: the work is done on the controller, over the
# connection, with the device's own POSIX shell. Nothing of it runs on the device as a module.

from __future__ import annotations

DOCUMENTATION = r"""
module: converged
short_description: Tell in one round trip whether a device is as the last full run left it (the converged stamp)
version_added: 0.2.0
description:
  - What lets C(playbooks/site.yml) skip every role on a device that a re-run would not change, after one device
    round trip (see docs/performance.md, "Converged re-runs").
  - O(state=check) computes the digest of this host's inputs on the controller (the collection's code under
    C(roles/), C(playbooks/) and C(plugins/) but the connection, callback and inventory plugins; every variable
    whose name starts with C(fleetmesh_), C(binary_),
    C(iptables_shim_), C(state_dir_), C(networking_), C(boot_), C(login_), C(routing_) or C(device_), templated for
    the host, except what the roles set during a run; secret-named values (password, token, auth key, API key,
    private, secret, credential), at any depth, count by presence only; the doors' options
    (C(fleetmesh_telnet_*), C(fleetmesh_adb_*), C(fleetmesh_ssh_*)) and C(binary_cache_dir) do not count; the size
    and mtime of every file under C(binary_src), C(iptables_shim_bundles) and C(networking_tun_module) do), then
    reads the stamp and observes the device in one round trip.
    RV(converged) is true when the stamp's inputs digest is this run's and the observation is the one recorded.
  - "The observation: C(uname -srm), whether C(/dev/net/tun) exists, each recorded manifest and every item it lists
    (C(ls -lnd); small files under 64 KiB also by checksum; dirs by mode and owner), each recorded path, the
    recorded C(/proc/sys) values, and the node as C(tailscale status --json --peers=false) (backend state, version,
    node key, addresses, host name) and C(tailscale debug prefs) (all prefs but the keys) show it."
  - Large files are compared by mode, owner, size and mtime (to the minute), not read, so that a no-op does not read
    the 30+ MB programs from flash on every run. A full run (not converged, or C(fleetmesh_fast_noop=false)) checks
    them by SHA-256 as before.
  - O(state=record) writes the stamp after a full run (two round trips, a temp file and a rename); never reported as
    a change. O(state=absent) removes it (the removal play, first).
  - Needs only C(/bin/sh), C(ls), C(sed), C(cat) and one of C(cksum), C(md5sum), C(sha256sum) on the device.
options:
  state:
    description: Check, record or remove the stamp.
    type: str
    choices: [check, record, absent]
    default: check
  stamp:
    description: Absolute path of the stamp on the device.
    type: str
    required: true
  inputs:
    description: For O(state=record), the inputs digest the check of the same run returned (RV(inputs)).
    type: str
    default: ""
  manifests:
    description: For O(state=record), the roles' manifests on the device (their items are observed too).
    type: list
    elements: str
    default: []
  paths:
    description: For O(state=record), other device paths to observe.
    type: list
    elements: str
    default: []
  metas:
    description:
      - For O(state=record), files observed by C(ls -lnd) only (mode, owner, size, mtime), never read; for files
        that hold secrets (the node's state file, a config file with a key).
    type: list
    elements: str
    default: []
  proc:
    description: For O(state=record), files whose contents to observe (the forwarding sysctls under C(/proc/sys)).
    type: list
    elements: str
    default: []
  tailscale:
    description: For O(state=record), the tailscale CLI on the device ('' to observe no node).
    type: str
    default: ""
  socket:
    description: For O(state=record), tailscaled's socket.
    type: str
    default: ""
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: The check is read-only; record and absent change nothing in check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
author:
  - fleetmesh developers !UNKNOWN
"""

EXAMPLES = r"""
- name: Check whether the device is as the last full run left it
  fleetmesh.tailscale.converged:
    stamp: /opt/tailscale/.fleetmesh-converged
  register: converged

- name: Record the stamp after a full run
  fleetmesh.tailscale.converged:
    state: record
    stamp: /opt/tailscale/.fleetmesh-converged
    inputs: "{{ converged.inputs }}"
    manifests:
      - /opt/tailscale/.fleetmesh-binary.manifest
      - /etc/init.d/.fleetmesh-boot.manifest
    paths:
      - /var/lib/tailscale
    tailscale: /usr/bin/tailscale
    socket: /var/run/tailscale/tailscaled.sock
  when: not converged.converged
"""

RETURN = r"""
converged:
  description: Whether this run's inputs and the device's observation match the stamp (state=check).
  returned: state=check
  type: bool
reason:
  description: Why (full run, and what differs; or converged).
  returned: state=check
  type: str
  sample: "full run: the device changed since the last full run (files, prefs, node or daemon)"
inputs:
  description: This host's inputs digest ('' when a variable does not template, then the run is a full one).
  returned: state=check
  type: str
node_key:
  description: The node key the daemon reports ('' for none).
  returned: state=check
  type: str
routes:
  description: The routes the node advertises per its prefs.
  returned: state=check
  type: list
  elements: str
backend_state:
  description: The daemon's backend state ('' when it did not answer).
  returned: state=check
  type: str
observed:
  description: The recorded observation digest.
  returned: state=record
  type: str
"""
