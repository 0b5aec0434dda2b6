# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetmesh.tailscale: what the shell session types and how it reads the answer back.

- quoting: shell_quote, and assign_lines, which types any bytes but NUL into a shell variable as `C='...'` lines
  (each well below busybox ash's ~1 KiB line limit; control bytes as printf octal);
- framing: frame_command runs the command as `( eval "$C" )` between markers made of a fresh random token
  (split_marker: an echo of the typed line never matches), so stdout and the real exit status come back exactly
  whatever the output holds, with stderr from a temp file after the status; parse_framed reads a frame back into
  a Result;
- prompt_text: what the device printed, colour codes stripped, for the login prompt regexes.

Pure Python with no Ansible import: the persistent session daemon (_session_daemon.py) runs it too.
"""

from __future__ import annotations

import dataclasses
import re

try:
    from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._shell_errors import SessionError
except ImportError:  # inside the session process, started as a script: this directory is sys.path[0]
    from _shell_errors import SessionError  # type: ignore[no-redef]

# Typed lines stay well below busybox ash's 1024-byte line editing buffer and the tty's 4095-byte canonical limit.
MAX_LINE = 768
INLINE_CHUNK = 576  # payload bytes per inline base64 line (768 chars of base64)
PRINTF_CHUNK = 180  # payload bytes per printf-octal line (720 chars)
EOF_CHAR = b"\x04"  # VEOF: ends the reading command's stdin when typed at the start of a line

ANSI_RE = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>]")


@dataclasses.dataclass
class Result:
    rc: int
    stdout: bytes
    stderr: bytes


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
