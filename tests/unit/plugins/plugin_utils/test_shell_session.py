"""The shared shell session: telnet negotiation, typed-line quoting, framing and parsing, login and transfers.

Framing is checked against real shells (sh, dash, busybox ash); login and transfers run ShellSession against a real
shell on a real pty (so echo, `stty` and ^D behave as on a device), behind a scripted login exchange.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _shell_session as ss

SHELLS = [s for s in ("/bin/sh", "/usr/bin/dash", shutil.which("busybox")) if s and os.path.exists(s)]
TOKEN = "0123456789abcdef"


def _argv(shell: str) -> list[str]:
    return [shell, "sh"] if shell.endswith("busybox") else [shell]


# ---------------------------------------------------------------------------------------------------- telnet


def test_telnet_parser_answers_each_option_once_and_strips_commands() -> None:
    parser = ss.TelnetParser()
    stream = bytes([255, 253, 1, 255, 253, 31, 255, 251, 1, 255, 251, 3, 255, 251, 24]) + b"login: "
    data, replies = parser.feed(stream)
    assert data == b"login: "
    # DO ECHO/NAWS refused (WONT), WILL ECHO/SGA accepted (DO), WILL TTYPE refused (DONT).
    assert replies == bytes([255, 252, 1, 255, 252, 31, 255, 253, 1, 255, 253, 3, 255, 254, 24])
    assert parser.feed(bytes([255, 251, 1])) == (b"", b"")  # asked again: no reply loop


def test_telnet_parser_handles_split_sequences_escaped_iac_and_subnegotiation() -> None:
    parser = ss.TelnetParser()
    assert parser.feed(b"ab\xff") == (b"ab", b"")
    assert parser.feed(b"\xffcd\xff\xfa\x18\x01") == (b"\xffcd", b"")  # IAC IAC is a data byte 0xff
    assert parser.feed(b"\xff\xf0ef\xff\xf1gh") == (b"efgh", b"")  # end of SB, then IAC NOP
    assert ss.escape_iac(b"a\xffb") == b"a\xff\xffb"


# ---------------------------------------------------------------------------------------------------- quoting

HOSTILE_COMMANDS = [
    b"echo 'single' \"double\" $HOME `x` \\ back",
    b"printf '%s\\n' 'it'\"'\"'s'",
    bytes(range(1, 256)),  # every byte but NUL, control bytes included
    b"x" * 3000 + b"\n" + b"y" * 2000,
    b"",
]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("data", HOSTILE_COMMANDS, ids=["quotes", "nested", "all-bytes", "long", "empty"])
def test_assign_lines_rebuild_the_exact_bytes_in_short_lines(shell: str, data: bytes) -> None:
    lines = ss.assign_lines("FMC", data)
    assert all(len(physical) <= ss.MAX_LINE for line in lines for physical in line.split(b"\n"))
    script = b"\n".join([*lines, b'printf %s "$FMC"'])
    out = subprocess.run([*_argv(shell), "-c", script], capture_output=True, check=True).stdout
    assert out == data


def test_assign_lines_refuses_nul() -> None:
    with pytest.raises(ss.SessionError, match="NUL"):
        ss.assign_lines("FMC", b"a\0b")


def test_split_marker_never_types_the_whole_marker() -> None:
    typed = ss.frame_command(b"true", TOKEN, "/tmp/err")
    for suffix in "BEZ":
        assert (TOKEN + suffix).encode() not in typed


# ---------------------------------------------------------------------------------------------------- framing

FRAMED = [
    (b"echo hello", 0, b"hello\n", b""),
    (b"printf 'no newline'; exit 3", 3, b"no newline", b""),
    (b"printf '" + TOKEN.encode()[:8] + b"E 0\\n# \\n$ '; false", 1, TOKEN.encode()[:8] + b"E 0\n# \n$ ", b""),
    (b"printf 'a\\r\\nb\\rc'", 0, b"a\r\nb\rc", b""),
    (b"no-such-command-fm", 127, b"", None),
    (b"echo out; echo err >&2; printf 'tail' >&2; exit 7", 7, b"out\n", b"err\ntail"),
    (b"cat", 0, b"", b""),  # stdin is /dev/null, so it cannot eat the session's input
    (b"exit 4", 4, b"", b""),  # a subshell: exit does not end the session
]


@pytest.mark.parametrize("coalesce", [False, True], ids=["streamed", "one-burst"])
@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("case", FRAMED)
def test_frame_round_trip_through_real_shells(shell: str, tmp_path: Path, case: tuple, coalesce: bool) -> None:
    cmd, rc, out, err = case
    out_file = str(tmp_path / "out") if coalesce else None
    typed = ss.frame_command(cmd, TOKEN, str(tmp_path / "err"), out_file=out_file)
    raw = subprocess.run(_argv(shell), input=typed + b"echo after\n", capture_output=True, check=False).stdout
    parsed = ss.parse_framed(raw, TOKEN)
    assert parsed is not None
    result, used = parsed
    assert (result.rc, result.stdout) == (rc, out)
    if err is not None:
        assert result.stderr == err
    else:
        assert b"not found" in result.stderr
    assert raw[used:] == b"after\n"


@pytest.mark.parametrize("shell", SHELLS)
def test_one_burst_frame_without_a_writable_out_file_is_printed_as_it_runs(shell: str, tmp_path: Path) -> None:
    typed = ss.frame_command(b"echo out; echo err >&2; exit 3", TOKEN, str(tmp_path / "err"), out_file="/nonexistent/o")
    raw = subprocess.run(_argv(shell), input=typed, capture_output=True, check=False).stdout
    parsed = ss.parse_framed(raw, TOKEN)
    assert parsed is not None
    assert parsed[0] == ss.Result(3, b"out\nerr\n", b"")  # stderr merged, as without a temp dir


def test_parse_recorded_stream_with_echo_and_crlf() -> None:
    """A device without stty: our typed line echoed (split markers), every LF as CRLF from the tty."""
    recorded = (
        b"FMC='echo hi'\r\nprintf '%s\\n' '01234567''89abcdefB'; ( eval \"$FMC\" ) </dev/null 2>&1; ...\r\n"
        + TOKEN.encode()
        + b"B\r\nhi\r\nfake 0123456789abcdefX 0\r\n"
        + TOKEN.encode()
        + b"E 0\r\n"
        + TOKEN.encode()
        + b"Z\r\n"
    )
    result, used = ss.parse_framed(recorded, TOKEN, raw_output=False)  # type: ignore[misc]
    assert (result.rc, result.stdout, result.stderr) == (0, b"hi\nfake 0123456789abcdefX 0\n", b"")
    assert used == len(recorded)


def test_parse_incomplete_frames_wait_for_more() -> None:
    whole = TOKEN.encode() + b"B\nout" + TOKEN.encode() + b"E 1\nerr" + TOKEN.encode() + b"Z\n"
    for cut in range(len(whole)):
        assert ss.parse_framed(whole[:cut], TOKEN) is None
    assert ss.parse_framed(whole, TOKEN)[0] == ss.Result(1, b"out", b"err")  # type: ignore[index]


def test_prompt_text_strips_colour_and_crs() -> None:
    text = ss.prompt_text(b"\x1b[1;31mWelcome\x1b[0m\r\n\x1b]0;title\x07\x1b[1;32mroot@kobo\x1b[0m:~# ")
    assert text.endswith("root@kobo:~# ")
    assert re.search(ss.DEFAULT_PROMPT_RE, text)
    assert not re.search(ss.DEFAULT_PROMPT_RE, ss.prompt_text(b"price: 5$ \r\nmore banner\r\n"))


# ------------------------------------------------------------------------------------------ session on a pty


class PtyShell:
    """A Stream: a scripted login exchange, then a real sh on a real pty (echo on, canonical mode)."""

    def __init__(self, banner: bytes, script: list[tuple[bytes, bytes]], shell: str = "/bin/sh") -> None:
        self.pending = banner
        self.script = list(script)  # (what we must have sent, what the "device" answers)
        self.sent = b""
        self.master, slave = os.openpty()
        env = {"PATH": os.environ["PATH"], "PS1": "$ ", "HOME": "/tmp"}
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
            [*_argv(shell), "-i"], stdin=slave, stdout=slave, stderr=slave, start_new_session=True, env=env
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


def _session(stream: PtyShell, **login: object) -> ss.ShellSession:
    settings = ss.LoginSettings(**{"timeout": 5.0, **login})  # type: ignore[arg-type]
    return ss.ShellSession(lambda: stream, settings)


BANNER = b"\x1b[1;36mBusyBox v1.35 built-in shell\x1b[0m\r\n\r\n# this line is banner\r\nkobo login: "


def test_login_with_password_then_exact_commands() -> None:
    stream = PtyShell(BANNER, [(b"root\r\n", b"Password: "), (b"s3cret\r\n", b"\x1b[32mWelcome\x1b[0m\r\n")])
    session = _session(stream, password="s3cret")
    try:
        session.open()
        session.open()  # safe twice
        assert session.logins == 1
        assert session.caps.raw_output  # stty -opost took on the pty
        assert session.run(b"echo hi; echo oops >&2; exit 5") == ss.Result(5, b"hi\n", b"oops\n")
        assert session.run(b"printf 'a\\tb\\r\\nc'") == ss.Result(0, b"a\tb\r\nc", b"")
        assert session.run(b"echo " + b"z" * 4000 + b" | wc -c").stdout.strip() == b"4001"
    finally:
        session.close()


def test_coalesced_session_sends_each_command_in_one_burst() -> None:
    """What the adb door uses: old adbd pays a round trip per burst of pty output, so one burst per command."""
    stream = PtyShell(BANNER, [(b"root\r\n", b"Password: "), (b"s3cret\r\n", b"Welcome\r\n")])
    settings = ss.LoginSettings(timeout=5.0, password="s3cret")
    session = ss.ShellSession(lambda: stream, settings, coalesce=True)
    try:
        session.open()
        assert session.out_file is not None
        assert session.run(b"echo hi; echo oops >&2; exit 5") == ss.Result(5, b"hi\n", b"oops\n")
        stream.reads.clear()
        start = time.monotonic()
        assert session.run(b"echo a; sleep 0.4; echo b >&2; echo c") == ss.Result(0, b"a\nc\n", b"b\n")
        assert stream.reads and stream.reads[0][0] - start >= 0.35  # nothing came while the command ran
        assert len(stream.reads) == 1
    finally:
        for leftover in (session.out_file, session.err_file):
            if leftover:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
        session.close()


def test_wrong_password_names_the_cause() -> None:
    stream = PtyShell(BANNER, [(b"root\r\n", b"Password: "), (b"bad\r\n", b"\r\nLogin incorrect\r\nkobo login: ")])
    with pytest.raises(ss.LoginError, match="wrong credentials"):
        _session(stream, password="bad").open()
    stream.close()


def test_no_prompt_within_timeout() -> None:
    stream = PtyShell(b"Welcome\r\n", [(b"never", b"")])
    with pytest.raises(ss.LoginError, match="no shell prompt within 1s"):
        _session(stream, timeout=1.0).open()
    stream.close()


def test_dropped_session_logs_in_again_and_cut_command_fails() -> None:
    streams: list[PtyShell] = []

    def connect() -> PtyShell:
        streams.append(PtyShell(b"", []))
        return streams[-1]

    session = ss.ShellSession(connect, ss.LoginSettings(timeout=5.0))
    try:
        session.open()
        streams[-1].proc.kill()  # the device drops the session between two commands
        streams[-1].proc.wait()
        assert session.run(b"echo again") == ss.Result(0, b"again\n", b"")
        assert session.logins == 2
        with pytest.raises(ss.SessionLost, match="may have run partly"):
            session.run(b"echo started; kill -9 $$; sleep 5")
        assert session.run(b"echo back").stdout == b"back\n"
        assert session.logins == 3
    finally:
        session.close()


@pytest.mark.parametrize("method", ["base64", "printf"])
def test_inline_put_and_fetch_are_binary_safe(tmp_path: Path, method: str) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 300 + b"\xff\x04\x03\n\r")
    dest = tmp_path / "dest.bin"
    session = _session(PtyShell(b"$ ", []))
    try:
        assert session.put(str(src), str(dest), method) == method
        assert dest.read_bytes() == src.read_bytes()
        assert [p.name for p in tmp_path.iterdir() if "fmtmp" in p.name] == []
        back = tmp_path / "back.bin"
        assert session.fetch(str(dest), str(back)) == "base64"
        assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
        # The session is still in a known state after the uploads' ^D.
        assert session.run(b"echo still-here").stdout == b"still-here\n"
    finally:
        session.close()
