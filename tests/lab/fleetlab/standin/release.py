"""Build stand-in Tailscale release tarballs laid out like pkgs.tailscale.com.

    python -m fleetlab.standin.release build --out DIR --versions 1.80.3,1.82.0 \
        --arches arm,arm64,amd64,386,mipsle [--track stable]

writes DIR/<track>/tailscale_<ver>_<arch>.tgz, a bare-hex .sha256 beside each, and DIR/<track>/index.json,
the body the mirror answers `/<track>/?mode=json&os=linux` with. The output is deterministic: the same input
gives the same bytes (fixed mtimes and owners, sorted entries, gzip header without name or time).
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

STANDIN_DIR = Path(__file__).resolve().parent
ALL_ARCHES = ("386", "amd64", "arm", "arm64", "mips", "mipsle", "mips64", "mips64le", "riscv64", "geode")
DEFAULT_ARCHES = ("arm", "arm64", "amd64", "386", "mipsle")
DEFAULT_VERSIONS = ("1.80.3", "1.82.0")
# A fixed timestamp for every archive member (2025-01-01T00:00:00Z) keeps the tarballs reproducible.
FIXED_MTIME = 1735689600

# Copied from tailscale/tailscale cmd/tailscaled/tailscaled.service and tailscaled.defaults: the role that
# installs the unit must meet the file as the real tarball ships it.
SYSTEMD_SERVICE = """\
[Unit]
Description=Tailscale node agent
Documentation=https://tailscale.com/kb/
Wants=network-pre.target
After=network-pre.target

[Service]
EnvironmentFile=/etc/default/tailscaled
ExecStartPre=/usr/sbin/tailscaled --cleanup
ExecStart=/usr/sbin/tailscaled --state=/var/lib/tailscale/tailscaled.state \
--socket=/run/tailscale/tailscaled.sock --port $PORT $FLAGS
ExecStopPost=/usr/sbin/tailscaled --cleanup

Restart=on-failure

RuntimeDirectory=tailscale
RuntimeDirectoryMode=0755
StateDirectory=tailscale
StateDirectoryMode=0750
CacheDirectory=tailscale
CacheDirectoryMode=0750
Type=notify

[Install]
WantedBy=multi-user.target
"""

SYSTEMD_DEFAULTS = """\
# Set the port to listen on for incoming VPN packets.
# Remote nodes will automatically be informed about the new port number,
# but you might want to configure this in order to set external firewall
# settings.
PORT="41641"

# Extra flags you might want to pass to tailscaled.
FLAGS=""
"""


@dataclass(frozen=True)
class Built:
    """One built tarball."""

    version: str
    arch: str
    path: Path
    sha256: str


def version_key(version: str) -> tuple[int, ...]:
    """Sort key for dotted numeric versions (1.82.0 > 1.80.10 > 1.80.3)."""
    return tuple(int(part) for part in version.split("."))


def script(kind: str, version: str, arch: str) -> str:
    """The text of the `tailscale` or `tailscaled` stand-in for one version and CPU architecture."""
    if kind not in ("tailscale", "tailscaled"):
        raise ValueError(f"unknown stand-in program {kind!r}")
    if arch not in ALL_ARCHES:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ALL_ARCHES)}")
    version_key(version)  # refuses anything but a dotted numeric version
    header = (
        "#!/bin/sh\n"
        f"# {kind} {version} for linux/{arch}: STAND-IN (fleetlab lab), not Tailscale.\n"
        "# Built by fleetlab.standin.release for the fleetmesh.tailscale test lab; see docs/standin.md.\n"
        f"TS_STANDIN_VERSION={version}\n"
        f"TS_STANDIN_ARCH={arch}\n"
    )
    common = (STANDIN_DIR / "common.sh").read_text()
    body = (STANDIN_DIR / f"{kind}.sh").read_text()
    return f"{header}\n{common}\n{body}"


def _add(tar: tarfile.TarFile, name: str, data: bytes | None, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = mode
    if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def tarball_bytes(version: str, arch: str) -> bytes:
    """The .tgz for one version/arch, byte-for-byte reproducible."""
    top = f"tailscale_{version}_{arch}"
    members: list[tuple[str, bytes | None, int]] = [
        (f"{top}/", None, 0o755),
        (f"{top}/systemd/", None, 0o755),
        (f"{top}/systemd/tailscaled.defaults", SYSTEMD_DEFAULTS.encode(), 0o644),
        (f"{top}/systemd/tailscaled.service", SYSTEMD_SERVICE.encode(), 0o644),
        (f"{top}/tailscale", script("tailscale", version, arch).encode(), 0o755),
        (f"{top}/tailscaled", script("tailscaled", version, arch).encode(), 0o755),
    ]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data, mode in sorted(members, key=lambda m: m[0]):
            _add(tar, name, data, mode)
    packed = io.BytesIO()
    # filename="" and mtime=0 leave no name or time in the gzip header.
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return packed.getvalue()


def index_json(versions: list[str], arches: list[str]) -> dict[str, object]:
    """The `?mode=json&os=linux` answer: latest version and its tarball names per arch."""
    latest = max(versions, key=version_key)
    return {
        "TarballsVersion": latest,
        "Tarballs": {arch: f"tailscale_{latest}_{arch}.tgz" for arch in sorted(arches)},
        "Version": latest,
        "FleetlabStandin": "STAND-IN (fleetlab lab), not Tailscale",
    }


def _write_if_changed(path: Path, data: bytes) -> None:
    # Rewriting identical bytes would only churn mtimes (and caches keyed on them).
    if path.exists() and path.read_bytes() == data:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def build(out: Path, versions: list[str], arches: list[str], track: str = "stable") -> list[Built]:
    """Write every tarball, its .sha256 and the track's index.json under out/track/."""
    if track not in ("stable", "unstable"):
        raise ValueError(f"track must be stable or unstable, not {track!r}")
    if not versions or not arches:
        raise ValueError("need at least one version and one arch")
    track_dir = out / track
    track_dir.mkdir(parents=True, exist_ok=True)
    built: list[Built] = []
    for version in sorted(set(versions), key=version_key):
        for arch in sorted(set(arches)):
            data = tarball_bytes(version, arch)
            digest = hashlib.sha256(data).hexdigest()
            path = track_dir / f"tailscale_{version}_{arch}.tgz"
            _write_if_changed(path, data)
            _write_if_changed(path.with_name(path.name + ".sha256"), f"{digest}\n".encode())
            built.append(Built(version, arch, path, digest))
    index = json.dumps(index_json(list(versions), list(arches)), indent=2, sort_keys=True) + "\n"
    _write_if_changed(track_dir / "index.json", index.encode())
    return built


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetlab.standin.release", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build stand-in tarballs, .sha256 files and the index JSON")
    b.add_argument("--out", required=True, type=Path, help="mirror root directory (the track dir goes inside)")
    b.add_argument("--versions", default=",".join(DEFAULT_VERSIONS), type=_csv)
    b.add_argument("--arches", default=",".join(DEFAULT_ARCHES), type=_csv)
    b.add_argument("--track", default="stable", choices=("stable", "unstable"))
    args = parser.parse_args(argv)
    try:
        built = build(args.out, args.versions, args.arches, args.track)
    except ValueError as exc:
        print(f"release: {exc}", file=sys.stderr)
        return 2
    for item in built:
        print(f"{item.sha256}  {item.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
