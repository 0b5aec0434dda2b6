"""Progress lines of long transfers (_progress.Progress) on a fake clock, and the places that feed it bytes: the
telnet inline put (Chunker batches), the one-shot HTTP server the device pulls from, the adb sync push, the session
daemon's reply stream and the release download."""

from __future__ import annotations

import functools
import json
import os
import socket
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _progress, _release, _session_client, _transfer
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._adb_client import AdbClient
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._http_push import OneShotServer
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._progress import MIB, Progress
from shell_harness import PtyShell, session_on
from test_adb_sync import FakeServer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def meter(total: int | None, **kwargs: float) -> tuple[Progress, Clock, list[str]]:
    clock, lines = Clock(), []
    return Progress(total, "put tailscaled", lines.append, clock=clock, **kwargs), clock, lines


def test_a_quick_transfer_prints_nothing() -> None:
    progress, clock, lines = meter(30 * MIB)
    for _step in range(30):
        clock.now += 0.09
        progress.add(MIB)
    assert progress.done == 30 * MIB
    progress.finish()
    assert lines == []


def test_first_line_after_three_seconds_then_one_per_interval() -> None:
    progress, clock, lines = meter(30 * MIB, every=5.0)
    times = []
    for step in range(1, 301):  # 0.1 MiB per 0.1 s: 1 MiB/s for 30 s
        clock.now = 100.0 + step / 10
        before = len(lines)
        progress.update(step * MIB // 10)
        if len(lines) > before:
            times.append(round(clock.now - 100.0, 1))
    assert times[0] == 3.0
    assert all(round(b - a, 1) == 5.0 for a, b in zip(times, times[1:], strict=False))
    assert len(times) == 6  # 3, 8, 13, 18, 23, 28 s
    assert lines[0] == "put tailscaled: 3.0/30.0 MiB (10%), 1.0 MiB/s, 27 s left"
    progress.finish()
    assert lines[-1] == "put tailscaled: 30.0 MiB done in 30 s (1.0 MiB/s)"
    progress.finish()  # once
    assert len(lines) == 7


def test_rate_and_time_left_come_from_the_average_so_far() -> None:
    progress, clock, lines = meter(100 * MIB)
    clock.now += 4.0
    progress.update(2 * MIB)  # 0.5 MiB/s: 98 MiB left is 196 s
    assert lines == ["put tailscaled: 2.0/100.0 MiB (2%), 0.5 MiB/s, 3 min 16 s left"]


def test_no_bytes_yet_is_waiting_not_a_rate() -> None:
    progress, clock, lines = meter(10 * MIB)
    clock.now += 3.5
    progress.update(0)
    assert lines == ["put tailscaled: 0.0/10.0 MiB (0%), waiting for data"]


def test_unknown_total_prints_bytes_and_rate_only() -> None:
    progress, clock, lines = meter(None)
    clock.now += 4.0
    progress.add(8 * MIB)
    clock.now += 4.0
    progress.finish()
    assert lines == ["put tailscaled: 8.0 MiB, 2.0 MiB/s", "put tailscaled: 8.0 MiB done in 8 s (1.0 MiB/s)"]


def test_zero_size_file_never_divides_by_zero() -> None:
    progress, clock, lines = meter(0)
    clock.now += 10.0
    progress.update(0)
    progress.finish()
    assert lines == ["put tailscaled: 0.0/0.0 MiB (100%), waiting for data", "put tailscaled: 0.0 MiB done in 10 s"]


def test_unacked_is_zero_for_a_socket_that_cannot_tell() -> None:
    left, right = socket.socketpair()  # unix sockets: no TCP send queue to ask about
    with left, right:
        assert _progress.unacked(left) == 0


# --------------------------------------------------------------------------------------------- where bytes move


def eager(monkeypatch: pytest.MonkeyPatch, module: object) -> None:
    """Every update prints: the places that feed Progress are checked without waiting seconds."""
    monkeypatch.setattr(module, "Progress", functools.partial(Progress, first_after=0.0, every=0.0))


def amounts(lines: list[str]) -> list[float]:
    return [float(line.split(": ", 1)[1].split("/", 1)[0]) for line in lines if "done in" not in line]


def test_inline_put_reports_what_the_device_took_then_done(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    eager(monkeypatch, _transfer)
    monkeypatch.setattr(_transfer, "_watch", functools.partial(_transfer._watch, every=0.01))

    class SlowChunker(_transfer.Chunker):
        """A batch every 30 ms, as over a slow link: the watcher (every 10 ms) sees the put part-way, however fast
        the pty takes the ~13 batches (CI once saw the whole put pass between two polls)."""

        def __call__(self) -> bytes | None:
            time.sleep(0.03)
            return super().__call__()

    monkeypatch.setattr(_transfer, "Chunker", SlowChunker)
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(600 * 1024))
    session = session_on(PtyShell(b"$ ", []))
    lines: list[str] = []
    try:
        assert session.put(str(src), str(tmp_path / "dest.bin"), "base64", progress=lines.append) == "base64"
    finally:
        session.close()
    assert (tmp_path / "dest.bin").read_bytes() == src.read_bytes()
    assert len(lines) >= 3, lines
    assert amounts(lines) == sorted(amounts(lines))
    assert all(float(amount) <= 0.6 for amount in amounts(lines))
    assert lines[-1].startswith("put dest.bin: 0.6 MiB done in ")


def test_http_pull_reports_bytes_the_client_took(tmp_path: Path) -> None:
    src = tmp_path / "tailscaled"
    src.write_bytes(os.urandom(3 * 1024 * 1024))
    server = OneShotServer(str(src), "127.0.0.1")
    seen: list[int] = []
    server.on_progress = seen.append
    try:
        with urllib.request.urlopen(server.url, timeout=30) as resp:  # noqa: S310  # our own loopback server
            got = b""
            while block := resp.read(256 * 1024):
                got += block
                time.sleep(0.01)
    finally:
        server.close()
    assert got == src.read_bytes()
    assert server.served
    assert all(0 <= count <= src.stat().st_size for count in seen)  # Progress keeps the highest so far
    assert len(seen) >= 12  # one per 256 KiB step
    assert seen[-1] == src.stat().st_size


def test_http_pull_without_progress_is_one_sendfile(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x" * 100_000)
    server = OneShotServer(str(src), "127.0.0.1")
    try:
        with urllib.request.urlopen(server.url, timeout=30) as resp:  # noqa: S310  # our own loopback server
            assert resp.read() == src.read_bytes()
    finally:
        server.close()
    assert server.served


def test_adb_sync_push_reports_what_the_server_took(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ADB_SERVER_SOCKET", raising=False)
    adb = FakeServer()
    src = tmp_path / "src"
    src.write_bytes(os.urandom(2 * 1024 * 1024 + 5))
    seen: list[int] = []
    AdbClient("/nonexistent/adb", "ABC", adb.port, timeout=5).push(str(src), "/tmp/dst", seen.append)
    assert adb.files["/tmp/dst"] == src.read_bytes()
    assert len(seen) >= 30  # one per 64 KiB write
    assert all(0 <= count <= src.stat().st_size for count in seen)


def test_session_client_prints_progress_lines_before_the_reply(tmp_path: Path) -> None:
    path = str(tmp_path / "sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    requests: list[dict[str, object]] = []

    def daemon() -> None:
        conn = listener.accept()[0]
        with conn:
            requests.append(json.loads(conn.makefile("rb").readline()))
            for line in ("put x: 1.0/2.0 MiB (50%), 1.0 MiB/s, 1 s left", "put x: 2.0 MiB done in 2 s (1.0 MiB/s)"):
                conn.sendall(json.dumps({"progress": line}).encode() + b"\n")
            conn.sendall(b'{"method": "http", "log": [], "len": 0}\n')

    thread = threading.Thread(target=daemon)
    thread.start()
    shown: list[str] = []
    reply, payload = _session_client.call(path, {"op": "put", "progress": True}, shown.append)
    thread.join()
    listener.close()
    assert reply == {"method": "http", "log": [], "len": 0}
    assert payload == b""
    assert shown == ["put x: 1.0/2.0 MiB (50%), 1.0 MiB/s, 1 s left", "put x: 2.0 MiB done in 2 s (1.0 MiB/s)"]
    assert requests == [{"op": "put", "progress": True}]


def test_release_download_streams_with_progress(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    eager(monkeypatch, _release)
    body = os.urandom(3 * 1024 * 1024)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  # http.server's name
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    lines: list[str] = []
    try:
        with (tmp_path / "out").open("wb") as fh:
            _release._fetch_to(f"http://127.0.0.1:{httpd.server_address[1]}/t.tgz", fh, 30, lines.append)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert (tmp_path / "out").read_bytes() == body
    assert lines[0].startswith("download t.tgz: 1.0/3.0 MiB (33%), ")
    assert lines[-1].startswith("download t.tgz: 3.0 MiB done in ")
