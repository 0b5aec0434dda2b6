# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to the fleetmesh.tailscale collection: not a public API, may change without notice.

Controller-side Tailscale release handling: resolve a version (pinned, or the track's latest from
``<base>/<track>/?mode=json&os=linux``), download ``tailscale_<ver>_<arch>.tgz`` once into a cache dir, verify it
against the published ``.sha256`` (bare hex) or a pinned checksum, and extract only the programs (and, on request,
the ``systemd/`` files). A local tarball or directory (NetBSD and custom builds) takes the place of the download.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import tempfile
import typing as t
from pathlib import Path

from ansible.module_utils.urls import ConnectionError as UrlConnectionError
from ansible.module_utils.urls import open_url
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._digest import sha256_file

PROGRAMS = ("tailscale", "tailscaled")
SYSTEMD_FILES = ("systemd/tailscaled.service", "systemd/tailscaled.defaults")
VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
TRACKS = ("stable", "unstable")


class ReleaseError(Exception):
    """A release cannot be resolved, fetched or verified; the message says which and why."""


def parse_checksum(text: str, what: str) -> str:
    """The hex digest from a .sha256 body: bare hex (pkgs.tailscale.com) or `sha256sum` output (`HEX  name`)."""
    words = text.strip().split()
    value = words[0].lower() if words else ""
    if not SHA256_RE.match(value):
        raise ReleaseError(f"{what}: not a sha256 checksum: {text.strip()[:80]!r}")
    return value


def verify_checksum(path: Path, expected: str, name: str = "") -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise ReleaseError(f"checksum mismatch for {name or path.name}: expected {expected}, got {actual}; refusing it")


def _fetch(url: str, timeout: float) -> bytes:
    if not url.startswith(("http://", "https://")):
        raise ReleaseError(f"only http(s) release URLs are supported, got {url!r}")
    try:
        with open_url(url, timeout=timeout) as resp:
            return t.cast(bytes, resp.read())
    except (OSError, UrlConnectionError) as exc:
        raise ReleaseError(f"cannot fetch {url}: {exc}") from exc


def latest_version(base_url: str, track: str, timeout: float = 30.0) -> str:
    """The track's newest tarball version, from the release index JSON (field TarballsVersion)."""
    url = f"{base_url.rstrip('/')}/{track}/?mode=json&os=linux"
    try:
        version = str(json.loads(_fetch(url, timeout)).get("TarballsVersion", ""))
    except (ValueError, AttributeError) as exc:
        raise ReleaseError(f"{url}: not a release index: {exc}") from exc
    if not VERSION_RE.match(version):
        raise ReleaseError(f"{url}: no usable TarballsVersion (got {version!r})")
    return version


def tarball_name(version: str, arch: str) -> str:
    return f"tailscale_{version}_{arch}.tgz"


def download(
    base_url: str, track: str, version: str, arch: str, *, cache_dir: Path, checksum: str = "", timeout: float = 300.0
) -> tuple[Path, bool]:
    """The verified tarball in the cache, fetched only when not cached yet; returns (path, downloaded)."""
    name = tarball_name(version, arch)
    dest = cache_dir / track / name
    url = f"{base_url.rstrip('/')}/{track}/{name}"
    expected = parse_checksum(checksum, "pinned checksum") if checksum else ""
    if dest.is_file():
        # The cache was verified when written; a pinned checksum is still enforced on every use.
        if expected:
            verify_checksum(dest, expected)
        return dest, False
    if not expected:
        expected = parse_checksum(_fetch(f"{url}.sha256", timeout).decode("ascii", "replace"), f"{url}.sha256")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(_fetch(url, timeout))
        verify_checksum(tmp, expected, name)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest, True


def extract(tarball: Path, out_dir: Path, with_systemd: bool = False) -> dict[str, Path]:
    """Extract only the programs (and systemd files) from a release tarball; returns {member: path}."""
    wanted = list(PROGRAMS) + (list(SYSTEMD_FILES) if with_systemd else [])
    found: dict[str, Path] = {}
    try:
        with tarfile.open(tarball, "r:*") as tar:
            for member in tar.getmembers():
                # Members are <top>/<name>; anything else (links, devices, other paths) is ignored, never written.
                parts = member.name.split("/", 1)
                if len(parts) != 2 or parts[1] not in wanted or not member.isfile():
                    continue
                if parts[1] in found:
                    raise ReleaseError(f"{tarball}: more than one {parts[1]} inside; refusing an ambiguous tarball")
                src = tar.extractfile(member)
                if src is None:
                    continue
                dest = out_dir / parts[1]
                dest.parent.mkdir(parents=True, exist_ok=True)
                # A temp name of its own: forks unpacking the same cached release into this dir must not collide.
                fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
                tmp = Path(tmp_name)
                try:
                    with os.fdopen(fd, "wb") as fh:
                        shutil.copyfileobj(src, fh)
                    tmp.chmod(0o755 if parts[1] in PROGRAMS else 0o644)
                    tmp.replace(dest)
                finally:
                    tmp.unlink(missing_ok=True)
                found[parts[1]] = dest
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ReleaseError(f"{tarball}: not a readable release tarball: {exc}") from exc
    missing = [name for name in wanted if name not in found and name in PROGRAMS]
    if missing:
        raise ReleaseError(f"{tarball}: no {', '.join(missing)} inside")
    return found


def from_directory(src: Path, with_systemd: bool = False) -> dict[str, Path]:
    """Programs from a local build directory (NetBSD, custom builds): same names as inside a tarball."""
    found = {name: src / name for name in PROGRAMS if (src / name).is_file()}
    missing = [name for name in PROGRAMS if name not in found]
    if missing:
        raise ReleaseError(f"{src}: no {', '.join(missing)} in this directory")
    if with_systemd:
        found.update({name: src / name for name in SYSTEMD_FILES if (src / name).is_file()})
    return found


def version_from_name(name: str) -> str:
    """The version in a tailscale_<ver>_<arch>.tgz file or directory name, or ''."""
    match = re.match(r"^tailscale_(\d+\.\d+\.\d+)_[a-z0-9]+(?:\.tgz)?$", name)
    return match.group(1) if match else ""
