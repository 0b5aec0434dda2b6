"""Shared by the shell session's tests: the shells on this machine and a Stream onto a real shell on a real pty."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time

from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _shell_session as ss

SHELLS = [s for s in ("/bin/sh", "/usr/bin/dash", shutil.which("busybox")) if s and os.path.exists(s)]
TOKEN = "0123456789abcdef"


def argv(shell: str) -> list[str]:
    return [shell, "sh"] if shell.endswith("busybox") else [shell]


class PtyShell:
    """A Stream: a scripted login exchange, then a real sh on a real pty (echo on, canonical mode)."""

    def __init__(self, banner: bytes, script: list[tuple[bytes, bytes]], shell: str = "/bin/sh") -> None:
        self.pending = banner
        self.script = list(script)  # (what we must have sent, what the "device" answers)
        self.sent = b""
        self.master, slave = os.openpty()
        env = {"PATH": os.environ["PATH"], "PS1": "$ ", "HOME": "/tmp"}
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
            [*argv(shell), "-i"], stdin=slave, stdout=slave, stderr=slave, start_new_session=True, env=env
        )
        os.close(slave)
        self.closed = False
        self.reads: list[tuple[float, bytes]] = []  # (when, what) of each read from the shell's pty

    def send(self, data: bytes) -> None:
        if self.script:
            self.sent += data
            expect, reply = self.script[0]
            if expect in self.sent:
                self.script.pop(0)
                self.sent = b""
                self.pending += reply
            return
        os.write(self.master, data)

    def recv(self, timeout: float | None) -> bytes | None:
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        if self.script:  # the scripted device says nothing more: a silent login
            time.sleep(min(timeout or 0, 0.05))
            return None
        if not select.select([self.master], [], [], timeout)[0]:
            return None
        try:
            data = os.read(self.master, 65536)
            self.reads.append((time.monotonic(), data))
            return data
        except OSError:
            self.closed = True
            return b""

    def fileno(self) -> int:
        return self.master

    def alive(self) -> bool:
        return not self.closed and self.proc.poll() is None

    def close(self) -> None:
        if self.master >= 0:
            os.close(self.master)
            self.master = -1
        self.closed = True
        self.proc.kill()
        self.proc.wait()

    def local_address(self) -> str | None:
        return None


def session_on(stream: PtyShell, **login: object) -> ss.ShellSession:
    settings = ss.LoginSettings(**{"timeout": 5.0, **login})  # type: ignore[arg-type]
    return ss.ShellSession(lambda: stream, settings)
