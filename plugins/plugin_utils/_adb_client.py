# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to the fleetmesh.tailscale collection: not a public API, may change without notice.

A thin wrapper over the stock `adb` client (Debian's 1.0.41 and current platform-tools) for the adb connection
plugin: device selection by serial (USB serial or host:port), `adb connect` for TCP serials with the device's
answer turned into a clear error, features, framed one-shot shells, push and pull, and an interactive `adb shell`
as a byte stream for the shared shell session (_shell_session.ShellSession) when the device asks for a login.

Pure Python with no Ansible import: the persistent session process (_session_daemon.py) imports it too.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import struct
import subprocess
import time
import typing as t

try:
    from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._progress import unacked
    from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._shell_framing import prompt_text
except ImportError:  # inside the session process, started as a script: this directory is sys.path[0]
    from _progress import unacked  # type: ignore[no-redef]
    from _shell_framing import prompt_text  # type: ignore[no-redef]

# What `adb get-state` / `adb connect` print, and what each means for the user.
STATE_ERRORS = {
    "unauthorized": "the device has not authorized this computer's adb key (accept the prompt on the device, or put "
    "~/.android/adbkey.pub in the device's /data/misc/adb/adb_keys)",
    "offline": "the device is offline (adbd not answering: replug it, or restart adbd on the device)",
    "no permissions": "no permission to open the USB device (udev rules for adb, or run as root)",
}
# adb client messages that mean the device (not the command) is gone.
GONE_RE = re.compile(
    r"error: (?:closed|device offline|device '[^']*' not found|no devices|protocol fault|"
    r"device unauthorized|device still connecting)|connection reset|broken pipe|failed to get feature set",
    re.IGNORECASE,
)
# adb client messages printed before the shell service was opened on the device: the command never started. A
# rebooted or re-made device at the same host:port leaves the adb server a stale transport that fails this way.
NOT_STARTED_RE = re.compile(
    r"(?:adb: )?error: (?:closed|device offline|device '[^']*' not found|no devices(?:/emulators)? found|"
    r"device still connecting|failed to get feature set: .*)",
    re.IGNORECASE,
)
# `adb connect` attempts (each after `adb disconnect`) for a TCP serial, all within the connection timeout.
CONNECT_TRIES = 3


class AdbError(Exception):
    """The adb client or the device refused; the message says why in the user's terms."""


class DeviceGone(AdbError):
    """The device went away (unplugged, adbd died, link cut): the host is unreachable."""


class NotStarted(DeviceGone):
    """The adb server's transport failed before the device opened the shell: the command never ran, so it can be
    sent again once the transport is made afresh (adb disconnect + adb connect)."""


class LoginRequired(AdbError):
    """The device's adb shell greeted with a login prompt before running the command (which therefore never ran)."""


# --------------------------------------------------------------------------------------------------- framing


def frame(command: str, token: str, tmp_dir: str | None = "/tmp") -> str:
    """Wrap a command so it runs in a known way and its exit status and stderr follow its stdout.

    Printed: a begin marker (anything before it is the device's greeting, such as a login prompt), the command's
    stdout, an end marker with the exit status, then the command's stderr. The command runs in a subshell (a
    function whose body is a subshell: its own `exit` cannot skip the frame) with stdin from /dev/null (no command
    can hang reading the pty). Markers are assembled by printf from two arguments, so the command text itself
    (which `ps` could print) never contains one whole.

    Round trips: old adbd sends the pty's output in WRTE messages and waits for the client's OKAY after each, so
    every separate burst of output costs a round trip. With a writable tmp_dir the whole frame (markers, stdout,
    stderr) is therefore collected in a temp file and sent by one `cat` at the very end: one burst, and the stream
    closes right after it (the temp files are unlinked before that cat starts). Without one (tmp_dir unset or not
    writable) the frame is printed as the command runs and stderr is merged into stdout.
    """
    body = f"FMc() (\n{command}\n)\n"
    begin = f"printf '%s%s\\n' __FMB_ {token}"
    end = f"printf '\\n%s%s:%d\\n' __FME_ {token} $?"
    stream = f"{begin}; FMc </dev/null 2>&1; {end}"
    if not tmp_dir:
        return body + stream
    tmp = f"{tmp_dir}/.fmadb-{token}"
    return (
        f"{body}FMt={tmp}\nif {{ {begin} >$FMt.o; }} 2>/dev/null; then "
        f"FMc </dev/null >>$FMt.o 2>$FMt.e; {end} >>$FMt.o; [ -s $FMt.e ] && cat $FMt.e >>$FMt.o; "
        f"exec <$FMt.o; rm -f $FMt.o $FMt.e; exec cat\nelse {stream}; fi"
    )


def begin_marker(token: str) -> bytes:
    return b"__FMB_" + token.encode() + b"\n"


def unframe(output: bytes, token: str) -> tuple[int, bytes, bytes]:
    """(exit status, stdout, stderr) of a framed command's output; CRLF from the device's pty becomes LF.

    A pty turns each LF the program writes into CRLF (and leaves a lone CR alone), so CRLF -> LF is its exact
    inverse: the program's own CR bytes survive.
    """
    data = output.replace(b"\r\n", b"\n")
    begin = begin_marker(token)
    start = data.find(begin)
    if start < 0:
        raise AdbError(f"the device did not start the command (it said: {_printable(data)!r})")
    data = data[start + len(begin) :]
    marker = b"\n__FME_" + token.encode() + b":"
    at = data.find(marker)
    if at < 0:
        raise DeviceGone("the command's output ended before its exit status (connection cut while it ran?)")
    status, _nl, stderr = data[at + len(marker) :].partition(b"\n")
    if not status.strip().isdigit():
        raise DeviceGone(f"unreadable exit status in framed output: {status[:40]!r}")
    return int(status), data[:at], stderr


def _printable(data: bytes, limit: int = 200) -> str:
    return data[-limit:].decode(errors="replace").strip()


# ---------------------------------------------------------------------------------------------------- client


class AdbClient:
    """One device, addressed by serial, through one adb server."""

    def __init__(self, adb_path: str, serial: str, server_port: int | None = None, timeout: float = 30) -> None:
        self.adb_path = adb_path
        self.serial = serial
        self.server_port = server_port
        self.timeout = timeout

    @property
    def is_tcp(self) -> bool:
        return re.fullmatch(r"[^:\s]+:\d+", self.serial) is not None

    def argv(self, *args: str, device: bool = True) -> list[str]:
        cmd = [self.adb_path]
        if self.server_port:
            cmd += ["-P", str(self.server_port)]
        if device:
            cmd += ["-s", self.serial]
        return cmd + list(args)

    def run(self, *args: str, device: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess[bytes]:
        cmd = self.argv(*args, device=device)
        try:
            return subprocess.run(
                cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout or self.timeout, check=False
            )
        except FileNotFoundError:
            raise AdbError(f"adb client not found at {self.adb_path!r} (install it, or set adb_path)") from None
        except subprocess.TimeoutExpired as exc:
            raise DeviceGone(
                f"adb {' '.join(args[:1])} {self.serial}: no answer within {exc.timeout:.0f} s (device unreachable?)"
            ) from None

    def state(self) -> str:
        """The device's state as the adb server sees it (device, offline, unauthorized, ...), or '' if unknown."""
        proc = self.run("get-state")
        text = (proc.stdout + proc.stderr).decode(errors="replace").strip()
        if proc.returncode == 0:
            return text.splitlines()[-1].strip() if text else ""
        for state in STATE_ERRORS:
            if state in text:
                return state
        return ""

    def ensure_ready(self) -> None:
        """Make the device usable (adb connect for TCP serials) or raise AdbError naming the cause."""
        state = self.state()
        if state == "device":
            return
        if self.is_tcp and state in ("", "offline"):
            state = self.reconnect(stale=state == "offline")
        if state == "device":
            return
        if state in STATE_ERRORS:
            raise DeviceGone(f"{self.serial}: {STATE_ERRORS[state]}")
        raise DeviceGone(f"{self.serial}: device not found by the adb server (not plugged in, or wrong serial)")

    def reconnect(self, stale: bool = True) -> str:
        """`adb disconnect` (a stale transport) then `adb connect`, again up to CONNECT_TRIES times within the
        timeout while the connection is taken but the device does not come up as "device".

        Returns the last state seen; raises DeviceGone at once when the device refuses the TCP connection or never
        answers (another try would only wait as long again).
        """
        deadline = time.monotonic() + self.timeout
        state = ""
        for attempt in range(1, CONNECT_TRIES + 1):
            if stale or attempt > 1:
                self.disconnect()
            proc = self.run("connect", self.serial, device=False)
            answer = (proc.stdout + proc.stderr).decode(errors="replace").strip()
            if "connected to" not in answer or "failed" in answer or "unable" in answer:
                why = STATE_ERRORS.get(self.state())  # e.g. offline: it took the TCP connection but said nothing
                raise DeviceGone(
                    f"adb connect {self.serial} failed: {answer or 'no answer'}" + (f"; {why}" if why else "")
                )
            state = self._settle(deadline)
            if state == "device" or time.monotonic() >= deadline:
                break
            time.sleep(min(0.5 * attempt, max(0.0, deadline - time.monotonic())))
        return state

    def _settle(self, until: float, wait: float = 5.0) -> str:
        """State after `adb connect`, which returns before the device's CNXN (or AUTH) has come back."""
        deadline = min(time.monotonic() + wait, until)
        while True:
            state = self.state()
            if state == "device" or time.monotonic() >= deadline:
                return state
            time.sleep(0.1)

    def features(self) -> set[str] | None:
        """The device's features, or None when the adb server does not know the device (yet)."""
        proc = self.run("features")
        if proc.returncode != 0:
            return None
        return {f.strip() for f in re.split(r"[\s,]+", proc.stdout.decode(errors="replace")) if f.strip()}

    def disconnect(self) -> None:
        if self.is_tcp:
            self.run("disconnect", self.serial, device=False)

    def shell_v2(self, command: str, timeout: float | None = None) -> tuple[int, bytes, bytes]:
        """Run a command with the shell protocol (-T: no pty, raw output); adb returns the remote exit status."""
        proc = self.run("shell", "-T", command, timeout=timeout)
        text = proc.stderr.decode(errors="replace")
        # Only the adb client's own one-line error, with no output: the command's stderr shares this stream here.
        if proc.returncode in (1, 255) and not proc.stdout and NOT_STARTED_RE.fullmatch(text.strip()):
            raise NotStarted(f"adb shell on {self.serial}: {_printable(proc.stderr)}")
        if proc.returncode == 255 and GONE_RE.search(text):
            raise DeviceGone(f"adb shell on {self.serial}: {_printable(proc.stderr)}")
        return proc.returncode, proc.stdout, proc.stderr

    def shell_framed(
        self,
        command: str,
        token: str,
        tmp_dir: str | None,
        timeout: float | None = None,
        login_res: t.Sequence[str] = (),
    ) -> tuple[int, bytes, bytes]:
        """Run a framed command on a device without shell_v2 and return its real (rc, stdout, stderr).

        When the device prints something matching one of login_res (login, password prompt) before the command's
        begin marker and then waits, the shell is asking for a login: LoginRequired is raised (the command never
        started).
        """
        argv = self.argv("shell", frame(command, token, tmp_dir))
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise AdbError(f"adb client not found at {self.adb_path!r} (install it, or set adb_path)") from None
        deadline = time.monotonic() + (timeout or self.timeout) if (timeout or self.timeout) else None
        out, err = bytearray(), bytearray()
        streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}  # type: ignore[union-attr]
        started = False
        begin = begin_marker(token)
        login = [re.compile(regex) for regex in login_res]
        try:
            while streams:
                wait = 0.3 if (login and not started and out) else 1.0
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise DeviceGone(f"adb shell on {self.serial}: no answer within {timeout or self.timeout:g}s")
                    wait = min(wait, left)
                ready = select.select(list(streams), [], [], wait)[0]
                asking = not ready and login and not started and out
                if asking and any(regex.search(prompt_text(out)) for regex in login):
                    raise LoginRequired(f"{self.serial}: the adb shell asks for a login")
                for fd in ready:
                    chunk = os.read(fd, 262144)
                    if chunk:
                        streams[fd] += chunk
                    else:
                        del streams[fd]
                if not started and begin in out.replace(b"\r\n", b"\n"):
                    started = True
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        text = err.decode(errors="replace")
        if not started and not out and NOT_STARTED_RE.search(text):  # stderr here is the adb client's alone
            raise NotStarted(f"adb shell on {self.serial} failed: {text.strip()[-400:]}")
        if rc != 0 or (not started and GONE_RE.search(text)):
            # Old adbd always returns 0: a failure here is the client's or the transport's.
            raise DeviceGone(f"adb shell on {self.serial} failed: {(text or _printable(bytes(out))).strip()[-400:]}")
        return unframe(bytes(out), token)

    # -- sync protocol, spoken to the adb server directly (its host protocol: SERVICES.TXT / SYNC.TXT in AOSP's
    # packages/modules/adb). `adb push` pays two round trips more than the transfer needs: a STAT of the
    # destination, and after QUIT a wait for the device to close the stream. Same server, same transport.

    def _sync(self) -> socket.socket | None:
        """A socket on the device's sync service (one round trip), or None when the adb server is not reachable
        that way (ADB_SERVER_SOCKET set, no server on the port): then the adb client itself is used."""
        if os.environ.get("ADB_SERVER_SOCKET"):
            return None
        port = self.server_port or int(os.environ.get("ANDROID_ADB_SERVER_PORT") or 5037)
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=self.timeout)
        except OSError:
            return None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for request in (f"host:transport:{self.serial}", "sync:"):
                data = request.encode()
                sock.sendall(b"%04x" % len(data) + data)
                status = _recv_exact(sock, 4)
                if status != b"OKAY":
                    why = _recv_exact(sock, int(_recv_exact(sock, 4), 16)).decode(errors="replace")
                    raise NotStarted(f"adb server: {why or status.decode(errors='replace')}")  # nothing sent yet
        except BaseException:
            sock.close()
            raise
        return sock

    def push(self, local: str, remote: str, progress: t.Callable[[int], None] | None = None) -> None:
        """Copy a local file to remote (a temp name: a failure before the device opened sync is NotStarted).

        progress(count), when given, is told after each write how many bytes of the file the adb server has taken
        (not with the adb client's own push, used when the server's socket is not reachable)."""
        try:
            sock = self._sync()
        except (OSError, EOFError) as exc:
            raise NotStarted(f"adb push to {remote} failed: {exc}") from None
        if sock is None:
            self._push_client(local, remote)
            return
        try:
            with sock, open(local, "rb") as src:
                spec = f"{remote},{os.fstat(src.fileno()).st_mode}".encode()
                sock.settimeout(max(self.timeout, 600))
                # One buffer per write: the adb server sends what it has read as one WRTE and waits for the
                # device's OKAY before the next, so a SEND header written alone would cost a round trip by itself.
                out = bytearray(b"SEND" + struct.pack("<I", len(spec)) + spec)
                while block := src.read(SYNC_DATA_MAX):
                    out += b"DATA" + struct.pack("<I", len(block)) + block
                    if len(out) >= SYNC_DATA_MAX:
                        sock.sendall(out)
                        out.clear()
                        if progress is not None:
                            progress(max(src.tell() - unacked(sock), 0))
                sock.sendall(out + b"DONE" + struct.pack("<I", int(time.time())))
                _sync_status(sock, f"adb push to {remote}")
                sock.sendall(b"QUIT" + struct.pack("<I", 0))  # no need to wait for the device's close
        except (OSError, EOFError) as exc:
            raise self._transfer_error(f"adb push to {remote} failed: {exc}") from None

    def pull(self, remote: str, local: str) -> None:
        """Copy remote to a local file (the caller's temp name)."""
        try:
            sock = self._sync()
        except (OSError, EOFError) as exc:
            raise DeviceGone(f"adb pull of {remote} failed: {exc}") from None
        if sock is None:
            self._pull_client(remote, local)
            return
        try:
            with sock, open(local, "wb") as dst:
                sock.settimeout(max(self.timeout, 600))
                path = remote.encode()
                sock.sendall(b"RECV" + struct.pack("<I", len(path)) + path)
                while True:
                    ident, size = struct.unpack("<4sI", _recv_exact(sock, 8))
                    if ident == b"DONE":
                        break
                    if ident == b"FAIL":
                        why = _recv_exact(sock, size).decode(errors="replace")
                        raise AdbError(f"adb pull of {remote} failed: {why}")
                    if ident != b"DATA" or size > SYNC_DATA_MAX:
                        raise DeviceGone(f"adb pull of {remote}: unexpected sync reply {ident!r}")
                    dst.write(_recv_exact(sock, size))
                sock.sendall(b"QUIT" + struct.pack("<I", 0))
        except (OSError, EOFError) as exc:
            raise self._transfer_error(f"adb pull of {remote} failed: {exc}") from None

    def _push_client(self, local: str, remote: str) -> None:
        proc = self.run("push", local, remote, timeout=max(self.timeout, 600))
        if proc.returncode != 0 and NOT_STARTED_RE.search(_tail(proc)):  # to a temp name: safe to push again
            raise NotStarted(f"adb push to {remote} failed: {_tail(proc)}")
        if proc.returncode != 0:
            raise self._transfer_error(f"adb push to {remote} failed: {_tail(proc)}")

    def _pull_client(self, remote: str, local: str) -> None:
        proc = self.run("pull", remote, local, timeout=max(self.timeout, 600))
        if proc.returncode != 0:
            raise self._transfer_error(f"adb pull of {remote} failed: {_tail(proc)}")

    def _transfer_error(self, message: str) -> AdbError:
        """DeviceGone when the device itself is no longer there, else a plain AdbError (disk full, no such file)."""
        if self.state() != "device":
            return DeviceGone(f"{message} (the device is gone)")
        return AdbError(message)


SYNC_DATA_MAX = 64 * 1024  # the sync protocol's largest DATA chunk


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("the adb server closed the connection (device gone?)")
        data += chunk
    return bytes(data)


def _sync_status(sock: socket.socket, what: str) -> None:
    ident, size = struct.unpack("<4sI", _recv_exact(sock, 8))
    if ident == b"OKAY":
        return
    if ident == b"FAIL":
        raise AdbError(f"{what} failed: {_recv_exact(sock, size).decode(errors='replace')}")
    raise DeviceGone(f"{what}: unexpected sync reply {ident!r}")


def _tail(proc: subprocess.CompletedProcess[bytes], limit: int = 400) -> str:
    text = (proc.stderr + proc.stdout).decode(errors="replace").strip()
    return text[-limit:] if text else f"exit status {proc.returncode}"


def feature_list(features: t.Iterable[str]) -> str:
    return ",".join(sorted(features)) or "none"


# ------------------------------------------------------------------------------------------- interactive stream


class AdbShellStream:
    """An interactive `adb shell` (a pty on the device) as a _shell_session.Stream, for devices that ask for a login.

    The adb client forwards its stdin to the device's pty and the pty's output to its stdout. Errors of the client
    itself (device gone) arrive on the same stream, where the session's login step reports them.
    """

    def __init__(self, client: AdbClient) -> None:
        try:
            self.proc = subprocess.Popen(  # pylint: disable=consider-using-with  # lives as long as the session
                # -e none: with its ~. escape on, the client reads stdin a byte at a time, and the adb server then
                # sends a typed command's first byte alone and the rest a round trip later.
                client.argv("shell", "-e", "none"),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                bufsize=0,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise AdbError(f"adb client not found at {client.adb_path!r} (install it, or set adb_path)") from None
        self.eof = False

    def fileno(self) -> int:
        return self.proc.stdout.fileno()  # type: ignore[union-attr]

    def send(self, data: bytes) -> None:
        fd = self.proc.stdin.fileno()  # type: ignore[union-attr]
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def recv(self, timeout: float | None) -> bytes | None:
        if not select.select([self.fileno()], [], [], timeout)[0]:
            return None
        data = os.read(self.fileno(), 262144)
        if not data:
            self.eof = True
        return data

    def alive(self) -> bool:
        """False once the adb client exited (device gone, shell ended) or its output reached EOF."""
        return not self.eof and self.proc.poll() is None

    def close(self) -> None:
        self.eof = True
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # type: ignore[union-attr]
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError):
            self.proc.stdout.close()  # type: ignore[union-attr]

    def local_address(self) -> str | None:
        return None
