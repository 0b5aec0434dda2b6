"""Real Tailscale release tarballs for the lab mirror, built from the tailscale.com Go module.

    python -m fleetlab.tailscale_release build --out DIR [--versions 1.96.5,1.98.10] [--arches amd64,arm]

For each version and arch: `tailscale` and `tailscaled` built by fleetlab.gobuild (CGO_ENABLED=0, -trimpath,
GOARM=5 for arm) with the version stamped as tailscale's build_dist.sh does (`-X tailscale.com/version.shortStamp=V
-X tailscale.com/version.longStamp=V-tCOMMIT`, plus the commit), so `tailscale version` prints the plain release
version on its first line as official builds do. Packed exactly as release/dist/unixpkgs lays out the official
tarballs: `tailscale_<v>_<arch>/{tailscaled,tailscale,systemd/<the unit files of cmd/tailscaled of that version>}`,
modes 0755/0644, owner root; a bare-hex `.sha256` beside each and `<track>/index.json` for `?mode=json`.

These are real builds of the released source, not the official binaries: no signature, our Go toolchain
(upstream builds with its own fork of Go), and the tarball bytes differ. See docs/lab.md.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from fleetlab import gobuild
from fleetlab.state import CACHE_DIR, LabError

MODULE = "tailscale.com"
# The two pinned releases the lab serves: an older one (upgrades start here) and the newer one (the collection's
# tests pin it). Both inside headscale v0.29's tested client range (v1.80-v1.98). Change them here only.
OLD_VERSION = "1.96.5"
NEW_VERSION = "1.98.10"
VERSIONS = (OLD_VERSION, NEW_VERSION)
# The arches of the lab's devices: amd64 (sysvinit, systemd, native kobo-shaped boxes) and arm (kobo, quecopen
# under qemu-user; GOARM=5 as the official arm tarballs).
ARCHES = ("amd64", "arm")
RELEASES_DIR = CACHE_DIR / "tailscale-releases"
# Files of cmd/tailscaled that release/dist/unixpkgs puts under systemd/ (the last two from v1.98 on).
SYSTEMD_FILES = (
    "tailscaled.service",
    "tailscaled.defaults",
    "tailscale-online.target",
    "tailscale-wait-online.service",
)
FIXED_MTIME = 1735689600  # reproducible tarballs (2025-01-01T00:00:00Z)


@dataclass(frozen=True)
class Built:
    version: str
    arch: str
    path: Path
    sha256: str


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def ldflags(version: str, commit: str) -> str:
    long = f"{version}-t{commit[:9]}" if commit else version
    flags = f"-X tailscale.com/version.shortStamp={version} -X tailscale.com/version.longStamp={long}"
    if commit:
        flags += f" -X tailscale.com/version.gitCommitStamp={commit}"
    return flags


def binaries(version: str, arch: str) -> dict[str, Path]:
    """The built `tailscale` and `tailscaled` of one release (cached)."""
    _src, commit = gobuild.module_dir(MODULE, version)
    flags = ldflags(version, commit)
    return {name: gobuild.binary(MODULE, version, f"cmd/{name}", arch, flags) for name in ("tailscale", "tailscaled")}


def _add(tar: tarfile.TarFile, name: str, data: bytes | None, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = mode
    if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def tarball(version: str, arch: str, out: Path) -> Path:
    """Write tailscale_<v>_<arch>.tgz into out (by rename) unless it is there already; returns its path."""
    path = out / f"tailscale_{version}_{arch}.tgz"
    if path.is_file() and path.with_name(path.name + ".sha256").is_file():
        return path
    bins = binaries(version, arch)
    src, _commit = gobuild.module_dir(MODULE, version)
    top = f"tailscale_{version}_{arch}"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        _add(tar, f"{top}/", None, 0o755)
        _add(tar, f"{top}/tailscaled", bins["tailscaled"].read_bytes(), 0o755)
        _add(tar, f"{top}/tailscale", bins["tailscale"].read_bytes(), 0o755)
        _add(tar, f"{top}/systemd/", None, 0o755)
        for name in SYSTEMD_FILES:
            unit = src / "cmd" / "tailscaled" / name
            if unit.is_file():
                _add(tar, f"{top}/systemd/{name}", unit.read_bytes(), 0o644)
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0, compresslevel=6) as gz:
        gz.write(raw.getvalue())
    data = packed.getvalue()
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    sha = path.with_name(path.name + ".sha256")
    sha.with_name(sha.name + ".tmp").write_text(hashlib.sha256(data).hexdigest() + "\n")
    sha.with_name(sha.name + ".tmp").replace(sha)
    return path


def index_json(versions: list[str], arches: list[str]) -> dict[str, object]:
    """The `?mode=json` answer of pkgs.tailscale.com: the latest version and its tarball per arch."""
    latest = max(versions, key=version_key)
    return {
        "TarballsVersion": latest,
        "Tarballs": {arch: f"tailscale_{latest}_{arch}.tgz" for arch in sorted(arches)},
        "Version": latest,
    }


def build(
    out: Path = RELEASES_DIR, versions: list[str] | None = None, arches: list[str] | None = None, track: str = "stable"
) -> list[Built]:
    """Every tarball, its .sha256 and the track's index.json under out/track/ (each tarball built once)."""
    versions = list(versions or VERSIONS)
    arches = list(arches or ARCHES)
    if track not in ("stable", "unstable"):
        raise LabError(f"track must be stable or unstable, not {track!r}")
    track_dir = out / track
    built = []
    for version in sorted(set(versions), key=version_key):
        for arch in sorted(set(arches)):
            path = tarball(version, arch, track_dir)
            digest = path.with_name(path.name + ".sha256").read_text().strip()
            built.append(Built(version, arch, path, digest))
    index = json.dumps(index_json(versions, arches), indent=2, sort_keys=True) + "\n"
    index_path = track_dir / "index.json"
    if not index_path.is_file() or index_path.read_text() != index:
        index_path.with_name("index.json.tmp").write_text(index)
        index_path.with_name("index.json.tmp").replace(index_path)
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetlab.tailscale_release", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the tarballs (cached) and print one line per tarball")
    b.add_argument("--out", type=Path, default=RELEASES_DIR)
    b.add_argument("--versions", default=",".join(VERSIONS))
    b.add_argument("--arches", default=",".join(ARCHES))
    b.add_argument("--track", default="stable")
    args = parser.parse_args(argv)
    try:
        for item in build(args.out, args.versions.split(","), args.arches.split(","), args.track):
            print(f"{item.path}\t{item.path.stat().st_size}\t{item.sha256}")
    except LabError as err:
        print(f"fleetlab: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
