# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetmesh.tailscale: a one-shot HTTP server the device pulls one file from (busybox wget).

It listens on the controller address the device reaches us from, serves exactly one file under a random path
(any other request gets 404), and stops after one complete response or when close() is called. No Ansible import:
the persistent session daemon uses it too. on_progress(count), when set before the device connects, is told from
the server's thread how many bytes of the file the device has acknowledged (what the kernel still holds unsent or
unacknowledged is not counted).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import socket
import threading
from collections.abc import Callable

try:
    from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._progress import unacked
except ImportError:  # inside the session process, started as a script: this directory is sys.path[0]
    from _progress import unacked  # type: ignore[no-redef]

SEND_STEP = 256 * 1024  # sendfile() per step: a progress update per step, about one a second at 2 Mbit/s
FIRST_BYTES_WITHIN = 10  # seconds a device's wget may take to land the first bytes before it is stopped


def fetch_command(url: str, landed: str, within: int = FIRST_BYTES_WITHIN) -> str:
    """A device command that writes the file at url to its stdout with busybox wget, and stops wget when nothing
    has landed in the file `landed` (where the caller puts that output) within `within` seconds: a device that
    cannot reach the controller (a firewall that drops, no route back) costs that long, not the TCP connect
    timeout (about 2 minutes) or the command timeout. Not wget -T: an optional busybox feature (and its timer
    crashes busybox wget under qemu-user).
    Exits with wget's status (143 when stopped). POSIX sh: the watchdog is a subshell with no inherited output,
    so nothing waits on it after wget ends."""
    return (
        f"(wget -q -O - {shlex.quote(url)} & p=$!; "
        f"(sleep {int(within)}; [ -s {shlex.quote(landed)} ] || kill $p) </dev/null >/dev/null 2>&1 & w=$!; "
        "wait $p; r=$?; kill $w 2>/dev/null; exit $r)"
    )


class OneShotServer:
    """Serve `path` once at http://ADDR:PORT/<random>/<basename>; close() stops it whatever happened."""

    def __init__(self, path: str, address: str, port: int = 0, timeout: float = 120.0) -> None:
        self.path = path
        self.size = os.path.getsize(path)
        self.secret = f"/{secrets.token_urlsafe(24)}/{os.path.basename(path) or 'file'}"
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(4)
        self.sock.settimeout(timeout)
        host = f"[{address}]" if family == socket.AF_INET6 else address
        self.url = f"http://{host}:{self.sock.getsockname()[1]}{self.secret}"
        self.served = False
        self.bytes_sent = 0
        self.error: str | None = None
        self.on_progress: Callable[[int], None] | None = None
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            while not self.served:
                conn = self.sock.accept()[0]
                with conn:
                    conn.settimeout(60)
                    self._handle(conn)
        except OSError as err:  # closed by close(), or accept timed out
            if not self.served:
                self.error = str(err)

    def _handle(self, conn: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request and b"\n\n" not in request and len(request) < 16384:
            chunk = conn.recv(4096)
            if not chunk:
                return
            request += chunk
        parts = request.split(b"\r\n", 1)[0].split()
        if len(parts) < 2 or parts[0] != b"GET" or parts[1].decode(errors="replace") != self.secret:
            conn.sendall(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        head = (
            f"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {self.size}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        conn.sendall(head)
        report = self.on_progress
        with open(self.path, "rb") as src:
            sent = 0
            while sent < self.size and (step := conn.sendfile(src, sent, SEND_STEP)):
                sent += step
                if report is not None:
                    report(max(sent - unacked(conn), 0))
        self.bytes_sent = len(head) + sent
        self.served = sent == self.size
        if report is not None and self.served:
            # All handed to the kernel: the FIN goes after the data, and the device's acknowledgements are followed
            # until they cover the file (the device's wget ends on the Content-Length, so nothing waits on this).
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_WR)
                while (left := unacked(conn)) and not self._closing.wait(0.25):
                    report(max(sent - left, 0))
            report(sent)

    def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(OSError):  # never connected
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(timeout=5)
