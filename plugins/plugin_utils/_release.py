# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to the fleetmesh.tailscale collection: not a public API, may change without notice.

Controller-side Tailscale release handling: resolve a version (pinned, or the track's latest from
``<base>/<track>/?mode=json&os=linux``), download ``tailscale_<ver>_<arch>.tgz`` once into a cache dir, verify it
against the published ``.sha256`` (bare hex) or a pinned checksum, and extract only the programs (and, on request,
the ``systemd/`` files) once per tarball, with a gzip copy of each program for the transfer to the device. A
local tarball or directory (NetBSD and custom builds) takes the place of the download.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import io
import json
import os
import re
import tarfile
import tempfile
import typing as t
import zlib
from pathlib import Path

from ansible.module_utils.urls import ConnectionError as UrlConnectionError
from ansible.module_utils.urls import open_url
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._digest import sha256_file
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._progress import Progress

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
    buf = io.BytesIO()
    _fetch_to(url, buf, timeout, None)
    return buf.getvalue()


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


def _fetch_to(url: str, fh: t.BinaryIO, timeout: float, progress: t.Callable[[str], None] | None) -> None:
    """Stream url into fh; progress(line), when given, gets the lines of a _progress.Progress."""
    if not url.startswith(("http://", "https://")):
        raise ReleaseError(f"only http(s) release URLs are supported, got {url!r}")
    try:
        with open_url(url, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            meter = Progress(total, f"download {url.rsplit('/', 1)[-1]}", progress) if progress else None
            while block := resp.read(1 << 20):
                fh.write(block)
                if meter is not None:
                    meter.add(len(block))
            if meter is not None:
                meter.finish()
    except (OSError, UrlConnectionError) as exc:
        raise ReleaseError(f"cannot fetch {url}: {exc}") from exc


def download(
    base_url: str,
    track: str,
    version: str,
    arch: str,
    *,
    cache_dir: Path,
    checksum: str = "",
    timeout: float = 300.0,
    progress: t.Callable[[str], None] | None = None,
) -> tuple[Path, bool]:
    """The verified tarball in the cache, fetched only when not cached yet; returns (path, downloaded).
    progress(line) gets progress lines when the download takes a while."""
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
            _fetch_to(url, fh, timeout, progress)
        verify_checksum(tmp, expected, name)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest, True


STAMP = ".fleetmesh-extracted.json"
# gzip level of the programs' compressed copies: level 6 comes within 0.01 % of the release tarball's own size in a
# third of level 9's time (the real 1.98.10 amd64 programs: 36.42 MB against a 36.42 MB tarball).
GZIP_LEVEL = 6


def extract(tarball: Path, out_dir: Path, with_systemd: bool = False) -> dict[str, Path]:
    """Extract only the programs (and systemd files) from a release tarball; returns {member: path}.

    Each program also gets a gzip copy beside it (``<name>.gz``, see ``packed``): what install_files sends to a
    device that can unpack it. Once per tarball: a stamp in ``out_dir`` records the tarball (size, mtime) and what
    was written, so later calls (every host of a fleet) return the files without reading the tarball again; forks
    extracting the same release at once wait for the first (a lock file in ``out_dir``).
    """
    wanted = list(PROGRAMS) + (list(SYSTEMD_FILES) if with_systemd else [])
    key = _tarball_key(tarball)
    found = _stamped(out_dir, key, wanted)
    if found is not None:
        return found
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            found = _stamped(out_dir, key, wanted)
            if found is None:
                found = _extract(tarball, out_dir, wanted)
                _write_stamp(out_dir, key, wanted, found)
    except OSError as exc:
        raise ReleaseError(f"{tarball}: cannot extract into {out_dir}: {exc}") from exc
    return found


def packed(files: t.Mapping[str, Path]) -> dict[str, Path]:
    """The gzip copies extract() made of the programs in ``files``, by name (empty for a build directory)."""
    out = {}
    for name in PROGRAMS:
        if name in files:
            gz = files[name].with_name(files[name].name + ".gz")
            if gz.is_file():
                out[name] = gz
    return out


def _tarball_key(tarball: Path) -> list[int]:
    try:
        st = tarball.stat()
    except OSError as exc:
        raise ReleaseError(f"{tarball}: not a readable release tarball: {exc}") from exc
    return [st.st_size, st.st_mtime_ns]


def _stamped(out_dir: Path, key: list[int], wanted: list[str]) -> dict[str, Path] | None:
    """The files of an earlier extraction of the same tarball, when it covered ``wanted`` and all are still there
    with their sizes; else None."""
    try:
        stamp = json.loads((out_dir / STAMP).read_text())
        if stamp["tarball"] != key or not set(wanted) <= set(stamp["wanted"]):
            return None
        sizes: dict[str, int] = stamp["sizes"]
        found = {name: out_dir / name for name in wanted if name in sizes}
        if any(found[name].stat().st_size != sizes[name] for name in found):
            return None
        if any(not (out_dir / f"{name}.gz").is_file() for name in PROGRAMS):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found


def _write_stamp(out_dir: Path, key: list[int], wanted: list[str], found: dict[str, Path]) -> None:
    body = {"tarball": key, "wanted": wanted, "sizes": {name: p.stat().st_size for name, p in found.items()}}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{STAMP}.", dir=out_dir)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(body, fh)
        os.replace(tmp_name, out_dir / STAMP)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def _write_atomic(dest: Path, mode: int, src: t.IO[bytes], gz: Path | None) -> None:
    """Copy src to dest (and, when gz is set, a gzip copy to gz) through temp names renamed into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    tmp, gz_tmp = Path(tmp_name), Path(f"{tmp_name}.gz")
    try:
        with os.fdopen(fd, "wb") as fh, contextlib.ExitStack() as stack:
            zfh = None
            if gz is not None:
                zfh = stack.enter_context(gzip.GzipFile(gz_tmp, "wb", compresslevel=GZIP_LEVEL, mtime=0))
            for block in iter(lambda: src.read(1 << 20), b""):
                fh.write(block)
                if zfh is not None:
                    zfh.write(block)
        tmp.chmod(mode)
        if gz is not None:
            gz_tmp.replace(gz)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
        gz_tmp.unlink(missing_ok=True)


def _extract(tarball: Path, out_dir: Path, wanted: list[str]) -> dict[str, Path]:
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
                program = parts[1] in PROGRAMS
                gz = dest.with_name(dest.name + ".gz") if program else None
                _write_atomic(dest, 0o755 if program else 0o644, src, gz)
                found[parts[1]] = dest
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
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
