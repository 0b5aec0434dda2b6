"""The lab mirror serves the pkgs.tailscale.com layout and counts requests.

Its HTTP behaviour (checksums, index, 404s, counters) is tested on small tarballs this module makes in the official
layout: a fixture for the file server, not an imitation of Tailscale (nothing runs the placeholder programs inside
them). The mirror serving the lab's real builds (fleetlab.tailscale_release), as `fleetlab mirror start` does, is
tested on those builds.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetlab import mirror, tailscale_release
from fleetlab.state import LabError

OLD, NEW = tailscale_release.OLD_VERSION, tailscale_release.NEW_VERSION
ARCHES = list(tailscale_release.ARCHES)
# e_machine of the ELF header (bytes 18-19, little-endian) per release arch.
ELF_MACHINE = {"amd64": 62, "arm": 40}


def small_tarball(version: str, arch: str) -> bytes:
    """A release tarball in the official layout whose programs are placeholder text (a file-server fixture)."""
    top = f"tailscale_{version}_{arch}"
    members: list[tuple[str, bytes | None, int]] = [
        (f"{top}/", None, 0o755),
        (f"{top}/tailscaled", f"placeholder tailscaled {version} {arch}\n".encode(), 0o755),
        (f"{top}/tailscale", f"placeholder tailscale {version} {arch}\n".encode(), 0o755),
        (f"{top}/systemd/", None, 0o755),
        (f"{top}/systemd/tailscaled.service", b"[Service]\n", 0o644),
        (f"{top}/systemd/tailscaled.defaults", b"PORT=41641\n", 0o644),
    ]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    track = tmp_path / "stable"
    track.mkdir()
    for version in (OLD, NEW):
        for arch in ARCHES:
            data = small_tarball(version, arch)
            (track / f"tailscale_{version}_{arch}.tgz").write_bytes(data)
            (track / f"tailscale_{version}_{arch}.tgz.sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")
    (track / "index.json").write_text(json.dumps(tailscale_release.index_json([OLD, NEW], ARCHES)))
    server = mirror.serve_in_thread(tmp_path)
    yield server.url, tmp_path
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def real_releases() -> Path:
    """The lab's real builds (cached in /var/cache/fleetlab/tailscale-releases; `fleetlab build` makes them)."""
    if os.geteuid() != 0:
        pytest.skip("the lab's real releases are built and cached as root (`fleetlab build`)")
    try:
        tailscale_release.build()
    except LabError as err:
        pytest.skip(f"the lab's real releases cannot be built here: {err}")
    return tailscale_release.RELEASES_DIR


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read()


def stats(base: str) -> dict:
    return json.loads(get(f"{base}/_fleetlab/stats"))


def test_tarball_and_sha256_match(served: tuple[str, Path]) -> None:
    base, _unused = served
    body = get(f"{base}/stable/tailscale_{NEW}_arm.tgz")
    published = get(f"{base}/stable/tailscale_{NEW}_arm.tgz.sha256").decode()
    assert published == hashlib.sha256(body).hexdigest() + "\n"  # bare hex, as pkgs.tailscale.com publishes it


def test_index_json_like_pkgs(served: tuple[str, Path]) -> None:
    base, _unused = served
    index = json.loads(get(f"{base}/stable/?mode=json&os=linux"))
    assert index["TarballsVersion"] == NEW
    assert index["Tarballs"]["amd64"] == f"tailscale_{NEW}_amd64.tgz"
    assert f"tailscale_{OLD}_arm.tgz".encode() in get(f"{base}/stable/")


def test_missing_files_and_escapes_are_404(served: tuple[str, Path]) -> None:
    base, _unused = served
    for path in (
        "/stable/tailscale_9.9.9_arm.tgz",
        "/stable/../stable/index.json",
        "/etc/passwd",
        "/stable/index.json",
    ):
        with pytest.raises(urllib.error.HTTPError) as err:
            get(base + path)
        assert err.value.code == 404, path


def test_stats_count_downloads_per_path_and_reset(served: tuple[str, Path]) -> None:
    base, _unused = served
    tgz = f"/stable/tailscale_{OLD}_amd64.tgz"
    get(base + tgz)
    get(base + tgz)
    get(f"{base}/stable/?mode=json&os=linux")
    counts = stats(base)
    assert counts["paths"][tgz] == 2
    assert counts["targets"]["/stable/?mode=json&os=linux"] == 1
    assert "/_fleetlab/stats" not in counts["paths"], "reading the stats is not a request to count"
    req = urllib.request.Request(f"{base}/_fleetlab/stats/reset", method="POST")
    urllib.request.urlopen(req, timeout=10).read()
    assert stats(base)["paths"] == {}


@pytest.mark.parametrize("arch", ARCHES)
def test_real_release_is_served_whole_in_the_official_layout(real_releases: Path, arch: str) -> None:
    server = mirror.serve_in_thread(real_releases)
    try:
        index = json.loads(get(f"{server.url}/stable/?mode=json&os=linux"))
        name = index["Tarballs"][arch]
        body = get(f"{server.url}/stable/{name}")
        published = get(f"{server.url}/stable/{name}.sha256").decode().strip()
    finally:
        server.shutdown()
        server.server_close()
    assert index["TarballsVersion"] == NEW and name == f"tailscale_{NEW}_{arch}.tgz"
    assert hashlib.sha256(body).hexdigest() == published
    top = f"tailscale_{NEW}_{arch}"
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        members = {m.name.rstrip("/"): m for m in tar.getmembers()}
        daemon = tar.extractfile(members[f"{top}/tailscaled"])
        assert daemon is not None
        header = daemon.read(20)
    assert set(members) == {top, f"{top}/tailscale", f"{top}/tailscaled", f"{top}/systemd"} | {
        f"{top}/systemd/{unit}" for unit in tailscale_release.SYSTEMD_FILES
    }
    assert members[f"{top}/tailscaled"].mode == 0o755 and members[f"{top}/systemd/tailscaled.service"].mode == 0o644
    # The program is the real build for that CPU: an ELF whose machine is the arch's.
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == ELF_MACHINE[arch]


def test_command_line_server_builds_the_index_and_writes_the_stats_file(real_releases: Path, tmp_path: Path) -> None:
    # A tree that already holds the lab's real tarballs (links into the cache), so --build writes only the index,
    # as on a machine where the releases are built: the tarballs are never rebuilt.
    track = tmp_path / "root" / "stable"
    track.mkdir(parents=True)
    for path in (real_releases / "stable").glob("tailscale_*.tgz*"):
        (track / path.name).symlink_to(path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stats_file = tmp_path / "stats.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleetlab.mirror",
            "--dir",
            str(tmp_path / "root"),
            "--listen",
            f"127.0.0.1:{port}",
            "--build",
            "--stats-file",
            str(stats_file),
            "--quiet",
        ],
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                index = json.loads(get(f"{base}/stable/?mode=json&os=linux"))
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "mirror did not come up"
                time.sleep(0.1)
        assert index == tailscale_release.index_json(list(tailscale_release.VERSIONS), ARCHES)
        # The counters are written after the response is sent: give the server a moment.
        while not stats_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert json.loads(stats_file.read_text())["paths"]["/stable/"] == 1
        assert all(path.is_symlink() for path in track.glob("*.tgz")), "--build rebuilt a cached tarball"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0
