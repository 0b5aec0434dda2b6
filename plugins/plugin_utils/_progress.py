# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetmesh.tailscale: progress lines for long transfers (put_file over telnet and adb, the release
download).

Progress is fed the bytes moved so far and hands at most one line every `every` seconds to `emit`, and only once
the transfer has run `first_after` seconds: a quick transfer prints nothing. finish() adds a last line, only when
something was printed before. Pure Python with no Ansible import: the session daemon (_session_daemon.py) runs it
and sends the lines back to the task through its reply stream; the plugins print them (Ansible's Display, stderr).

    put tailscaled: 12.3/30.1 MiB (41%), 1.2 MiB/s, 15 s left
    put tailscaled: 30.1 MiB done in 25 s (1.2 MiB/s)
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
import time
from collections.abc import Callable

FIRST_AFTER = 3.0  # seconds a transfer runs before its first line
EVERY = 5.0  # seconds between lines: with 25 forks a fleet's transfers stay readable
MIB = 1024 * 1024


class Progress:
    """Progress of one transfer of `total` bytes (None when unknown); update() and add() are cheap enough to call
    per chunk: a clock read and a comparison unless a line is due."""

    def __init__(
        self,
        total: int | None,
        label: str,
        emit: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        first_after: float = FIRST_AFTER,
        every: float = EVERY,
    ) -> None:
        self.total, self.label, self.emit, self.clock, self.every = total, label, emit, clock, every
        self.started = clock()
        self.due = self.started + first_after
        self.done = 0
        self.printed = False

    def update(self, done: int) -> None:
        """The transfer has moved `done` bytes in all. Never goes back: a count that subtracts what the kernel
        still holds (unacked()) may dip a little, and the lines should not."""
        self.done = max(self.done, done)
        now = self.clock()
        if now >= self.due:
            self.due = now + self.every
            self.printed = True
            self.emit(self.line(now))

    def add(self, count: int) -> None:
        """`count` more bytes moved."""
        self.update(self.done + count)

    def line(self, now: float) -> str:
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 and self.done > 0 else 0.0
        if self.total is None:
            amount = f"{_mib(self.done)} MiB"
        else:
            pct = 100 * self.done // self.total if self.total else 100
            amount = f"{_mib(self.done)}/{_mib(self.total)} MiB ({pct}%)"
        if not rate:
            return f"{self.label}: {amount}, waiting for data"
        text = f"{self.label}: {amount}, {_mib(rate)} MiB/s"
        if self.total is not None and self.total > self.done:
            text += f", {_seconds((self.total - self.done) / rate)} left"
        return text

    def finish(self) -> None:
        """The transfer is complete: one last line if any was printed."""
        if not self.printed:
            return
        self.printed = False  # once
        elapsed = self.clock() - self.started
        size = self.total if self.total is not None else self.done
        rate = f" ({_mib(size / elapsed)} MiB/s)" if elapsed > 0 and size else ""
        self.emit(f"{self.label}: {_mib(size)} MiB done in {_seconds(elapsed)}{rate}")


def unacked(sock: socket.socket) -> int:
    """Bytes in a TCP socket's send queue the peer has not acknowledged yet (Linux SIOCOUTQ), 0 where unknown:
    subtracted from the bytes written, they leave what the peer has really taken."""
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0])
    except (OSError, AttributeError, ValueError):
        return 0


def _mib(count: float) -> str:
    return f"{count / MIB:.1f}"


def _seconds(value: float) -> str:
    secs = int(value + 0.5)
    if secs < 100:
        return f"{secs} s"
    return f"{secs // 60} min {secs % 60:02d} s"
