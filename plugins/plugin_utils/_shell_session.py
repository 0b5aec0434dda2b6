# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetmesh.tailscale: a POSIX shell session over a byte stream (telnet now, adb later).

Pure Python with no Ansible import, because the persistent session daemon (_session_daemon.py) runs it in a
process of its own. What it does:

- login: answers login/password prompts found by regexes, waits for a shell prompt, then puts the shell in a known
  state (empty PS1/PS2, `stty -echo -opost` so typed text is not echoed and output bytes pass untranslated);
- framing: every command is typed as `C='...'` lines (each well below busybox ash's ~1 KiB line limit) and run as
  `( eval "$C" )` between markers made of a fresh random token, so stdout and the real exit status come back
  exactly whatever the output holds; stderr goes to a per-session temp file on the device and comes back after
  the status (merged into stdout only when the device has no writable temp dir);
- transfer: files go in by device pull over HTTP (busybox wget) or inline through the tty (base64 -d, uudecode or a
  printf-octal loop reading the tty until ^D), to a temp name, renamed into place only when the device's sha256
  (md5 if it lacks sha256sum) matches; files come out as base64 (uuencode -m or od as fallbacks), verified too.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import hashlib
import os
import re
import secrets
import select
import socket
import time
from collections.abc import Callable
from typing import BinaryIO, Protocol

# Typed lines stay well below busybox ash's 1024-byte line editing buffer and the tty's 4095-byte canonical limit.
MAX_LINE = 768
INLINE_CHUNK = 576  # payload bytes per inline base64 line (768 chars of base64)
PRINTF_CHUNK = 180  # payload bytes per printf-octal line (720 chars)
EOF_CHAR = b"\x04"  # VEOF: ends the reading command's stdin when typed at the start of a line

ANSI_RE = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>]")
DEFAULT_LOGIN_RE = r"(?i)(?:login|user ?name)\s*:\s*$"
DEFAULT_PASSWORD_RE = r"(?i)password\s*:\s*$"
# Ends like `# `, `$ `, `~ # `, `root@kobo:~# `, `> ` or `% ` once colour codes are stripped.
DEFAULT_PROMPT_RE = r"[#$>%][ \t]*$"
DEFAULT_FAILURE_RE = r"(?i)login incorrect|incorrect password|authentication fail|login failed|access denied"


class SessionError(Exception):
    """Base of everything this module raises."""


class ConnectError(SessionError):
    """The device could not be reached (refused, no route, timeout)."""


class LoginError(SessionError):
    """The device answered but did not give a shell (wrong credentials, no prompt in time)."""


class SessionLost(SessionError):
    """The stream ended while a command ran: it may have run partly."""

    def __init__(self, msg: str, started: bool = True) -> None:
        super().__init__(msg)
        self.started = started  # False: the shell never printed the start marker, so the command never ran


class CommandTimeout(SessionError):
    """A command did not finish in time; the session was dropped because its state is unknown."""


class TransferError(SessionError):
    """A file did not arrive intact."""


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
class Result:
    rc: int
    stdout: bytes
    stderr: bytes


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


# ----------------------------------------------------------------------------------------------- quoting/framing


def shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def split_marker(marker: str) -> str:
    """The marker as the shell sees it typed: two adjacent quoted halves, so an echo of the line never matches."""
    half = len(marker) // 2
    return f"'{marker[:half]}''{marker[half:]}'"


def _unsafe(byte: int) -> bool:
    # Control bytes the tty line discipline would act on (CR->NL, ^C, ^D, ^U...): typed as printf octal instead.
    return (byte < 0x20 and byte not in (0x09, 0x0A)) or byte == 0x7F


def assign_lines(var: str, data: bytes, max_line: int = MAX_LINE) -> list[bytes]:
    """Shell lines that leave `data` (any bytes but NUL) in shell variable `var`, none longer than max_line."""
    if b"\0" in data:
        raise SessionError("a command cannot contain a NUL byte")
    lines: list[bytes] = []
    first = True
    pos = 0
    while True:
        prefix = f"{var}=".encode() if first else f'{var}="${var}"'.encode()
        line = bytearray(prefix)
        phys = len(line)  # length of the current physical line (a literal newline inside quotes restarts it)
        quoted = False
        while pos < len(data) and phys < max_line - 24:
            byte = data[pos]
            if _unsafe(byte):
                if quoted:
                    line += b"'"
                    quoted = False
                piece = f"\"$(printf '\\{byte:03o}')\"".encode()
            else:
                piece = b"'\\''" if byte == 0x27 else bytes([byte])
                if not quoted:
                    piece = b"'" + piece
                    quoted = True
            line += piece
            phys = 0 if byte == 0x0A else phys + len(piece)
            pos += 1
        if quoted:
            line += b"'"
        if first and len(line) == len(prefix):
            line += b"''"
        lines.append(bytes(line))
        first = False
        if pos >= len(data):
            return lines


def frame_command(
    cmd: bytes,
    token: str,
    err_file: str | None,
    stdin_tty: bool = False,
    max_line: int = MAX_LINE,
    *,
    out_file: str | None = None,
) -> bytes:
    """The typed text for one framed command: marker B, stdout, marker E + status, stderr, marker Z.

    With out_file (and err_file), the whole frame is collected in out_file and printed by one `cat` once the
    command has ended: one burst of output, which costs one round trip on a door that acknowledges each burst
    (old adbd's WRTE/OKAY). Should out_file not take the frame (device temp dir full), the frame is printed as the
    command runs instead, or finished with status 125 and a note.
    """
    lines = assign_lines("FMC", cmd, max_line)
    stdin = "" if stdin_tty else " </dev/null"
    err = f" 2>{shell_quote(err_file)}" if err_file else " 2>&1"
    show_err = f"cat {shell_quote(err_file)} 2>/dev/null; " if err_file else ""
    begin = f"printf '%s\\n' {split_marker(token + 'B')}"
    run = f'( eval "$FMC" ){stdin}'
    status = f"printf '%s %d\\n' {split_marker(token + 'E')} $?"
    end = f"printf '%s\\n' {split_marker(token + 'Z')}"
    last = f"{begin}; {run}{err}; {status}; {show_err}{end}"
    if out_file and err_file:
        note = "fleetmesh: the device temp dir took no more output"
        full = f"'\\n%s\\n%s 125\\n%s\\n' '{note}' {split_marker(token + 'E')} {split_marker(token + 'Z')}"
        last = (
            f"FMO={shell_quote(out_file)}; FME={shell_quote(err_file)}; "
            f'if {{ {begin}; }} >"$FMO" 2>/dev/null; then {{ {run} 2>"$FME"; {status}; [ -s "$FME" ] && cat "$FME"; '
            f'{end}; }} >>"$FMO" 2>/dev/null && cat "$FMO" || {{ cat "$FMO"; printf {full}; }}; '
            f"else {begin}; {run} 2>&1; {status}; {end}; fi"
        )
    return b"\n".join([*lines, last.encode()]) + b"\n"


@dataclasses.dataclass
class Frame:
    start: int  # index in the buffer just after the B marker line
    stdout_end: int | None = None
    rc: int | None = None
    stderr_start: int | None = None


def parse_framed(buf: bytes | bytearray, token: str, raw_output: bool = True) -> tuple[Result, int] | None:
    """(result, bytes consumed) once the whole frame for token is in buf, else None."""
    tok = token.encode()
    b = re.search(re.escape(tok) + rb"B\r?\n", buf)
    if b is None:
        return None
    e = re.compile(re.escape(tok) + rb"E (-?\d+)\r?\n").search(buf, b.end())
    if e is None:
        return None
    z = re.compile(re.escape(tok) + rb"Z\r?\n").search(buf, e.end())
    if z is None:
        return None
    stdout = bytes(buf[b.end() : e.start()])
    stderr = bytes(buf[e.end() : z.start()])
    if not raw_output:
        # The tty turned every \n into \r\n (stty missing): undo that; a CR the program wrote before \n is lost.
        stdout = stdout.replace(b"\r\n", b"\n")
        stderr = stderr.replace(b"\r\n", b"\n")
    return Result(int(e.group(1)), stdout, stderr), z.end()


def prompt_text(buf: bytes | bytearray) -> str:
    """The tail of what the device printed, colour codes and CRs removed, for prompt regexes."""
    clean = ANSI_RE.sub(b"", bytes(buf[-2048:])).replace(b"\r", b"").replace(b"\0", b"")
    return clean.decode("utf-8", errors="replace")


# ------------------------------------------------------------------------------------------------------- session


class ShellSession:
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

    # -- files

    def _checksum_cmd(self) -> tuple[str, str]:
        if self.caps.sha256:
            return "sha256sum", "sha256"
        if self.caps.md5:
            self.log("warning: the device has no sha256sum: transfers are verified with md5sum only")
            return "md5sum", "md5"
        raise TransferError("the device has neither sha256sum nor md5sum: cannot verify the transfer")

    def put(self, local: str, remote: str, method: str = "auto", http: Callable[[str], object] | None = None) -> str:
        """Copy a local file to the device; returns the method used. http(local) gives a one-shot server."""
        self.open()
        tool, algo = self._checksum_cmd()
        digest = _file_digest(local, algo)
        size = os.path.getsize(local)
        tmp = f"{remote}.fmtmp{secrets.token_hex(4)}"
        method = self.pick_put_method(method, size, http is not None)
        check = (
            f"h=$({tool} {shell_quote(tmp)}) || exit 4; h=${{h%% *}}; "
            f'if [ "$h" = {digest} ]; then mv -f {shell_quote(tmp)} {shell_quote(remote)}; '
            f'else rm -f {shell_quote(tmp)}; echo "{algo} mismatch: device has $h, expected {digest}" >&2; exit 3; fi'
        )
        if method == "http":
            server = http(local)  # type: ignore[misc]  # pick_put_method returns http only with a factory
            url = server.url  # type: ignore[attr-defined]
            self.log(f"device pulls {size} bytes from {url.rsplit('/', 1)[0]}/...")
            try:
                result = self.run(
                    f"wget -q -O {shell_quote(tmp)} {shell_quote(url)} || {{ rm -f {shell_quote(tmp)}; exit 5; }}; "
                    f"{check}".encode()
                )
            finally:
                server.close()  # type: ignore[attr-defined]
            if result.rc == 5:
                self.log("device pull failed (wget could not fetch): falling back to the shell")
                method = self.pick_put_method("auto", size, False)
            else:
                _raise_transfer(result, "put", remote, method)
                return method
        with open(local, "rb") as src:
            if method == "base64":
                # If the decoder dies early (disk full), cat swallows the rest so no data line reaches the shell.
                cmd = f"base64 -d > {shell_quote(tmp)} || {{ cat > /dev/null; exit 4; }}; {check}"
                produce = Chunker(src, INLINE_CHUNK, lambda d: base64.b64encode(d) + b"\n")
            elif method == "uudecode":
                # uudecode stops at its ==== line: cat then reads up to our ^D, which must not reach the shell.
                cmd = f"uudecode -o {shell_quote(tmp)}; r=$?; cat > /dev/null; [ $r = 0 ] || exit 4; {check}"
                produce = Chunker(
                    src,
                    INLINE_CHUNK,
                    lambda d: base64.b64encode(d) + b"\n",
                    head=b"begin-base64 644 -\n",
                    tail=b"====\n",
                )
            else:
                cmd = (
                    f": > {shell_quote(tmp)} || exit 4; "
                    f'while IFS= read -r l; do printf "$l"; done >> {shell_quote(tmp)}; {check}'
                )
                produce = Chunker(src, PRINTF_CHUNK, lambda d: "".join(f"\\{b:03o}" for b in d).encode() + b"\n")
            self.commands += 1
            try:
                result = self._run_framed(cmd.encode(), deadline=None, stdin_iter=produce)
            except SessionLost as err:
                if err.started:
                    raise
                self.log("session dropped before the upload started: logging in again")
                self.open()
                produce = produce.restart()
                result = self._run_framed(cmd.encode(), deadline=None, stdin_iter=produce)
        _raise_transfer(result, "put", remote, method)
        return method

    def pick_put_method(self, method: str, size: int, http_possible: bool) -> str:
        if method == "auto":
            if http_possible and self.caps.wget and size >= 16384:
                return "http"
            for name in ("base64", "uudecode"):
                if getattr(self.caps, name):
                    return name
            return "printf"
        if method not in {"http", "printf"} and not getattr(self.caps, method):
            raise TransferError(f"transfer method {method} is not available on the device")
        if method == "http" and not http_possible:
            raise TransferError("transfer method http needs a controller address the device can reach")
        return method

    def fetch(self, remote: str, local: str) -> str:
        """Copy a device file to the controller; returns the encoding used."""
        self.open()
        tool, algo = self._checksum_cmd()
        q = shell_quote(remote)
        if self.caps.base64:
            method, dump = "base64", f"base64 {q}"
        elif self.caps.uuencode:
            method, dump = "uuencode", f"uuencode -m {q} x"
        elif self.caps.od:
            method, dump = "od", f"od -An -v -tx1 {q}"
        else:
            raise TransferError("the device has none of base64, uuencode or od: cannot fetch files")
        result = self.run(
            f"[ -r {q} ] || {{ echo 'no such readable file' >&2; exit 2; }}; {tool} {q} && {dump}".encode()
        )
        _raise_transfer(result, "fetch", remote, method)
        head, body = (result.stdout.split(b"\n", 1) + [b""])[:2]
        expected = head.split(b" ", 1)[0].decode(errors="replace").strip()
        if method == "uuencode":
            body = b"\n".join(body.strip().split(b"\n")[1:-1])
        try:
            data = bytes.fromhex(body.decode()) if method == "od" else base64.b64decode(re.sub(rb"\s+", b"", body))
        except (ValueError, binascii.Error) as err:
            raise TransferError(f"fetch {remote}: could not decode the {method} stream: {err}") from None
        got = hashlib.new(algo, data).hexdigest()
        if got != expected:
            raise TransferError(f"fetch {remote}: {algo} mismatch: device has {expected}, received {got}")
        tmp = f"{local}.fmtmp{secrets.token_hex(4)}"
        with open(tmp, "wb") as dst:
            dst.write(data)
        os.replace(tmp, local)
        return method


# Runs once per login: writable temp dir and the tools transfers need, each tried for real (a busybox applet may
# be configured out although `command -v` finds a symlink).
PROBE = r"""for d in "$TMPDIR" /tmp /var/tmp /dev/shm /run /data; do
  [ -n "$d" ] && [ -d "$d" ] && [ -w "$d" ] && { echo "tmp=$d"; break; }
done
[ "$(printf 'QQ==\n' | base64 -d 2>/dev/null)" = A ] && echo base64=1
[ "$(printf 'begin-base64 644 -\nQQ==\n====\n' | uudecode -o /dev/stdout 2>/dev/null)" = A ] && echo uudecode=1
printf A | uuencode -m x 2>/dev/null | grep -q QQ== && echo uuencode=1
printf '' | sha256sum 2>/dev/null | grep -q e3b0c44298fc1c149afbf4c8996fb924 && echo sha256=1
printf '' | md5sum 2>/dev/null | grep -q d41d8cd98f00b204e9800998ecf8427e && echo md5=1
wget --help 2>&1 | grep -qi usage && echo wget=1
[ "$(printf A | od -An -tx1 2>/dev/null | tr -d ' ')" = 41 ] && echo od=1
true"""


def _file_digest(path: str, algo: str) -> str:
    digest = hashlib.new(algo)
    with open(path, "rb") as src:
        while block := src.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class Chunker:
    """Produces ~64 KiB batches of encoded lines from a file, head first and tail last, then None."""

    def __init__(
        self, src: BinaryIO, size: int, encode: Callable[[bytes], bytes], head: bytes = b"", tail: bytes = b""
    ) -> None:
        self.src, self.size, self.encode, self.head, self.tail = src, size, encode, head, tail
        self.pending_head = head
        self.done = False

    def restart(self) -> Chunker:
        self.src.seek(0)
        return Chunker(self.src, self.size, self.encode, self.head, self.tail)

    def __call__(self) -> bytes | None:
        if self.done:
            return None
        out = bytearray(self.pending_head)
        self.pending_head = b""
        while len(out) < 65536:
            block = self.src.read(self.size)
            if not block:
                self.done = True
                out += self.tail
                break
            out += self.encode(block)
        return bytes(out)


def _raise_transfer(result: Result, verb: str, path: str, method: str) -> None:
    if result.rc != 0:
        why = (result.stderr or result.stdout).decode(errors="replace").strip()[-300:]
        raise TransferError(f"{verb} {path} ({method}) failed with exit {result.rc}: {why}")


# ------------------------------------------------------------------------------------------------------- telnet

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
