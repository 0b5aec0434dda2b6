# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This file only documents the action plugin of the same name: the work is done on the controller, over the
# connection, with the device's own POSIX shell. Nothing of it runs on the device as a module.

from __future__ import annotations

DOCUMENTATION = r"""
module: tun_device
short_description: Decide tailscaled's networking mode (kernel TUN or userspace) and make it work, without Python
version_added: 0.1.0
description:
  - One shell round trip probes the device; the decision is made on the controller; only when something must
    change does a second script run (and, for a user-supplied C(tun.ko), one upload).
  - With O(mode=auto), in this order, a usable C(/dev/net/tun) (character device 10,200 that opens) means kernel
    mode; a kernel that has tun (C(/proc/misc) lists it, or C(/sys/class/misc/tun) exists) but no node gets the
    node created (C(mknod /dev/net/tun c 10 200), mode 0600); a user-supplied O(module_src) is uploaded to
    O(module_dest) (temp name, sha256 checked, loaded with C(insmod), then renamed into place) and the node made as
    before; otherwise userspace networking, with a warning saying what the node then can and cannot do.
  - O(mode=kernel) fails with a clear message before any change when none of the kernel ways can work.
  - In userspace mode the loopback interface gets C(127.0.0.1) and is brought up when it lacks either (the
    proxies listen there).
  - Returns C(ansible_facts.fleetmesh_networking) for the boot role, with C(tailscaled_args) and
    C(boot_commands), POSIX sh lines the init integration runs before tailscaled at every boot (C(/dev) is rebuilt
    at boot, modules are not reloaded). The boot lines are the same whatever this run had to change, so the next
    run decides the same.
  - On a kernel other than Linux (NetBSD) the tun checks do not apply; kernel mode is left to tailscaled, which
    opens the system's own tun devices.
  - O(state=absent) removes the uploaded C(tun.ko) only; C(/dev) and loaded modules are left alone.
options:
  mode:
    description: V(auto) decides from the device; V(kernel) insists on a TUN device; V(userspace) uses none.
    type: str
    choices: [auto, kernel, userspace]
    default: auto
  module_src:
    description: A C(tun.ko) on the controller built for the device's kernel; used only when tun is not built in.
    type: path
    default: ''
  module_dest:
    description: Absolute device path where the C(tun.ko) is kept (and loaded from at boot).
    type: str
    default: ''
  socks5_server:
    description: Userspace mode only. C(HOST:PORT) of tailscaled's SOCKS5 proxy (C(--socks5-server)); empty for none.
    type: str
    default: ''
  outbound_http_proxy_listen:
    description:
      - Userspace mode only. C(HOST:PORT) of tailscaled's outbound HTTP proxy (C(--outbound-http-proxy-listen));
        empty for none. The same address as O(socks5_server) serves both on one port.
    type: str
    default: ''
  probe:
    description:
      - V(false) for a firmware rootfs on the controller, whose kernel cannot be probed from here. C(auto) and
        C(kernel) then mean kernel mode with the node created at boot when missing; no module can be loaded.
    type: bool
    default: true
  state:
    description: V(present) decides and prepares; V(absent) removes the uploaded module.
    type: str
    choices: [present, absent]
    default: present
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
notes:
  - The decision and the scripts are described in docs/networking.md of the collection.
author:
  - fleetmesh developers !UNKNOWN
"""

EXAMPLES = r"""
- name: Let the device decide, userspace with loopback proxies as the fallback
  fleetmesh.tailscale.tun_device:
    mode: auto
    socks5_server: 127.0.0.1:1055
    outbound_http_proxy_listen: 127.0.0.1:1055

- name: Kernel mode on a QuecOpen module with a tun.ko built for its kernel
  fleetmesh.tailscale.tun_device:
    mode: kernel
    module_src: files/mdm9607/tun.ko
    module_dest: /usrdata/tailscale/tun.ko
"""

RETURN = r"""
changes:
  description: What was (or, in check mode, would be) done, one line each (C(mknod /dev/net/tun), C(upload PATH),
    C(insmod PATH), C(install PATH), C(replace /dev/net/tun), C(lo 127.0.0.1 up), C(remove PATH)).
  returned: always
  type: list
  elements: str
ansible_facts:
  description: Facts for the boot role.
  returned: when state is present
  type: dict
  contains:
    fleetmesh_networking:
      description:
        - C(mode) (V(kernel) or V(userspace)), C(requested_mode), C(branch) (V(node), V(mknod), V(module),
          V(userspace), V(image), V(os) for a non-Linux kernel), C(tailscaled_args) (list of flags),
          C(boot_commands) (list of POSIX sh lines),
          C(module_path), C(socks5_server), C(outbound_http_proxy_listen), C(tun) (C(node), C(kernel),
          C(module_loaded) as probed).
      type: dict
      returned: always
"""
