# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This file only documents the action plugin of the same name: the work is done on the controller, over the
# connection, with the device's own POSIX shell. Nothing of it runs on the device as a module.

from __future__ import annotations

DOCUMENTATION = r"""
module: install_files
short_description: Install files and symlinks on a device without Python, atomically and only when they differ
version_added: 0.1.0
description:
  - One shell round trip compares the sha256 of each device copy (C(sha256sum), or C(busybox sha256sum)) and each
    symlink with what is wanted, and measures the free space of every target filesystem.
  - Only differing files are uploaded with the connection's own file transfer, to a temporary name beside the
    destination; then one more round trip renames them into place, runs O(verify), and switches the symlinks.
  - When O(verify) fails, everything this run changed is put back (previous files and link targets) and the task
    fails with the command's output verbatim.
  - When a filesystem lacks room, the task fails before anything changes, with the numbers
    (C(needs N MB, M MB free on /mnt/onboard)).
  - A file with O(files[].src_gzip) travels compressed when the device can unpack gzip (C(gunzip), C(gzip -d),
    C(busybox gunzip) or C(zcat), each tried for real in the first round trip); the compressed copy goes to a
    temporary name, the device unpacks it beside the destination and checks the unpacked file's sha256 against
    O(files[].src) before anything moves. A device without any of them gets O(files[].src) as it is.
  - A no-op run sends one command to the device and transfers nothing.
options:
  files:
    description: Files to install.
    type: list
    elements: dict
    default: []
    suboptions:
      src:
        description: Path of the file on the controller.
        type: path
        required: true
      dest:
        description: Absolute path on the device.
        type: str
        required: true
      mode:
        description:
          - Octal mode of the installed file. On a filesystem without Unix modes (FAT or exFAT, such as C(vfat),
            C(msdos), C(fuse.fusefat)) it is neither set nor compared (chmod fails there and the mount decides the
            modes), and a link there is refused before anything changes (no symlinks on FAT).
        type: str
        default: '0755'
      src_gzip:
        description:
          - Path on the controller of a gzip copy of O(files[].src) (what M(fleetmesh.tailscale.release) returns as
            RV(fleetmesh.tailscale.release#module:packed)). Sent instead of O(files[].src) to a device that can
            unpack it; a copy that does not unpack to O(files[].src) fails the task before anything changes.
          - Ignored under O(root) (the staging tree is on the controller).
        type: path
        default: ''
  links:
    description: Symlinks to create or correct (a path that exists and is not a symlink is refused).
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path of the symlink on the device.
        type: str
        required: true
      target:
        description: What the symlink points to (kept verbatim, relative targets allowed).
        type: str
        required: true
  dirs:
    description: Directories to create (recorded in the manifest, removed on O(state=absent) when empty).
    type: list
    elements: str
    default: []
  verify:
    description:
      - Shell command run on the device after the change; a non-zero exit rolls the change back and fails the task.
    type: str
    default: ''
  verify_expect:
    description: Text that must appear in the output of O(verify).
    type: str
    default: ''
  verify_stage:
    description:
      - V(files) runs O(verify) after the files are in place and before any symlink changes (a binary upgrade
        whose new program does not run never becomes current); V(links) runs it after the symlinks too.
    type: str
    default: links
    choices: [files, links]
  root:
    description:
      - Rootfs staging dir on the target (with a C(local) connection, a firmware image tree on the controller).
        Every path written (O(files[].dest), O(links[].path), O(dirs), O(manifest)) goes below it; link targets
        stay as given (in-image paths) and the manifest lists in-image paths.
      - Empty (the default) writes the device itself. C(/) is refused.
    type: str
    default: ''
  remount_root:
    description: When C(/) is mounted read-only, remount it read-write around the symlink changes, then sync and
      remount it read-only.
    type: bool
    default: false
  manifest:
    description:
      - Device path of a manifest listing every dir, file and link of this install, kept up to date.
      - With O(state=absent), exactly what it lists is removed (links only while still symlinks, dirs only when
        empty), then the manifest itself.
    type: str
    default: ''
  state:
    description: V(present) installs; V(absent) removes what O(manifest) lists.
    type: str
    default: present
    choices: [present, absent]
  storage_mount:
    description:
      - Mount point that must be in the device's C(/proc/mounts) before anything below it is written (checked only
        when a file, dir or the manifest is below it); waited for up to O(storage_mount_timeout) seconds, then the
        task fails with nothing written. Empty or C(/) skips it.
    type: str
    default: ''
  storage_mount_timeout:
    description: Seconds to wait for O(storage_mount).
    type: int
    default: 30
  keep_stale:
    description:
      - What O(manifest) lists from an earlier run and this one no longer wants (the previous version's dir and
        files) is normally removed once the switch has passed O(verify).
      - V(true) leaves it on the device and listed in the manifest (RV(kept)), so a caller can switch back to it
        until the new version has proved itself (the binary role's health gate); a later run with V(false)
        removes it.
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
notes:
  - Needs only C(/bin/sh) and busybox applets on the device (C(sha256sum), C(stat), C(df), C(mv), C(ln), C(awk)).
author:
  - fleetmesh developers !UNKNOWN
"""

EXAMPLES = r"""
- name: Install a release and switch to it only if it runs
  fleetmesh.tailscale.install_files:
    files:
      - {src: /cache/tailscale_1.98.10_arm/tailscaled, dest: /mnt/onboard/.tailscale/1.98.10/tailscaled}
    links:
      - {path: /mnt/onboard/.tailscale/current, target: "1.98.10"}
    verify: /mnt/onboard/.tailscale/1.98.10/tailscaled --version
    verify_stage: files
    manifest: /mnt/onboard/.tailscale/.manifest-binary

- name: Remove exactly what was installed
  fleetmesh.tailscale.install_files:
    manifest: /mnt/onboard/.tailscale/.manifest-binary
    state: absent
"""

RETURN = r"""
uploaded:
  description: Device paths whose content was (or, in check mode, would be) uploaded.
  returned: state=present
  type: list
  elements: str
linked:
  description: Symlinks created or corrected.
  returned: state=present
  type: list
  elements: str
packed:
  description: The part of RV(uploaded) that travelled compressed (O(files[].src_gzip), unpacked on the device).
  returned: state=present
  type: list
  elements: str
modes_fixed:
  description: Files whose content matched but whose mode was corrected.
  returned: state=present
  type: list
  elements: str
previous:
  description: What each symlink of RV(linked) pointed to before this run (symlinks that did not exist are left
    out), for example the previous version's dir.
  returned: state=present
  type: dict
kept:
  description: Paths left on the device and in the manifest because of O(keep_stale).
  returned: state=present
  type: list
  elements: str
verify_output:
  description: What O(verify) printed (stdout and stderr) when it ran and passed, else empty.
  returned: state=present
  type: str
removed:
  description: Paths the manifest listed (state=absent).
  returned: state=absent
  type: list
  elements: str
"""
