"""The adb client's own sync transfers (push/pull through the adb server's socket) against a fake adb server.

The fake speaks the host protocol (4-hex-digit length + request, OKAY/FAIL) and the v1 sync protocol over a real
socket, so what is checked is the bytes on the wire: requests, chunking, the device's FAIL and a stale transport.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from pathlib import Path

import pytest
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._adb_client import (
    SYNC_DATA_MAX,
    AdbClient,
    AdbError,
    NotStarted,
)


def _exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


class FakeServer:
    """One adb server on 127.0.0.1: files[path] is the device's file system; sync_fail makes `sync:` fail."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.sync_fail = ""
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            conn, _addr = self.listener.accept()
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        with conn:
            try:
                for _step in range(2):
                    request = _exact(conn, int(_exact(conn, 4), 16)).decode()
                    self.requests.append(request)
                    if request == "sync:" and self.sync_fail:
                        conn.sendall(b"FAIL%04x" % len(self.sync_fail) + self.sync_fail.encode())
                        return
                    conn.sendall(b"OKAY")
                self._sync(conn)
            except EOFError:
                return

    def _sync(self, conn: socket.socket) -> None:
        while True:
            ident, size = struct.unpack("<4sI", _exact(conn, 8))
            if ident == b"QUIT":
                return
            path = _exact(conn, size).decode()
            if ident == b"SEND":
                name, _sep, mode = path.rpartition(",")
                data = b""
                while True:
                    kind, value = struct.unpack("<4sI", _exact(conn, 8))
                    if kind == b"DONE":
                        break
                    assert value <= SYNC_DATA_MAX
                    data += _exact(conn, value)
                if name.startswith("/ro/"):
                    why = b"couldn't create file: Read-only file system"
                    conn.sendall(b"FAIL" + struct.pack("<I", len(why)) + why)
                else:
                    self.files[name] = data
                    self.requests.append(f"mode {int(mode) & 0o777:o}")
                    conn.sendall(b"OKAY" + struct.pack("<I", 0))
            elif ident == b"RECV":
                if path not in self.files:
                    why = b"No such file or directory"
                    conn.sendall(b"FAIL" + struct.pack("<I", len(why)) + why)
                    continue
                data = self.files[path]
                for at in range(0, len(data), SYNC_DATA_MAX):
                    block = data[at : at + SYNC_DATA_MAX]
                    conn.sendall(b"DATA" + struct.pack("<I", len(block)) + block)
                conn.sendall(b"DONE" + struct.pack("<I", 0))


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    monkeypatch.delenv("ADB_SERVER_SOCKET", raising=False)
    return FakeServer()


def test_push_and_pull_are_binary_exact_in_sync_chunks(server: FakeServer, tmp_path: Path) -> None:
    payload = os.urandom(3 * SYNC_DATA_MAX + 123)
    src = tmp_path / "src"
    src.write_bytes(payload)
    src.chmod(0o640)
    client = AdbClient("/nonexistent/adb", "198.51.100.7:5555", server.port, timeout=5)  # the client is not run
    client.push(str(src), "/tmp/dst")
    assert server.files["/tmp/dst"] == payload
    assert server.requests[:2] == ["host:transport:198.51.100.7:5555", "sync:"]
    assert "mode 640" in server.requests
    client.pull("/tmp/dst", str(tmp_path / "back"))
    assert (tmp_path / "back").read_bytes() == payload


def test_the_devices_refusal_is_a_plain_error_with_its_reason(server: FakeServer, tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"x")
    client = AdbClient("/nonexistent/adb", "ABC", server.port, timeout=5)
    with pytest.raises(AdbError, match="Read-only file system"):
        client.push(str(tmp_path / "src"), "/ro/x")
    with pytest.raises(AdbError, match="No such file"):
        client.pull("/missing", str(tmp_path / "back"))


def test_a_sync_service_that_does_not_open_is_not_started(server: FakeServer, tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"x")
    server.sync_fail = "closed"
    with pytest.raises(NotStarted, match="closed"):
        AdbClient("/nonexistent/adb", "ABC", server.port, timeout=5).push(str(tmp_path / "src"), "/tmp/x")
    assert "/tmp/x" not in server.files
