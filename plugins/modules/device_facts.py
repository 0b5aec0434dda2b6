# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This file only documents the action plugin of the same name: the work is done on the controller, over the
# connection, with the device's own POSIX shell. Nothing of it runs on the device as a module.

from __future__ import annotations

DOCUMENTATION = r"""
module: device_facts
short_description: Gather device facts without Python on the device
version_added: 0.1.0
description:
  - Runs one POSIX sh script on the device over the host's connection (telnet, adb, ssh, local) and returns what
    the collection's roles need as C(ansible_facts.fleetmesh_device).
  - Works on busybox devices without Python; needs only C(/bin/sh) and the usual busybox applets.
  - Read-only. Supports check mode.
options:
  paths:
    description:
      - Extra absolute paths whose filesystem and free space to report under C(storage). Paths that do not exist
        yet are measured on their nearest existing parent.
      - C(/) and C(/tmp) are always reported.
    type: list
    elements: path
    default: []
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
- name: Gather device facts, with the storage dir's free space
  fleetmesh.tailscale.device_facts:
    paths:
      - /mnt/onboard/.tailscale

- name: Pick the release architecture
  ansible.builtin.debug:
    msg: "tailscale_x_{{ ansible_facts.fleetmesh_device.tailscale_arch }}.tgz"
"""

RETURN = r"""
ansible_facts:
  description: Facts about the device.
  returned: always
  type: dict
  contains:
    fleetmesh_device:
      description: All device facts, in one namespace.
      type: dict
      contains:
        kernel:
          description: C(uname -s).
          type: str
          sample: Linux
        kernel_release:
          description: C(uname -r).
          type: str
          sample: 4.9.77
        machine:
          description: C(uname -m).
          type: str
          sample: armv7l
        tailscale_arch:
          description:
            - Release architecture for this device (C(arm) for ARMv5-v7, MIPS byte order from an ELF header).
            - Empty when it cannot be told; C(tailscale_arch_error) then says why.
          type: str
          sample: arm
        tailscale_arch_error:
          description: Why C(tailscale_arch) is empty.
          type: str
          sample: ""
        elf_bits:
          description: Word size of C(/bin/sh) on the device (32 or 64), or null.
          type: int
        elf_little_endian:
          description: Byte order of C(/bin/sh) on the device, or null.
          type: bool
        libc:
          description: C library, C(name) (glibc, musl, unknown) and C(version) (glibc only).
          type: dict
          sample: {"name": "glibc", "version": "2.19"}
        init_systems:
          description: Boot mechanisms present (systemd running, sysvinit rc dirs, udev rules dir, procd, NetBSD rc.d).
          type: list
          elements: str
          sample: [udev]
        rc_dirs:
          description: SysV rc directories found.
          type: list
          elements: str
        busybox_applets:
          description: Applets of the device's busybox, if any.
          type: list
          elements: str
        commands:
          description: Paths of the commands the roles use, by name (absent ones are not listed).
          type: dict
        python:
          description: Path of a Python interpreter on the device, or empty.
          type: str
        iptables:
          description: Whether an C(iptables) command is on PATH.
          type: bool
        nft:
          description: Whether an C(nft) command is on PATH.
          type: bool
        mounts:
          description: Mounted filesystems (C(device), C(mount), C(fstype), C(options)).
          type: list
          elements: dict
        root_readonly:
          description: Whether C(/) is mounted read-only.
          type: bool
        storage:
          description: Per requested path, C(mount), C(total_kb) and C(avail_kb) of its filesystem.
          type: dict
        tun:
          description: TUN support, C(node) (/dev/net/tun exists), C(kernel) (the kernel has tun), C(module_loaded).
          type: dict
"""
