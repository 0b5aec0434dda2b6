"""The shell session: login, exact commands, one-burst frames, and logging in again after a drop.

ShellSession runs against a real shell on a real pty (so echo, `stty` and ^D behave as on a device), behind a
scripted login exchange (shell_harness.PtyShell).
"""

from __future__ import annotations

import contextlib
import os
import time

import pytest
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _shell_errors as se
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _shell_framing as sf
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _shell_session as ss
from shell_harness import PtyShell, session_on

BANNER = b"\x1b[1;36mBusyBox v1.35 built-in shell\x1b[0m\r\n\r\n# this line is banner\r\nkobo login: "


def test_login_with_password_then_exact_commands() -> None:
    stream = PtyShell(BANNER, [(b"root\r\n", b"Password: "), (b"s3cret\r\n", b"\x1b[32mWelcome\x1b[0m\r\n")])
    session = session_on(stream, password="s3cret")
    try:
        session.open()
        session.open()  # safe twice
        assert session.logins == 1
        assert session.caps.raw_output  # stty -opost took on the pty
        assert session.run(b"echo hi; echo oops >&2; exit 5") == sf.Result(5, b"hi\n", b"oops\n")
        assert session.run(b"printf 'a\\tb\\r\\nc'") == sf.Result(0, b"a\tb\r\nc", b"")
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
        assert session.run(b"echo hi; echo oops >&2; exit 5") == sf.Result(5, b"hi\n", b"oops\n")
        stream.reads.clear()
        start = time.monotonic()
        assert session.run(b"echo a; sleep 0.4; echo b >&2; echo c") == sf.Result(0, b"a\nc\n", b"b\n")
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
    with pytest.raises(se.LoginError, match="wrong credentials"):
        session_on(stream, password="bad").open()
    stream.close()


def test_no_prompt_within_timeout() -> None:
    stream = PtyShell(b"Welcome\r\n", [(b"never", b"")])
    with pytest.raises(se.LoginError, match="no shell prompt within 1s"):
        session_on(stream, timeout=1.0).open()
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
        assert session.run(b"echo again") == sf.Result(0, b"again\n", b"")
        assert session.logins == 2
        with pytest.raises(se.SessionLost, match="may have run partly"):
            session.run(b"echo started; kill -9 $$; sleep 5")
        assert session.run(b"echo back").stdout == b"back\n"
        assert session.logins == 3
    finally:
        session.close()
