# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetmesh.tailscale: a POSIX shell session over a byte stream (telnet now, adb later).

Pure Python with no Ansible import, because the persistent session daemon (_session_daemon.py) runs it in a
process of its own. ShellSession logs in: it answers login/password prompts found by regexes (LoginSettings), waits
for a shell prompt, then puts the shell in a known state (empty PS1/PS2, `stty -echo -opost` so typed text is not
echoed and output bytes pass untranslated) and probes what the device has (Capabilities). Then it runs commands,
logging in again by itself when the stream was dropped between two of them.

Beside it: the byte streams (_telnet_client.TelnetStream, _adb_client.AdbShellStream), what is typed and read back
(_shell_framing.py), file transfer (_transfer.py, a mixin of ShellSession) and the errors (_shell_errors.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import secrets
import select
import time
from collections.abc import Callable
from typing import Protocol

try:
    from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._shell_errors import (
        CommandTimeout,
        LoginError,
        SessionLost,
    )
    from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._shell_framing import (
        EOF_CHAR,
        Result,
        frame_command,
        parse_framed,
        prompt_text,
        shell_quote,
        split_marker,
    )
    from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._transfer import PROBE, Chunker, FileTransfer
except ImportError:  # inside the session process, started as a script: this directory is sys.path[0]
    from _shell_errors import CommandTimeout, LoginError, SessionLost  # type: ignore[no-redef]
    from _shell_framing import (  # type: ignore[no-redef]
        EOF_CHAR,
        Result,
        frame_command,
        parse_framed,
        prompt_text,
        shell_quote,
        split_marker,
    )
    from _transfer import PROBE, Chunker, FileTransfer  # type: ignore[no-redef]

DEFAULT_LOGIN_RE = r"(?i)(?:login|user ?name)\s*:\s*$"
DEFAULT_PASSWORD_RE = r"(?i)password\s*:\s*$"
# Ends like `# `, `$ `, `~ # `, `root@kobo:~# `, `> ` or `% ` once colour codes are stripped.
DEFAULT_PROMPT_RE = r"[#$>%][ \t]*$"
DEFAULT_FAILURE_RE = r"(?i)login incorrect|incorrect password|authentication fail|login failed|access denied"


class Stream(Protocol):
    """A connected byte stream to a device shell (a pty on the far side)."""

    def send(self, data: bytes) -> None: ...

    def recv(self, timeout: float | None) -> bytes | None:
        """Data; b"" at end of stream; None when nothing came within timeout."""

    def fileno(self) -> int: ...

    def alive(self) -> bool: ...

    def close(self) -> None: ...

    def local_address(self) -> str | None: ...


@dataclasses.dataclass
class LoginSettings:
    user: str = "root"
    password: str | None = None
    login_re: str = DEFAULT_LOGIN_RE
    password_re: str = DEFAULT_PASSWORD_RE
    prompt_re: str = DEFAULT_PROMPT_RE
    failure_re: str = DEFAULT_FAILURE_RE
    timeout: float = 20.0
    # What ends a typed answer: telnet's NVT wants CR LF; a pty behind adb (ICRNL) would read CR LF as two lines.
    line_end: str = "\r\n"


@dataclasses.dataclass
class Capabilities:
    tmp_dir: str | None = None
    base64: bool = False
    uudecode: bool = False
    uuencode: bool = False
    sha256: bool = False
    md5: bool = False
    wget: bool = False
    od: bool = False
    raw_output: bool = False  # stty -opost took: output bytes arrive untranslated


class ShellSession(FileTransfer):
    """One logged-in shell; run() re-logs in transparently when the stream was dropped between commands."""

    def __init__(
        self,
        connect: Callable[[], Stream],
        login: LoginSettings,
        log: Callable[[str], None] | None = None,
        command_timeout: float = 0,
        coalesce: bool = False,
    ) -> None:
        self._connect = connect
        # Collect each command's frame on the device and print it in one burst (doors that pay a round trip per
        # burst of output: an adb shell on old adbd); needs a writable temp dir.
        self.coalesce = coalesce
        self.out_file: str | None = None
        self.settings = login
        self.log = log or (lambda _msg: None)
        self.command_timeout = command_timeout
        self.stream: Stream | None = None
        self.buf = bytearray()
        self.caps = Capabilities()
        self.err_file: str | None = None
        self.logins = 0
        self.commands = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    # -- low level

    def _live(self) -> Stream:
        if self.stream is None:
            raise EOFError("no session")
        return self.stream

    def _send(self, data: bytes) -> None:
        self._live().send(data)
        self.bytes_sent += len(data)

    def _fill(self, deadline: float | None, what: str) -> None:
        """Read once more into buf; raise on end of stream or deadline."""
        stream = self._live()
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise TimeoutError(what)
        data = stream.recv(left)
        if data is None:
            raise TimeoutError(what)
        if not data:
            raise EOFError(what)
        self.bytes_received += len(data)
        self.buf += data

    def _drop(self) -> None:
        if self.stream is not None:
            with contextlib.suppress(OSError):
                self.stream.close()
        self.stream = None
        self.buf.clear()

    def connected(self) -> bool:
        return self.stream is not None and self.stream.alive()

    # -- login

    def open(self) -> None:
        """Connect and log in unless a live session is there already (safe to call twice)."""
        if self.connected():
            return
        self._drop()
        self.stream = self._connect()
        try:
            self._login()
            self._setup()
        except BaseException:
            self._drop()
            raise
        self.logins += 1

    def _login(self) -> None:
        s = self.settings
        login_re, password_re = re.compile(s.login_re), re.compile(s.password_re)
        prompt_re, failure_re = re.compile(s.prompt_re), re.compile(s.failure_re)
        deadline = time.monotonic() + s.timeout
        sent_user = sent_password = False
        eol = s.line_end.encode()
        while True:
            text = prompt_text(self.buf)
            if s.password:
                text = text.replace(s.password, "********")  # a device that echoes it must not get it into a message
            if (sent_user or sent_password) and failure_re.search(text):
                raise LoginError(f"login as {s.user!r} refused: wrong credentials ({text.strip()[-80:]!r})")
            if password_re.search(text):
                if sent_password:
                    raise LoginError(f"login as {s.user!r} refused: wrong credentials (asked for the password again)")
                self.log("answering the password prompt")
                self.buf.clear()
                self._send((s.password or "").encode() + eol)
                sent_password = True
            elif login_re.search(text):
                if sent_user:
                    raise LoginError(f"login as {s.user!r} refused: wrong credentials (login prompt came back)")
                self.log(f"answering the login prompt as {s.user}")
                self.buf.clear()
                self._send(s.user.encode() + eol)
                sent_user = True
            elif prompt_re.search(text):
                return
            try:
                self._fill(deadline, "prompt")
            except TimeoutError:
                seen = prompt_text(self.buf)
                seen = (seen.replace(s.password, "********") if s.password else seen).strip()[-120:]
                raise LoginError(
                    f"no shell prompt within {s.timeout:g}s (last output: {seen!r}); check the prompt regexes"
                ) from None
            except EOFError:
                stage = "after the password" if sent_password else "after the user name" if sent_user else "at once"
                raise LoginError(f"the device closed the connection {stage} (wrong credentials?)") from None

    def _setup(self) -> None:
        """Known shell state, then a marker round trip proves the shell reads us; then probe the device."""
        token = secrets.token_hex(8)
        line = (
            "stty -echo -opost 2>/dev/null; PS1=''; PS2=''; PS4=''; unset PROMPT_COMMAND HISTFILE; "
            f"printf '%s\\n' {split_marker(token + 'R')}\n"
        )
        self._send(line.encode())
        marker = re.compile(re.escape(token.encode()) + rb"R(\r?)\n")
        deadline = time.monotonic() + self.settings.timeout
        while (m := marker.search(self.buf)) is None:
            try:
                self._fill(deadline, "setup")
            except TimeoutError:
                raise LoginError(f"the shell did not answer within {self.settings.timeout:g}s after login") from None
            except EOFError:
                raise LoginError("the device closed the connection right after login") from None
        self.caps = Capabilities(raw_output=not m.group(1))
        del self.buf[: m.end()]
        self.err_file = self.out_file = None
        found = self._probe(time.monotonic() + self.settings.timeout)
        self.caps.tmp_dir = found.get("tmp") or None
        for name in ("base64", "uudecode", "uuencode", "sha256", "md5", "wget", "od"):
            setattr(self.caps, name, found.get(name) == "1")
        if self.caps.tmp_dir:
            tag = secrets.token_hex(6)
            self.err_file = f"{self.caps.tmp_dir}/.fleetmesh-err-{tag}"
            if self.coalesce:
                self.out_file = f"{self.caps.tmp_dir}/.fleetmesh-out-{tag}"
        else:
            self.log("warning: no writable temp dir on the device: stderr is merged into stdout")
        self.log(f"shell ready: {self.caps}")

    def _probe(self, deadline: float) -> dict[str, str]:
        """Run PROBE with its output collected by the shell and printed in one burst (one round trip)."""
        token = secrets.token_hex(8)
        typed = (
            f"FMP=$( {{\n{PROBE}\n}} </dev/null 2>/dev/null ); "
            # One line without a newline: a tty's stdout is line-buffered, so each newline would be a burst of its own.
            f"printf '%s ' {split_marker(token + 'B')} $FMP {split_marker(token + 'Z')}\n"
        )
        self._send(typed.encode())
        frame = re.compile(re.escape(token.encode()) + rb"B (.*?)" + re.escape(token.encode()) + rb"Z ", re.S)
        while (m := frame.search(self.buf)) is None:
            try:
                self._fill(deadline, "probe")
            except TimeoutError:
                raise LoginError(f"the shell did not run the probe within {self.settings.timeout:g}s") from None
            except EOFError:
                raise LoginError("the device closed the connection right after login") from None
        text = m.group(1).decode(errors="replace")  # before the buffer (which the match refers to) shrinks
        del self.buf[: m.end()]
        return dict(line.split("=", 1) for line in text.split() if "=" in line)

    # -- commands

    def run(self, cmd: bytes, timeout: float | None = None) -> Result:
        """Run one command; reconnect first when the session was dropped since the last one."""
        if not self.connected():
            if self.stream is not None:
                self.log("session dropped since the last command: logging in again")
            self.open()
        limit = self.command_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit if limit else None
        self.commands += 1
        try:
            return self._run_framed(cmd, deadline=deadline)
        except SessionLost as err:
            if err.started:
                raise
        # The device dropped the session just before this command (its end had not reached us yet): the command
        # never started, so it is safe to log in again and run it once more.
        self.log("session dropped before the command started: logging in again")
        self.open()
        return self._run_framed(cmd, deadline=deadline)

    def _run_framed(
        self,
        cmd: bytes,
        deadline: float | None,
        stdin_iter: Chunker | None = None,
    ) -> Result:
        token = secrets.token_hex(8)
        typed = frame_command(cmd, token, self.err_file, stdin_tty=stdin_iter is not None, out_file=self.out_file)
        try:
            self._send(typed)
            if stdin_iter is not None:
                self._pump(stdin_iter)
            scan = 0
            while True:
                # Only the new data can complete the frame, but a marker may straddle the old/new boundary.
                if self.buf.find(token.encode() + b"Z", scan) >= 0:
                    parsed = parse_framed(self.buf, token, self.caps.raw_output)
                    if parsed is not None:
                        result, used = parsed
                        del self.buf[:used]
                        return result
                scan = max(0, len(self.buf) - 40)
                self._fill(deadline, "command")
        except TimeoutError:
            self._drop()
            raise CommandTimeout("the command did not finish in time; the session was closed") from None
        except (EOFError, OSError) as err:
            started = re.search(re.escape(token.encode()) + rb"B\r?\n", self.buf) is not None
            self._drop()
            raise SessionLost(
                f"the connection was lost while the command ran (it may have run partly): {err}", started
            ) from None

    def _pump(self, produce: Chunker) -> None:
        """Type produced data into the command's stdin, reading what comes back meanwhile (echo may be on)."""
        stream = self._live()
        fd = stream.fileno()
        while (chunk := produce()) is not None:
            self._send(chunk)
            # Drain without blocking so an echoing tty can never deadlock us against a full socket buffer.
            while select.select([fd], [], [], 0)[0]:
                data = stream.recv(0)
                if data is None:
                    break  # only telnet negotiation was readable
                if not data:
                    raise EOFError("stream closed during upload")
                self.bytes_received += len(data)
                self.buf += data
        self._send(b"\n" + EOF_CHAR)

    def close(self) -> None:
        """Remove the stderr temp file and log out."""
        if self.connected():
            try:
                if self.err_file:
                    leftovers = " ".join(shell_quote(f) for f in (self.err_file, self.out_file) if f)
                    self._send(f"rm -f {leftovers}; exit\n".encode())
                else:
                    self._send(b"exit\n")
            except OSError:
                pass
        self._drop()
