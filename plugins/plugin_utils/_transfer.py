# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetmesh.tailscale: file transfer through the shell session (put and fetch of ShellSession).

Files go in by device pull over HTTP (busybox wget, from a _http_push.OneShotServer) or inline through the tty
(base64 -d, uudecode or a printf-octal loop reading the tty until ^D), to a temp name, renamed into place only when
the device's sha256 (md5 if it lacks sha256sum) matches; files come out as base64 (uuencode -m or od as
fallbacks), verified too. PROBE is what the session runs once per login to learn which of these tools work.

FileTransfer is a mixin of _shell_session.ShellSession: it runs its commands through the session's open(), run()
and _run_framed(). Pure Python with no Ansible import: the persistent session daemon (_session_daemon.py) runs it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, BinaryIO

try:
    from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._http_push import fetch_command
    from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._progress import Progress, unacked
    from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._shell_errors import SessionLost, TransferError
    from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._shell_framing import (
        INLINE_CHUNK,
        PRINTF_CHUNK,
        Result,
        shell_quote,
    )
except ImportError:  # inside the session process, started as a script: this directory is sys.path[0]
    from _http_push import fetch_command  # type: ignore[no-redef]
    from _progress import Progress, unacked  # type: ignore[no-redef]
    from _shell_errors import SessionLost, TransferError  # type: ignore[no-redef]
    from _shell_framing import INLINE_CHUNK, PRINTF_CHUNK, Result, shell_quote  # type: ignore[no-redef]

if TYPE_CHECKING:
    from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._shell_session import Capabilities

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


class FileTransfer:
    """put() and fetch() of ShellSession, which provides the session attributes and methods declared here."""

    caps: Capabilities
    commands: int
    log: Callable[[str], None]
    open: Callable[[], None]
    run: Callable[..., Result]
    _run_framed: Callable[..., Result]

    def _checksum_cmd(self) -> tuple[str, str]:
        if self.caps.sha256:
            return "sha256sum", "sha256"
        if self.caps.md5:
            self.log("warning: the device has no sha256sum: transfers are verified with md5sum only")
            return "md5sum", "md5"
        raise TransferError("the device has neither sha256sum nor md5sum: cannot verify the transfer")

    def put(
        self,
        local: str,
        remote: str,
        method: str = "auto",
        http: Callable[[str], object] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> str:
        """Copy a local file to the device; returns the method used. http(local) gives a one-shot server;
        progress(line), when given, receives the lines of a _progress.Progress on a transfer that takes a while."""
        self.open()
        tool, algo = self._checksum_cmd()
        digest = _file_digest(local, algo)
        size = os.path.getsize(local)
        tmp = f"{remote}.fmtmp{secrets.token_hex(4)}"
        method = self.pick_put_method(method, size, http is not None)
        meter = Progress(size, f"put {os.path.basename(remote)}", progress) if progress else None
        check = (
            f"h=$({tool} {shell_quote(tmp)}) || exit 4; h=${{h%% *}}; "
            f'if [ "$h" = {digest} ]; then mv -f {shell_quote(tmp)} {shell_quote(remote)}; '
            f'else rm -f {shell_quote(tmp)}; echo "{algo} mismatch: device has $h, expected {digest}" >&2; exit 3; fi'
        )
        if method == "http":
            server = http(local)  # type: ignore[misc]  # pick_put_method returns http only with a factory
            url = server.url  # type: ignore[attr-defined]
            if meter is not None:
                server.on_progress = meter.update  # type: ignore[attr-defined]  # bytes the device has taken
            self.log(f"device pulls {size} bytes from {url.rsplit('/', 1)[0]}/...")
            try:
                qtmp = shell_quote(tmp)
                fetch = fetch_command(url, tmp)
                result = self.run(f"{fetch} > {qtmp} || {{ rm -f {qtmp}; exit 5; }}; {check}".encode())
            finally:
                server.close()  # type: ignore[attr-defined]
            if result.rc == 5:
                self.log("device pull failed (wget could not fetch): falling back to the shell")
                method = self.pick_put_method("auto", size, False)
            else:
                _raise_transfer(result, "put", remote, method)
                if meter is not None:
                    meter.finish()
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
            current = [produce, self.bytes_sent]
            with _watch(meter, lambda: self._taken(*current)):
                try:
                    result = self._run_framed(cmd.encode(), deadline=None, stdin_iter=produce)
                except SessionLost as err:
                    if err.started:
                        raise
                    self.log("session dropped before the upload started: logging in again")
                    self.open()
                    produce = produce.restart()
                    current[:] = [produce, self.bytes_sent]
                    result = self._run_framed(cmd.encode(), deadline=None, stdin_iter=produce)
        _raise_transfer(result, "put", remote, method)
        if meter is not None:
            meter.finish()
        return method

    def _taken(self, produce: Chunker, sent_before: int) -> int:
        """File bytes of an inline put the device has acknowledged: the stream bytes sent for it, less what the
        socket still holds unacknowledged, at the file-to-encoded ratio of what the Chunker produced so far."""
        sock = getattr(self.stream, "sock", None)
        wire = self.bytes_sent - sent_before - (unacked(sock) if sock is not None else 0)
        if produce.produced <= 0 or wire <= 0:
            return 0
        return min(produce.read, wire * produce.read // produce.produced)

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


def _file_digest(path: str, algo: str) -> str:
    digest = hashlib.new(algo)
    with open(path, "rb") as src:
        while block := src.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class Chunker:
    """Produces ~64 KiB batches of encoded lines from a file, head first and tail last, then None.

    read and produced count file bytes read and encoded bytes made, for the progress of the put."""

    def __init__(
        self, src: BinaryIO, size: int, encode: Callable[[bytes], bytes], head: bytes = b"", tail: bytes = b""
    ) -> None:
        self.src, self.size, self.encode, self.head, self.tail = src, size, encode, head, tail
        self.pending_head = head
        self.done = False
        self.read = self.produced = 0

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
            self.read += len(block)
        self.produced += len(out)
        return bytes(out)


@contextlib.contextmanager
def _watch(meter: Progress | None, taken: Callable[[], int], every: float = 0.5) -> Iterator[None]:
    """While the body runs, feed meter with taken() every `every` seconds from a thread: the session's own thread
    is busy sending, then waiting for the command's end."""
    if meter is None:
        yield
        return
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(every):
            meter.update(taken())

    thread = threading.Thread(target=poll, name="put-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _raise_transfer(result: Result, verb: str, path: str, method: str) -> None:
    if result.rc != 0:
        why = (result.stderr or result.stdout).decode(errors="replace").strip()[-300:]
        raise TransferError(f"{verb} {path} ({method}) failed with exit {result.rc}: {why}")
