"""The lab mirror serves the pkgs.tailscale.com layout and counts requests."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetlab import mirror
from fleetlab.standin import release


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    release.build(tmp_path, ["1.80.3", "1.82.0"], ["arm", "amd64"])
    server = mirror.serve_in_thread(tmp_path)
    yield server.url, tmp_path
    server.shutdown()
    server.server_close()


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def stats(base: str) -> dict:
    return json.loads(get(f"{base}/_fleetlab/stats"))


def test_tarball_and_sha256_match(served: tuple[str, Path]) -> None:
    base, _unused = served
    body = get(f"{base}/stable/tailscale_1.82.0_arm.tgz")
    published = get(f"{base}/stable/tailscale_1.82.0_arm.tgz.sha256").decode().strip()
    assert hashlib.sha256(body).hexdigest() == published


def test_index_json_like_pkgs(served: tuple[str, Path]) -> None:
    base, _unused = served
    index = json.loads(get(f"{base}/stable/?mode=json&os=linux"))
    assert index["TarballsVersion"] == "1.82.0"
    assert index["Tarballs"]["amd64"] == "tailscale_1.82.0_amd64.tgz"
    assert b"tailscale_1.80.3_arm.tgz" in get(f"{base}/stable/")


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
    tgz = "/stable/tailscale_1.80.3_amd64.tgz"
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


def test_command_line_server_and_stats_file(tmp_path: Path) -> None:
    import socket

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
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "mirror did not come up"
                time.sleep(0.1)
        assert index["TarballsVersion"] == max(release.DEFAULT_VERSIONS, key=release.version_key)
        assert json.loads(stats_file.read_text())["paths"]["/stable/"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0
