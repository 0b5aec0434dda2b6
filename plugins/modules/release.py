# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This file only documents the action plugin of the same name: the work is done on the controller; nothing of it
# runs on the device.

from __future__ import annotations

DOCUMENTATION = r"""
module: release
short_description: Resolve, download once, verify and unpack a Tailscale static release on the controller
version_added: 0.1.0
description:
  - Resolves the version (pinned, or V(latest) from C(<base_url>/<track>/?mode=json&os=linux), field
    C(TarballsVersion)), downloads C(tailscale_<version>_<arch>.tgz) into O(cache_dir) once per arch and version,
    verifies it against the published C(.sha256) (bare hex) or O(checksum), and extracts only C(tailscale),
    C(tailscaled) (and the C(systemd/) files on request).
  - A checksum mismatch fails the task; the file is never kept in the cache.
  - O(src) takes a local tarball or build directory instead (NetBSD, custom builds).
  - Runs on the controller only and sends nothing to the device; it never reports a change.
options:
  arch:
    description: Tailscale release arch (C(ansible_facts.fleetmesh_device.tailscale_arch)).
    type: str
    required: true
  version:
    description: Version C(X.Y.Z), or V(latest) of O(track). Empty means V(latest).
    type: str
    default: ''
  track:
    description: Release track.
    type: str
    default: stable
    choices: [stable, unstable]
  base_url:
    description: Base URL of a server with the pkgs.tailscale.com layout (the official one, or a mirror).
    type: str
    default: https://pkgs.tailscale.com
  cache_dir:
    description: Controller directory for downloaded and unpacked releases.
    type: path
    default: ~/.cache/fleetmesh/tailscale
  checksum:
    description: Pinned sha256 (hex) of the tarball; replaces the published C(.sha256) when set.
    type: str
    default: ''
  src:
    description:
      - Local tarball or directory (with C(tailscale) and C(tailscaled)) on the controller, used instead of a
        download. A tarball named C(tailscale_<version>_<arch>.tgz) for another arch is refused.
    type: path
    default: ''
  systemd_files:
    description: Also extract C(systemd/tailscaled.service) and C(systemd/tailscaled.defaults).
    type: bool
    default: false
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
- name: Fetch the pinned release for the device's arch
  fleetmesh.tailscale.release:
    arch: "{{ ansible_facts.fleetmesh_device.tailscale_arch }}"
    version: 1.98.10
  register: binary_release
"""

RETURN = r"""
version:
  description: The resolved version.
  returned: always
  type: str
arch:
  description: The release arch.
  returned: always
  type: str
tarball:
  description: Path of the verified tarball on the controller (empty for a directory source).
  returned: always
  type: str
downloaded:
  description: Whether this run downloaded the tarball (false when it came from the cache).
  returned: always
  type: bool
files:
  description: Controller paths of the extracted files, by name (C(tailscale), C(tailscaled), C(systemd/...)).
  returned: always
  type: dict
packed:
  description:
    - Controller paths of gzip copies of the programs, by name (C(tailscale), C(tailscaled)), made once per release
      when it is extracted. M(fleetmesh.tailscale.install_files) sends these (its C(files[].src_gzip)) to a device
      that can unpack gzip, so a first install moves about the tarball's size, not twice it.
    - Empty for a build directory (O(src) a directory), whose programs are sent as they are.
  returned: always
  type: dict
  sample: {"tailscale": "/root/.cache/fleetmesh/tailscale/stable/tailscale_1.98.10_arm/tailscale.gz"}
"""
