# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to the fleetmesh.tailscale collection: not a public API, may change without notice.

sha256 on both ends of the wire: of a controller file (``sha256_file``), and the device shell that prints the hex
digest of a file with whatever the device has (``sha256_cmd``: sha256sum, else busybox's applet).
"""

from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 of a controller file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_cmd(word: str) -> str:
    """Device shell printing the bare hex sha256 of the file ``word`` (a shell word: quoted path or "$var")."""
    return (
        f"if command -v sha256sum >/dev/null 2>&1; then sha256sum {word}; else busybox sha256sum {word}; fi"
        " | sed 's/ .*//'"
    )
