"""A minimal raw-socket telnet client for lab tests and benchmarks (the collection's plugin is a separate work).

It refuses every option the server offers (so busybox telnetd stays in plain NVT mode), logs in and runs one
command, reading up to a marker it makes up so the prompt's shape does not matter.
"""

from __future__ import annotations

import re
import secrets
import socket
import time

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240


class TelnetError(Exception):
    pass


class RawTelnet:
    def __init__(self, host: str, port: int = 23, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        self.buf = b""
        self._pending = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawTelnet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _feed(self, data: bytes) -> None:
        data = self._pending + data
        self._pending = b""
        replies = bytearray()
        i = 0
        while i < len(data):
            byte = data[i]
            if byte != IAC:
                self.buf += bytes([byte])
                i += 1
                continue
            if i + 1 >= len(data):
                self._pending = data[i:]
                break
            cmd = data[i + 1]
            if cmd in (DO, DONT, WILL, WONT):
                if i + 2 >= len(data):
                    self._pending = data[i:]
                    break
                opt = data[i + 2]
                if cmd == DO:
                    replies += bytes([IAC, WONT, opt])
                elif cmd == WILL:
                    replies += bytes([IAC, DONT, opt])
                i += 3
            elif cmd == SB:
                end = data.find(bytes([IAC, SE]), i)
                if end < 0:
                    self._pending = data[i:]
                    break
                i = end + 2
            elif cmd == IAC:
                self.buf += bytes([IAC])
                i += 2
            else:
                i += 2
        if replies:
            self.sock.sendall(bytes(replies))

    def read_until(self, marker: bytes, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (timeout or self.timeout)
        while marker not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TelnetError(f"timeout waiting for {marker!r}; got {self.buf[-200:]!r}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            if not data:
                raise TelnetError(f"connection closed waiting for {marker!r}; got {self.buf[-200:]!r}")
            self._feed(data)
        head, _sep, self.buf = self.buf.partition(marker)
        return head + marker

    def send_line(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\r\n")

    def login(self, user: str = "root", password: str = "") -> None:
        self.read_until(b"login: ")
        self.send_line(user)
        if password:
            self.read_until(b"Password: ")
            self.send_line(password)
        # The shell is ready when it echoes back what we type.
        self.run("true")

    def read_until_re(self, pattern: bytes, timeout: float | None = None) -> re.Match[bytes]:
        regex = re.compile(pattern, re.S)
        deadline = time.monotonic() + (timeout or self.timeout)
        while (match := regex.search(self.buf)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TelnetError(f"timeout waiting for {pattern!r}; got {self.buf[-200:]!r}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            if not data:
                raise TelnetError(f"connection closed waiting for {pattern!r}; got {self.buf[-200:]!r}")
            self._feed(data)
        self.buf = self.buf[match.end() :]
        return match

    def run(self, command: str) -> tuple[str, int]:
        """Run a shell command; returns (output, exit status)."""
        tag = secrets.token_hex(4)
        # The quotes split the marker in the echoed command line, so only the command's output matches it.
        self.send_line(f'echo "{tag}""-start"; {command}; echo "{tag}""-rc=$?"')
        match = self.read_until_re(rf"{tag}-start\r?\n(.*?){tag}-rc=(\d+)\r?\n".encode(), None)
        return match[1].decode(errors="replace").replace("\r\n", "\n").strip("\n"), int(match[2])
