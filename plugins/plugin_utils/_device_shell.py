# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to the fleetmesh.tailscale collection: not a public API, may change without notice.

The device shell snippets the actions share (POSIX sh: busybox ash and hush, toybox's mksh, dash, NetBSD sh): the
read-only root check (as a printed section or as a condition, and its reading on the controller), the
remount-read-write with a trap that syncs and remounts read-only on exit, and the atomic write (temp file beside
the destination, renamed into place). The sha256 snippet is in _digest.py.
"""

from __future__ import annotations

import typing as t

# Temp names beside a destination: install_files, tun_device and state_dir stage as `<name>.fmtmp`;
# tailscale_prefs' config file and ip_forwarding's persistence as `<path>.fleetmesh-tmp`.
TMP_SUFFIX = ".fmtmp"
WRITE_TMP_SUFFIX = ".fleetmesh-tmp"

_ROOT_ENTRY = '$2 == "/" {o = $4} END'
# Prints the mount options of / (the last mount of / wins): read it back with root_read_only().
ROOT_OPTIONS = f"awk '{_ROOT_ENTRY} {{print o}}' /proc/mounts"
# A condition: true when / is mounted read-only.
ROOT_IS_READ_ONLY = f"awk '{_ROOT_ENTRY} {{exit !(o ~ /(^|,)ro(,|$)/)}}' /proc/mounts"

REMOUNT_RW = "mount -o remount,rw /"
# Whatever happens after the remount, / is synced and read-only again when the script exits.
RESTORE_RO = "trap 'sync; mount -o remount,ro /' EXIT"


def root_read_only(options: str) -> bool:
    """Whether the options ROOT_OPTIONS printed (or a /proc/mounts options field) say read-only."""
    return "ro" in options.strip().split(",")


def remount_rw(or_else: str = "") -> list[str]:
    """The two commands that open / for writing until the script exits; ``or_else`` runs when the remount fails."""
    return [f"{REMOUNT_RW} || {or_else}" if or_else else REMOUNT_RW, RESTORE_RO]


def remount_rw_if_read_only() -> str:
    """One line: remount / read-write (with the trap) only when it is mounted read-only."""
    return f"if {ROOT_IS_READ_ONLY}; then {' && '.join(remount_rw())}; fi"


def atomic_write(
    dest: str,
    tmp: str,
    produce: str = "",
    *,
    mkdir: str = "",
    checks: t.Sequence[str] = (),
    mode: str = "",
) -> list[str]:
    """The steps that replace ``dest`` atomically, in order; each must succeed before the next (the caller joins them
    with ``&&``, or one per line under ``set -e``, and says what a failure does).

    ``dest`` and ``tmp`` are shell words (quoted paths or "$var" expressions). ``produce`` writes the new content to
    ``tmp`` ('' when it is already there, e.g. uploaded); ``mkdir`` is the parent dir to create first ('' for none);
    ``checks`` run on the temp copy (``sh -n``, ``cmp``); ``mode`` is chmod-ed on it before the rename.
    """
    steps = [f"mkdir -p {mkdir}"] if mkdir else []
    steps += [produce] if produce else []
    steps += list(checks)
    steps += [f"chmod {mode} {tmp}"] if mode else []
    return [*steps, f"mv -f {tmp} {dest}"]
