# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This file only documents the action plugin of the same name: the work is done on the controller, over the
# connection, with the device's own POSIX shell. Nothing of it runs on the device as a module.

from __future__ import annotations

DOCUMENTATION = r"""
module: state_dir
short_description: Prepare tailscaled's state dir and move old state into it once, without Python on the device
version_added: 0.1.0
description:
  - One shell round trip creates the state dir and the logs dir (mode 0700), keeps the state file at 0600, and
    moves state from the first existing O(old_paths) entry when the state dir has no C(tailscaled.state) yet.
  - A move copies the file, compares it with the original, renames the copy into place and renames the old file to
    C(<old>.migrated). State is never deleted and never overwritten; the node identity inside is unchanged.
  - When state exists both at an old path and in the state dir, the state dir's is kept, the old file is left
    untouched, and a warning is printed.
  - A state dir on a filesystem without Unix modes (FAT, exFAT) is refused before anything changes, since tailscaled
    chmods its state file to 0600 and, when that fails, runs on an in-memory store (a new node at every start).
  - With O(backup), a state file the state dir lacks (after a firmware update replaced the root filesystem) is restored
    from that copy, and the copy is brought up to date when it differs (a plain copy, as it may be on FAT).
  - Returns C(ansible_facts.fleetmesh_state_dir) for the boot role (flags, environment, C(restart_needed)).
options:
  path:
    description: Absolute path of the state dir; the state file is C(<path>/tailscaled.state).
    type: str
    required: true
  logs_dir:
    description: Absolute path for tailscaled's logs (C(TS_LOGS_DIR)); default C(<path>/logs).
    type: str
    default: ''
  old_paths:
    description: Old state files to move in (first existing one wins).
    type: list
    elements: str
    default: []
  root:
    description:
      - Rootfs staging dir (a firmware image tree, with a C(local) connection). The dirs are made below it, nothing
        is moved, and the published facts keep in-image paths. C(/) is refused.
    type: str
    default: ''
  backup:
    description:
      - Absolute path of a copy of C(tailscaled.state) kept elsewhere (e.g. on the FAT storage of a Kobo); empty for
        none. It holds the node's keys, and whoever can read that storage can read them.
    type: str
    default: ''
  storage_mount:
    description:
      - Mount point that must be in the device's C(/proc/mounts) before anything below it is written; waited for
        up to O(storage_mount_timeout) seconds, then the task fails with nothing written. Empty or C(/) skips it.
    type: str
    default: ''
  storage_mount_timeout:
    description: Seconds to wait for O(storage_mount).
    type: int
    default: 30
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.facts
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  facts:
    support: full
  platform:
    platforms: posix
author:
  - fleetmesh developers !UNKNOWN
"""

EXAMPLES = r"""
- name: Keep Kobo state on the onboard storage, moving the blog's /tailscaled.state once
  fleetmesh.tailscale.state_dir:
    path: /mnt/onboard/.tailscale/state
    old_paths:
      - /tailscaled.state
      - /var/lib/tailscale/tailscaled.state
"""

RETURN = r"""
changes:
  description: What was (or, in check mode, would be) done, one line each (C(mkdir DIR), C(move OLD), C(chmod ...)).
  returned: always
  type: list
  elements: str
both_exist:
  description: Old state paths left untouched because the state dir already had state.
  returned: always
  type: list
  elements: str
ansible_facts:
  description: Facts for the boot role.
  returned: always
  type: dict
  contains:
    fleetmesh_state_dir:
      description: The state_dir role's contract. C(state_dir), C(state_file), C(logs_dir), C(backup) (the copy
        on other storage, or empty), C(old_paths) (where a state is moved from), C(state_present), C(moved_from),
        C(restored_from), C(backup_refreshed), C(daemon_running), C(restart_needed), C(tailscaled_args) (list of
        flags), C(environment) (C(TS_LOGS_DIR)).
      type: dict
      returned: always
"""
