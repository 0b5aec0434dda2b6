# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetmesh.tailscale: the telnet wire protocol, a byte stream for the shell session (_shell_session.py).

TelnetParser splits what the server sends into data and the option negotiation replies we owe; escape_iac doubles
the 0xff bytes we send; TelnetStream is the client socket (sync, select-driven, TCP keepalive and quick ACKs) that
the session reads and writes. The telnet counterpart of _adb_client.AdbShellStream. Pure Python with no Ansible
import: the persistent session daemon (_session_daemon.py) runs it in a process of its own.
"""

from __future__ import annotations

import select
import socket
import time

try:
    from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._shell_errors import ConnectError
except ImportError:  # inside the session process, started as a script: this directory is sys.path[0]
    from _shell_errors import ConnectError  # type: ignore[no-redef]

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
OPT_ECHO, OPT_SGA, OPT_NAWS = 1, 3, 31


class TelnetParser:
    """Splits a telnet byte stream into data and the negotiation replies we owe.

    We accept the server's WILL ECHO and WILL SGA (the normal character-at-a-time NVT setup busybox telnetd asks
    for), refuse every other WILL with DONT and every DO with WONT (no NAWS/TTYPE: the pty keeps its default
    size, and the shell's state is set by stty anyway). Each option is answered once, so no negotiation loops.
    """

    def __init__(self) -> None:
        self.pending = b""
        self.answered: set[tuple[int, int]] = set()

    def feed(self, chunk: bytes) -> tuple[bytes, bytes]:
        data = self.pending + chunk
        self.pending = b""
        if IAC not in data:
            return data, b""
        out = bytearray()
        replies = bytearray()
        i = 0
        n = len(data)
        while i < n:
            j = data.find(IAC, i)
            if j < 0:
                out += data[i:]
                break
            out += data[i:j]
            if j + 1 >= n:
                self.pending = data[j:]
                break
            cmd = data[j + 1]
            if cmd == IAC:
                out.append(IAC)
                i = j + 2
            elif cmd in (DO, DONT, WILL, WONT):
                if j + 2 >= n:
                    self.pending = data[j:]
                    break
                replies += self._answer(cmd, data[j + 2])
                i = j + 3
            elif cmd == SB:
                end = data.find(bytes([IAC, SE]), j + 2)
                if end < 0:
                    self.pending = data[j:]
                    break
                i = end + 2
            else:
                i = j + 2  # NOP, GA, AYT...: nothing to do
        return bytes(out), bytes(replies)

    def _answer(self, cmd: int, opt: int) -> bytes:
        if (cmd, opt) in self.answered:
            return b""
        self.answered.add((cmd, opt))
        if cmd == WILL:
            return bytes([IAC, DO if opt in (OPT_ECHO, OPT_SGA) else DONT, opt])
        if cmd == DO:
            return bytes([IAC, WONT, opt])
        return b""  # DONT/WONT: we never enabled anything else, nothing to confirm


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def escape_iac(data: bytes) -> bytes:
    return data.replace(b"\xff", b"\xff\xff")


class TelnetStream:
    """A telnet client socket: sync, no threads; TCP keepalive so a dead link is noticed in about 30 s."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except TimeoutError:
            raise ConnectError(f"telnet {host}:{port}: no answer within {timeout:g}s") from None
        except OSError as err:
            raise ConnectError(f"telnet {host}:{port}: {err.strerror or err}") from None
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for opt, value in (("TCP_KEEPIDLE", 15), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, opt):
                self.sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = TelnetParser()
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes) -> None:
        self.sock.settimeout(None)
        self.sock.sendall(escape_iac(data))

    def recv(self, timeout: float | None) -> bytes | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self.sock.settimeout(left)
            if _QUICKACK is not None:
                # busybox telnetd writes the framed output in small pieces and Nagle holds the next one until our
                # ACK: without quick ACKs every command would pay a 40 ms delayed-ACK stall.
                self.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            try:
                chunk = self.sock.recv(262144)
            except TimeoutError:
                return None
            except BlockingIOError:
                return None
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                return b""
            data, replies = self.parser.feed(chunk)
            if replies:
                self.sock.sendall(replies)
            if data:
                return data
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def alive(self) -> bool:
        """False once the peer closed: a readable socket with nothing to read means EOF."""
        if self.closed:
            return False
        try:
            readable = select.select([self.sock], [], [], 0)[0]
            if readable and not self.sock.recv(1, socket.MSG_PEEK):
                self.closed = True
        except OSError:
            self.closed = True
        return not self.closed

    def close(self) -> None:
        self.closed = True
        self.sock.close()

    def local_address(self) -> str | None:
        return str(self.sock.getsockname()[0])
