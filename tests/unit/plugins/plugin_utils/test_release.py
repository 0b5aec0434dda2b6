"""Controller-side release handling: checksums, the cache, latest-version lookup and extraction."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._release import (
    ReleaseError,
    download,
    extract,
    latest_version,
    packed,
    parse_checksum,
    version_from_name,
)


def tarball(version: str, arch: str, extra: dict[str, bytes] | None = None) -> bytes:
    top = f"tailscale_{version}_{arch}"
    members = {
        f"{top}/tailscale": b"#!/bin/sh\necho cli\n",
        f"{top}/tailscaled": b"#!/bin/sh\necho daemon\n",
        f"{top}/systemd/tailscaled.service": b"[Service]\n",
        f"{top}/systemd/tailscaled.defaults": b"PORT=41641\n",
    }
    members.update(extra or {})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


class Server:
    """A tiny pkgs.tailscale.com-shaped server on loopback that counts requests per path."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.hits: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                del args

            def do_GET(self) -> None:  # noqa: N802 - name fixed by the base class
                outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                body = outer.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.end_headers()
                self.wfile.write(body or b"")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mirror() -> Iterator[Server]:
    data = tarball("1.82.0", "arm")
    server = Server(
        {
            "/stable/tailscale_1.82.0_arm.tgz": data,
            "/stable/tailscale_1.82.0_arm.tgz.sha256": hashlib.sha256(data).hexdigest().encode() + b"\n",
            "/stable/tailscale_1.80.3_arm.tgz": data,
            "/stable/tailscale_1.80.3_arm.tgz.sha256": b"0" * 64,
            "/stable/?mode=json&os=linux": json.dumps({"TarballsVersion": "1.82.0"}).encode(),
            "/unstable/?mode=json&os=linux": b"<html>not json</html>",
        }
    )
    yield server
    server.close()


def test_parse_checksum_forms() -> None:
    digest = "a" * 64
    assert parse_checksum(f"{digest}\n", "x") == digest
    assert parse_checksum(f"{digest.upper()}  tailscale_1.82.0_arm.tgz\n", "x") == digest
    with pytest.raises(ReleaseError, match="not a sha256 checksum"):
        parse_checksum("<html>404</html>", "x")


def test_download_once_then_cached(mirror: Server, tmp_path: Path) -> None:
    path, fetched = download(mirror.url, "stable", "1.82.0", "arm", cache_dir=tmp_path)
    assert fetched and path.is_file()
    again, fetched_again = download(mirror.url, "stable", "1.82.0", "arm", cache_dir=tmp_path)
    assert again == path and not fetched_again
    assert mirror.hits["/stable/tailscale_1.82.0_arm.tgz"] == 1


def test_published_checksum_mismatch_is_refused_and_not_cached(mirror: Server, tmp_path: Path) -> None:
    with pytest.raises(ReleaseError, match="checksum mismatch for .*: expected 0{64}, got [0-9a-f]{64}; refusing"):
        download(mirror.url, "stable", "1.80.3", "arm", cache_dir=tmp_path)
    assert not list(tmp_path.rglob("*.tgz*"))


def test_pinned_checksum_wins_and_is_checked_on_cached_copies(mirror: Server, tmp_path: Path) -> None:
    with pytest.raises(ReleaseError, match="checksum mismatch"):
        download(mirror.url, "stable", "1.82.0", "arm", cache_dir=tmp_path, checksum="b" * 64)
    assert "/stable/tailscale_1.82.0_arm.tgz.sha256" not in mirror.hits
    download(mirror.url, "stable", "1.82.0", "arm", cache_dir=tmp_path)
    with pytest.raises(ReleaseError, match="checksum mismatch"):
        download(mirror.url, "stable", "1.82.0", "arm", cache_dir=tmp_path, checksum="b" * 64)


def test_latest_version_from_the_index(mirror: Server) -> None:
    assert latest_version(mirror.url, "stable") == "1.82.0"
    with pytest.raises(ReleaseError, match="not a release index"):
        latest_version(mirror.url, "unstable")


def test_missing_release_is_a_clear_error(mirror: Server, tmp_path: Path) -> None:
    with pytest.raises(
        ReleaseError, match=r"cannot fetch .*/stable/tailscale_9\.9\.9_arm\.tgz\.sha256: HTTP Error 404"
    ):
        download(mirror.url, "stable", "9.9.9", "arm", cache_dir=tmp_path)


def test_extract_only_the_programs(tmp_path: Path) -> None:
    src = tmp_path / "t.tgz"
    src.write_bytes(
        tarball("1.82.0", "arm", {"tailscale_1.82.0_arm/../evil": b"x", "tailscale_1.82.0_arm/README": b"x"})
    )
    files = extract(src, tmp_path / "out")
    assert sorted(files) == ["tailscale", "tailscaled"]
    assert (tmp_path / "out/tailscaled").read_bytes() == b"#!/bin/sh\necho daemon\n"
    assert not (tmp_path / "evil").exists()
    with_systemd = extract(src, tmp_path / "out2", with_systemd=True)
    assert "systemd/tailscaled.service" in with_systemd


def test_two_programs_of_the_same_name_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "t.tgz"
    src.write_bytes(tarball("1.82.0", "arm", {"other/tailscaled": b"x"}))
    with pytest.raises(ReleaseError, match="more than one tailscaled inside"):
        extract(src, tmp_path / "out")


def test_truncated_tarball_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "t.tgz"
    src.write_bytes(tarball("1.82.0", "arm")[:100])
    with pytest.raises(ReleaseError, match="not a readable release tarball"):
        extract(src, tmp_path / "out")


@pytest.mark.parametrize(
    ("name", "version"),
    [("tailscale_1.82.0_arm.tgz", "1.82.0"), ("tailscale_1.80.3_mips64le", "1.80.3"), ("custom.tgz", "")],
)
def test_version_from_name(name: str, version: str) -> None:
    assert version_from_name(name) == version


def test_parallel_forks_extract_into_the_same_cache_dir(tmp_path: Path) -> None:
    """Two hosts of one arch (forks) unpack the same cached release at once: each must get the programs."""
    src = tmp_path / "t.tgz"
    src.write_bytes(tarball("1.82.0", "arm", {"tailscale_1.82.0_arm/pad": b"p" * 200_000}))
    errors: list[Exception] = []

    def unpack() -> None:
        try:
            for _round in range(20):
                extract(src, tmp_path / "out")
        except ReleaseError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=unpack) for _fork in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]
    assert (tmp_path / "out/tailscaled").read_bytes() == b"#!/bin/sh\necho daemon\n"
    # The programs, their gzip copies, the stamp and the lock: no fork's temp file is left behind.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".fleetmesh-extracted.json",
        ".lock",
        "tailscale",
        "tailscale.gz",
        "tailscaled",
        "tailscaled.gz",
    ]


def test_extract_makes_a_gzip_copy_of_each_program_and_packed_finds_them(tmp_path: Path) -> None:
    src = tmp_path / "t.tgz"
    src.write_bytes(tarball("1.82.0", "arm"))
    files = extract(src, tmp_path / "out", with_systemd=True)
    copies = packed(files)
    assert sorted(copies) == ["tailscale", "tailscaled"]  # not the systemd files
    for name, gz in copies.items():
        assert gzip.decompress(gz.read_bytes()) == files[name].read_bytes()
    # A build directory has no copies: its programs travel as they are.
    assert packed({"tailscale": tmp_path / "bin/tailscale", "tailscaled": tmp_path / "bin/tailscaled"}) == {}


def test_a_second_extract_of_the_same_tarball_does_not_read_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every host of a fleet resolves the release: only the first one unpacks (and compresses) it."""
    src = tmp_path / "t.tgz"
    src.write_bytes(tarball("1.82.0", "arm"))
    first = extract(src, tmp_path / "out")
    newer = tarball("1.82.0", "arm", {"tailscale_1.82.0_arm/tailscale": b"#!/bin/sh\necho new cli\n"})
    opened: list[str] = []
    real_open = tarfile.open

    def counting_open(*args: object, **kwargs: object) -> tarfile.TarFile:
        opened.append(str(args[0] if args else kwargs.get("name")))
        return real_open(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tarfile, "open", counting_open)
    assert extract(src, tmp_path / "out") == first and opened == []
    # More members wanted than the stamp covers, a changed tarball, or a file gone: extracted again.
    assert "systemd/tailscaled.service" in extract(src, tmp_path / "out", with_systemd=True) and len(opened) == 1
    src.write_bytes(newer)
    assert extract(src, tmp_path / "out")["tailscale"].read_bytes() == b"#!/bin/sh\necho new cli\n"
    assert len(opened) == 2
    (tmp_path / "out/tailscaled.gz").unlink()
    extract(src, tmp_path / "out")
    assert len(opened) == 3 and (tmp_path / "out/tailscaled.gz").is_file()
