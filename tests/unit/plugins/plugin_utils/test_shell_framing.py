"""Typed-line quoting, framing and parsing, checked against real shells (sh, dash, busybox ash)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _shell_errors as se
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _shell_framing as sf
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _shell_session as ss
from shell_harness import SHELLS, TOKEN, argv

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
    lines = sf.assign_lines("FMC", data)
    assert all(len(physical) <= sf.MAX_LINE for line in lines for physical in line.split(b"\n"))
    script = b"\n".join([*lines, b'printf %s "$FMC"'])
    out = subprocess.run([*argv(shell), "-c", script], capture_output=True, check=True).stdout
    assert out == data


def test_assign_lines_refuses_nul() -> None:
    with pytest.raises(se.SessionError, match="NUL"):
        sf.assign_lines("FMC", b"a\0b")


def test_split_marker_never_types_the_whole_marker() -> None:
    typed = sf.frame_command(b"true", TOKEN, "/tmp/err")
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
    typed = sf.frame_command(cmd, TOKEN, str(tmp_path / "err"), out_file=out_file)
    raw = subprocess.run(argv(shell), input=typed + b"echo after\n", capture_output=True, check=False).stdout
    parsed = sf.parse_framed(raw, TOKEN)
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
    typed = sf.frame_command(b"echo out; echo err >&2; exit 3", TOKEN, str(tmp_path / "err"), out_file="/nonexistent/o")
    raw = subprocess.run(argv(shell), input=typed, capture_output=True, check=False).stdout
    parsed = sf.parse_framed(raw, TOKEN)
    assert parsed is not None
    assert parsed[0] == sf.Result(3, b"out\nerr\n", b"")  # stderr merged, as without a temp dir


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
    result, used = sf.parse_framed(recorded, TOKEN, raw_output=False)  # type: ignore[misc]
    assert (result.rc, result.stdout, result.stderr) == (0, b"hi\nfake 0123456789abcdefX 0\n", b"")
    assert used == len(recorded)


def test_parse_incomplete_frames_wait_for_more() -> None:
    whole = TOKEN.encode() + b"B\nout" + TOKEN.encode() + b"E 1\nerr" + TOKEN.encode() + b"Z\n"
    for cut in range(len(whole)):
        assert sf.parse_framed(whole[:cut], TOKEN) is None
    assert sf.parse_framed(whole, TOKEN)[0] == sf.Result(1, b"out", b"err")  # type: ignore[index]


def test_prompt_text_strips_colour_and_crs() -> None:
    text = sf.prompt_text(b"\x1b[1;31mWelcome\x1b[0m\r\n\x1b]0;title\x07\x1b[1;32mroot@kobo\x1b[0m:~# ")
    assert text.endswith("root@kobo:~# ")
    assert re.search(ss.DEFAULT_PROMPT_RE, text)
    assert not re.search(ss.DEFAULT_PROMPT_RE, sf.prompt_text(b"price: 5$ \r\nmore banner\r\n"))
