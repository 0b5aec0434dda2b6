# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to the fleetmesh.tailscale collection: not a public API, may change without notice.

Device paths as the actions take them: checked absolute paths, a rootfs staging dir (``root``) that every written
path goes below, the in-image path back from a staged one, and the filesystem types that keep no Unix modes.
"""

from __future__ import annotations

import typing as t

from ansible.errors import AnsibleActionFail

# Filesystem types (the third field of /proc/mounts) that keep no Unix modes, owners or symlinks: FAT in its kernel
# drivers and FUSE implementations, exFAT. A Kobo's /mnt/onboard is one. chmod there fails (EPERM or ENOSYS), and
# the modes stat reports are the mount's, so files are written without chmod and their modes are not compared.
NO_MODE_FS = frozenset({"vfat", "msdos", "fat", "umsdos", "exfat", "fuse.fusefat", "fuse.exfat", "fuseblk"})


def device_path(value: str, what: str, root: str = "") -> str:
    value = str(value)
    if not value.startswith("/") or "\n" in value or value.rstrip("/") != value or "/../" in f"{value}/":
        raise AnsibleActionFail(f"{what}: {value!r} must be an absolute path without '..', newline or trailing /")
    return root + value


def staging_root(value: t.Any) -> str:
    """A rootfs staging dir (every written path goes below it; link targets stay in-image), or ''."""
    raw = str(value or "")
    if not raw:
        return ""
    root = raw.rstrip("/")
    if not root:
        raise AnsibleActionFail("root: '/' is not a staging dir; leave root empty to write the device itself")
    return device_path(root, "root")


def unroot(path: str, root: str) -> str:
    """The in-image path of a path under a rootfs staging dir (``root`` empty: the path itself)."""
    return path[len(root) :] if root and path.startswith(root + "/") else path


def mount_types(text: str) -> dict[str, str]:
    """mount point -> filesystem type from `mountpoint<TAB>fstype` lines (the last mount of a point wins)."""
    types: dict[str, str] = {}
    for line in text.splitlines():
        point, _sep, fstype = line.partition("\t")
        if point.startswith("/") and fstype:
            types[point.replace("\\040", " ")] = fstype.strip()
    return types
