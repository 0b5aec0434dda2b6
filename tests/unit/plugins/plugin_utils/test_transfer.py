"""File transfer through the shell session: inline put and fetch, binary safe, on a real shell on a real pty."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from shell_harness import PtyShell, session_on


@pytest.mark.parametrize("method", ["base64", "printf"])
def test_inline_put_and_fetch_are_binary_safe(tmp_path: Path, method: str) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 300 + b"\xff\x04\x03\n\r")
    dest = tmp_path / "dest.bin"
    session = session_on(PtyShell(b"$ ", []))
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
