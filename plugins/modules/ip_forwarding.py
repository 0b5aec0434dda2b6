# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This file only documents the action plugin of the same name: the work is done on the controller, over the
# connection, with the device's own POSIX shell. Nothing of it runs on the device as a module.

from __future__ import annotations

DOCUMENTATION = r"""
module: ip_forwarding
short_description: Enable IP forwarding per address family, read before write, kept across reboot
version_added: 0.1.0
description:
  - For each family given, reads C(net.ipv4.ip_forward) / C(net.ipv6.conf.all.forwarding) under C(/proc/sys) and
    writes C(1) only when it is not already C(1) (as containerboot does).
  - Persists the setting in the device's own way, see O(persist).
  - Works on devices without Python (POSIX sh over the connection).
  - With O(state=absent), removes the persistence it wrote (O(sysctl_file) and O(rc_script) when they carry its
    C(Managed by fleetmesh.tailscale) header, O(rc_links) that point to that script) and leaves the running sysctls as
    they are (their value before was never recorded).
options:
  state:
    description: C(present) enables and persists forwarding; C(absent) removes the persistence files only.
    type: str
    choices: [present, absent]
    default: present
  families:
    description: IP versions that need forwarding (C(4), C(6)), e.g. from the routes' address families.
    type: list
    elements: int
    default: []
  persist:
    description:
      - C(sysctl_file) writes O(sysctl_file) (read at boot by systemd-sysctl, OpenWrt and most full distros).
      - C(rc_script) installs O(rc_script), a sysvinit script that writes the sysctls at boot, linked as O(rc_links).
      - C(none) leaves persistence to the boot integration (the routing role publishes the sysctl names).
    type: str
    choices: [none, sysctl_file, rc_script]
    default: none
  sysctl_file:
    description: The sysctl drop-in for O(persist=sysctl_file).
    type: str
    default: /etc/sysctl.d/99-fleetmesh-tailscale.conf
  rc_script:
    description: The init script for O(persist=rc_script).
    type: str
    default: /etc/init.d/fleetmesh-ipforward
  rc_links:
    description: Start links to O(rc_script) (e.g. C(/etc/rc5.d/S01fleetmesh-ipforward)).
    type: list
    elements: str
    default: []
  remount_rw:
    description:
      - When C(/) is mounted read-only (QuecOpen), remount it read-write for the persistence write only, then sync
        and remount it read-only again. Without it, a read-only C(/) fails before anything is changed.
    type: bool
    default: false
extends_documentation_fragment:
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
- name: Forward IPv4 for a QuecOpen LAN relay, at every boot too
  fleetmesh.tailscale.ip_forwarding:
    families: [4]
    persist: rc_script
    rc_links: [/etc/rc5.d/S01fleetmesh-ipforward]

- name: Remove that boot script and its link again (forwarding stays as it is until the next boot)
  fleetmesh.tailscale.ip_forwarding:
    state: absent
    rc_links: [/etc/rc5.d/S01fleetmesh-ipforward]
"""

RETURN = r"""
sysctls:
  description: The sysctls managed.
  returned: when O(state=present)
  type: list
  elements: str
enabled:
  description: The sysctls that were not 1 and were (or would be) written.
  returned: when O(state=present)
  type: list
  elements: str
persisted_in:
  description: The file that keeps the setting across reboot, if any.
  returned: when O(state=present)
  type: str
removed:
  description: The files and links that were (or would be) removed.
  returned: when O(state=absent)
  type: list
  elements: str
"""
