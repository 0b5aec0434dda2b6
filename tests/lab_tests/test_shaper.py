"""The link shaper adds latency, caps the rate and cuts connections after N bytes."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from fleetlab.shaper import ShaperConfig, run_in_thread


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A TCP echo server on loopback (the 'device port')."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        # A cut by the shaper resets this side too: that ends the echo, it is not a failure.
        with conn, contextlib.suppress(ConnectionError):
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _unused = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    thread.join(2)
    srv.close()


@contextlib.contextmanager
def shaper(port: int, **kw: int) -> Iterator[tuple[int, object]]:
    proxy, stop = run_in_thread(ShaperConfig("127.0.0.1", 0, "127.0.0.1", port, **kw))
    try:
        yield proxy.port, proxy
    finally:
        stop.set()
        time.sleep(0.2)


def round_trip(port: int, payload: bytes = b"x") -> float:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        start = time.monotonic()
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            got += s.recv(65536)
        return time.monotonic() - start


def test_latency_adds_at_least_twice_the_one_way_delay_to_a_round_trip(echo_server: int) -> None:
    with shaper(echo_server) as (port, _stats):
        base = min(round_trip(port) for _attempt in range(3))
    with shaper(echo_server, latency_ms=150) as (port, _stats):
        delayed = min(round_trip(port) for _attempt in range(3))
    print(f"round trip: {base * 1000:.1f} ms plain, {delayed * 1000:.1f} ms with 150 ms one-way latency")
    assert delayed >= 0.300
    assert delayed - base >= 0.290


def test_rate_cap_holds_roughly(echo_server: int) -> None:
    payload = b"r" * 128_000  # 1024 kbit each way
    with shaper(echo_server, rate_kbit=1024) as (port, proxy):
        took = round_trip(port, payload)
        rate_kbit = len(payload) * 8 / 1000 / took
    print(f"128 kB echoed through a 1024 kbit/s cap in {took:.2f} s ({rate_kbit:.0f} kbit/s each way)")
    # Up and down are pipelined, so the echo takes about one direction's time: 1 s at 1024 kbit/s
    # (less the initial burst of 1/20 s).
    assert 0.85 <= took <= 3.0
    assert proxy.stats.bytes_up == len(payload)


def test_cut_after_bytes_cuts_the_connection(echo_server: int) -> None:
    with shaper(echo_server, cut_after_bytes=1000) as (port, proxy):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"a" * 400)
            assert len(s.recv(400, socket.MSG_WAITALL)) == 400  # 800 bytes so far: still alive
            got = b""
            with contextlib.suppress(ConnectionResetError):
                s.sendall(b"b" * 400)
                while chunk := s.recv(65536):
                    got += chunk
        time.sleep(0.2)
        # 200 more bytes up reach the limit; nothing more passes and the echo never comes back whole.
        assert len(got) < 400
        assert proxy.stats.bytes_up + proxy.stats.bytes_down <= 1000
        assert proxy.stats.cuts == 1
        # The proxy keeps serving new connections.
        assert round_trip(port, b"hello") < 5


def test_command_line_prints_byte_counts_on_exit(echo_server: int) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleetlab.shaper",
            "--listen",
            f"127.0.0.1:{port}",
            "--to",
            f"127.0.0.1:{echo_server}",
            "--latency-ms",
            "10",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                round_trip(port, b"12345")
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _unused = proc.communicate(timeout=10)
    counts = json.loads(out.strip().splitlines()[-1])
    assert (counts["bytes_up"], counts["bytes_down"], counts["connections"]) == (5, 5, 1)
