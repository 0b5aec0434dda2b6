"""The stand-in release builder: real tarball layout, deterministic bytes, bare-hex .sha256, pkgs index JSON."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

from fleetlab.standin import release

VERSIONS = ["1.80.3", "1.82.0"]
ARCHES = ["arm", "arm64", "amd64", "386", "mipsle"]


def test_build_writes_real_layout_and_sha256(tmp_path: Path) -> None:
    built = release.build(tmp_path, VERSIONS, ARCHES)
    assert len(built) == len(VERSIONS) * len(ARCHES)
    for item in built:
        assert item.path == tmp_path / "stable" / f"tailscale_{item.version}_{item.arch}.tgz"
        sha_text = (item.path.parent / (item.path.name + ".sha256")).read_text()
        assert sha_text.strip() == hashlib.sha256(item.path.read_bytes()).hexdigest()
        assert len(sha_text.strip()) == 64
        with tarfile.open(item.path) as tar:
            top = f"tailscale_{item.version}_{item.arch}"
            names = set(tar.getnames())
            for member in ("tailscale", "tailscaled", "systemd/tailscaled.service", "systemd/tailscaled.defaults"):
                assert f"{top}/{member}" in names
            daemon = tar.getmember(f"{top}/tailscaled")
            assert daemon.mode & 0o111, "binaries are executable"
            text = tar.extractfile(daemon).read().decode()
            assert f"TS_STANDIN_VERSION={item.version}\n" in text
            assert f"TS_STANDIN_ARCH={item.arch}\n" in text
            assert "STAND-IN (fleetlab lab), not Tailscale" in text
            unit = tar.extractfile(f"{top}/systemd/tailscaled.service").read().decode()
            assert "ExecStart=/usr/sbin/tailscaled --state=/var/lib/tailscale/tailscaled.state" in unit


def test_build_is_byte_for_byte_deterministic(tmp_path: Path) -> None:
    a = release.build(tmp_path / "a", VERSIONS, ARCHES)
    b = release.build(tmp_path / "b", list(reversed(VERSIONS)), list(reversed(ARCHES)))
    assert [x.sha256 for x in a] == [x.sha256 for x in b]
    assert (tmp_path / "a/stable/index.json").read_bytes() == (tmp_path / "b/stable/index.json").read_bytes()
    # gzip header carries neither a name nor a time.
    raw = a[0].path.read_bytes()
    assert raw[4:8] == b"\0\0\0\0"
    assert not raw[3] & 0x08, "FNAME flag must be clear"
    # A rebuild leaves existing files untouched (no mtime churn for caches).
    before = a[0].path.stat().st_mtime_ns
    release.build(tmp_path / "a", VERSIONS, ARCHES)
    assert a[0].path.stat().st_mtime_ns == before


def test_tar_members_are_sorted_with_fixed_owner_and_time(tmp_path: Path) -> None:
    data = release.tarball_bytes("1.80.3", "arm")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == {(0, 0, "", "", release.FIXED_MTIME)}


def test_index_json_names_latest_version_and_tarballs(tmp_path: Path) -> None:
    release.build(tmp_path, ["1.80.3", "1.82.0", "1.80.10"], ARCHES)
    index = json.loads((tmp_path / "stable/index.json").read_text())
    assert index["TarballsVersion"] == "1.82.0"
    assert index["Tarballs"]["arm"] == "tailscale_1.82.0_arm.tgz"
    assert sorted(index["Tarballs"]) == sorted(ARCHES)


def test_cli_build_and_bad_input(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "fleetlab.standin.release", "build", "--out", str(tmp_path)]
    ok = subprocess.run(
        [*cmd, "--versions", "1.80.3", "--arches", "amd64"], check=False, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "stable/tailscale_1.80.3_amd64.tgz").is_file()
    bad = subprocess.run([*cmd, "--arches", "sparc"], check=False, capture_output=True, text=True)
    assert bad.returncode == 2
    assert "unknown arch 'sparc'" in bad.stderr
