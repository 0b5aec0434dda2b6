"""The lab adbd: an OLD adbd (as on Quectel QuecOpen LTE modules) speaking the ADB wire protocol over TCP.

It is what the stock `adb` client (Debian's 1.0.41) talks to on a quecopen lab device:

    python -m fleetlab.adbd --listen ADDR:PORT --root ROOTFS [--login-file FILE | --login-prompt] [--hostname NAME]

Faithful to old adbd where the collection depends on it:
- CNXN with protocol version 0x01000000 (data checksums) and max payload 4096; no AUTH; a banner WITHOUT any
  features (no shell_v2, cmd, stat_v2, ls_v2): `adb shell` exits 0 whatever the command did.
- A message whose data is longer than 4096 bytes drops the connection, as old adbd's check_header did.
- `shell:` and `shell:CMD` run under a pty: stdout and stderr come back merged, with CRLF line endings. The
  stream closes when the shell process exits (background children do not hold it open).
- `sync:` with STAT, LIST, SEND, RECV and QUIT (v1 sync protocol).
- Optional login (--login-file FILE holding `user:password`, or --login-prompt with FLEETLAB_ADB_LOGIN in the
  environment): every shell stream first asks `HOST login: ` and `Password: `, like the seed's module.

The lab runs it with the HOST python inside the device's namespaces; the device rootfs has no python. So shells are
exec'd chrooted into ROOTFS, and sync file operations run in a forked child that chroots first (absolute symlinks
in the rootfs then resolve inside it).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import fcntl
import hmac
import logging
import os
import pty
import select
import signal
import socket
import stat
import struct
import sys
import termios
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fleetlab import adb_protocol as ap

LOG = logging.getLogger("adbd")
LOGIN_ENV = "FLEETLAB_ADB_LOGIN"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Device properties of a QuecOpen module; `features=` is empty: old adbd had none (so no shell_v2).
BANNER_PROPS = {
    "ro.product.name": "mdm9607",
    "ro.product.model": "QuecOpen",
    "ro.product.device": "mdm9607",
    "features": "",
}
# WRTEs acknowledged before the consumer has taken them: keeps a push pipelined without unbounded buffering.
ACK_WINDOW = 16
LOGIN_FAIL_DELAY = 1.0


@dataclass(frozen=True)
class Config:
    root: Path
    hostname: str
    login: tuple[str, str] | None  # (user, password); never logged
    path: str


# -------------------------------------------------------------------------------------------------- transport


class Stream:
    """One ADB stream: our local id, the client's id, flow control in both directions."""

    def __init__(self, conn: Connection, local_id: int, remote_id: int) -> None:
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self.closed = threading.Event()
        self._can_send = threading.Event()
        self._can_send.set()  # after OPEN/OKAY either side may write once
        self._cond = threading.Condition()
        self._inbound: collections.deque[bytes] = collections.deque()
        self._owed_okay = 0

    # called from the connection's reader thread
    def deliver(self, data: bytes) -> None:
        with self._cond:
            self._inbound.append(data)
            ack_now = len(self._inbound) <= ACK_WINDOW
            if not ack_now:
                self._owed_okay += 1
            self._cond.notify_all()
        if ack_now:
            self.conn.send(ap.Message(ap.A_OKAY, self.local_id, self.remote_id))

    def on_okay(self) -> None:
        self._can_send.set()

    def on_remote_close(self) -> None:
        self.closed.set()
        self._can_send.set()
        with self._cond:
            self._cond.notify_all()

    # called from service threads
    def read_chunk(self) -> bytes | None:
        """Next chunk the client wrote, or None once the stream is closed and drained."""
        with self._cond:
            while not self._inbound and not self.closed.is_set():
                self._cond.wait()
            if not self._inbound:
                return None
            data = self._inbound.popleft()
            owed = self._owed_okay > 0
            if owed:
                self._owed_okay -= 1
        if owed:
            self.conn.send(ap.Message(ap.A_OKAY, self.local_id, self.remote_id))
        return data

    def write(self, data: bytes) -> bool:
        """Send data in max-payload WRTEs, each after the client's OKAY for the previous one; False once closed."""
        step = self.conn.max_payload
        for offset in range(0, len(data), step):
            while not self._can_send.wait(0.5):
                if self.closed.is_set():
                    return False
            if self.closed.is_set():
                return False
            self._can_send.clear()
            self.conn.send(ap.Message(ap.A_WRTE, self.local_id, self.remote_id, data[offset : offset + step]))
        return True

    def close(self) -> None:
        """Close from our side (the service ended): CLSE to the client, unless it closed first."""
        if self.closed.is_set():
            self.conn.forget(self)
            return
        self.on_remote_close()
        self.conn.forget(self)
        self.conn.send(ap.Message(ap.A_CLSE, self.local_id, self.remote_id))


class Connection:
    """One TCP client (an adb server): reads messages, dispatches streams to service threads."""

    def __init__(self, sock: socket.socket, peer: str, config: Config) -> None:
        self.sock = sock
        self.peer = peer
        self.config = config
        self.version = ap.A_VERSION_MIN
        self.max_payload = ap.MAX_PAYLOAD_V1
        self.online = False
        self._send_lock = threading.Lock()
        self._streams: dict[int, Stream] = {}
        self._streams_lock = threading.Lock()
        self._next_id = 1
        self._dead = False

    def send(self, msg: ap.Message) -> None:
        data = msg.encode(with_checksum=self.version < ap.A_VERSION_SKIP_CHECKSUM)
        with self._send_lock:
            if self._dead:
                return
            try:
                self.sock.sendall(data)
            except OSError as exc:
                LOG.info("%s: send failed (%s)", self.peer, exc)
                self._dead = True

    def forget(self, stream: Stream) -> None:
        with self._streams_lock:
            if self._streams.get(stream.local_id) is stream:
                del self._streams[stream.local_id]

    def _close_all_streams(self) -> None:
        with self._streams_lock:
            streams = list(self._streams.values())
            self._streams.clear()
        for stream in streams:
            stream.on_remote_close()

    def serve(self) -> None:
        reader = self.sock.makefile("rb")
        try:
            while True:
                raw = reader.read(ap.HEADER_SIZE)
                if len(raw) < ap.HEADER_SIZE:
                    break
                header = ap.decode_header(raw, self.max_payload)
                data = reader.read(header.data_length) if header.data_length else b""
                if len(data) < header.data_length:
                    break
                # Before the handshake the peer's version is unknown: accept a zero checksum then.
                ap.verify_data(header, data, self.version if self.online else ap.A_VERSION_SKIP_CHECKSUM)
                self._handle(ap.Message(header.command, header.arg0, header.arg1, data))
        except ap.ProtocolError as exc:
            LOG.warning("%s: protocol error, dropping the connection: %s", self.peer, exc)
        except OSError as exc:
            LOG.info("%s: connection error: %s", self.peer, exc)
        finally:
            with self._send_lock:
                self._dead = True
            self._close_all_streams()
            reader.close()
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
            LOG.info("%s: disconnected", self.peer)

    def _handle(self, msg: ap.Message) -> None:
        if msg.command == ap.A_CNXN:
            self._connect(msg)
        elif not self.online:
            LOG.info("%s: %s before CNXN ignored", self.peer, msg.name)
        elif msg.command == ap.A_OPEN:
            self._open(msg)
        elif msg.command in (ap.A_OKAY, ap.A_WRTE, ap.A_CLSE):
            with self._streams_lock:
                stream = self._streams.get(msg.arg1)
            if stream is None or stream.remote_id != msg.arg0:
                return  # a late message for a stream already closed: old adbd ignores it too
            if msg.command == ap.A_OKAY:
                stream.on_okay()
            elif msg.command == ap.A_WRTE:
                stream.deliver(msg.data)
            else:
                self.forget(stream)
                stream.on_remote_close()
        # AUTH/SYNC/STLS: we never asked for auth or TLS; old adbd ignored stray ones.

    def _connect(self, msg: ap.Message) -> None:
        kind, props = ap.parse_banner(msg.data)
        self._close_all_streams()  # a second CNXN means the client restarted its side
        self.version = min(msg.arg0, ap.A_VERSION_MIN)
        self.max_payload = min(msg.arg1, ap.MAX_PAYLOAD_V1) if msg.arg1 else ap.MAX_PAYLOAD_V1
        self.online = True
        LOG.info("%s: CNXN from %s (version 0x%08x, max payload %d)", self.peer, kind, msg.arg0, msg.arg1)
        features = props.get("features", "")
        LOG.debug("%s: client features: %s", self.peer, features)
        banner = ap.device_banner(BANNER_PROPS)
        self.send(ap.Message(ap.A_CNXN, ap.A_VERSION_MIN, ap.MAX_PAYLOAD_V1, banner))

    def _open(self, msg: ap.Message) -> None:
        service = msg.data.rstrip(b"\0").decode("utf-8", "surrogateescape")
        if msg.arg0 == 0:
            return
        target = _service(service)
        if target is None:
            LOG.info("%s: OPEN of unsupported service %r refused", self.peer, service.partition(":")[0] + ":")
            self.send(ap.Message(ap.A_CLSE, 0, msg.arg0))
            return
        with self._streams_lock:
            local_id = self._next_id
            self._next_id += 1
            stream = Stream(self, local_id, msg.arg0)
            self._streams[local_id] = stream
        # Commands may carry anything (paths, tokens): log their size, not their text.
        LOG.info("%s: OPEN %s (%d bytes) as stream %d", self.peer, service.split(":")[0], len(service), local_id)
        self.send(ap.Message(ap.A_OKAY, local_id, msg.arg0))
        threading.Thread(target=_run_service, args=(target, stream, service, self.config), daemon=True).start()


def _service(service: str):  # noqa: ANN202 - returns one of the service functions below
    if service.startswith("shell:"):
        return run_shell
    if service == "sync:":
        return run_sync
    return None


def _run_service(target, stream: Stream, service: str, config: Config) -> None:  # noqa: ANN001
    try:
        target(stream, service, config)
    except Exception:  # pylint: disable=broad-exception-caught  # one failed stream must not take adbd down
        LOG.exception("stream %d failed", stream.local_id)
    finally:
        stream.close()


# ------------------------------------------------------------------------------------------------------ processes


def _reap(pid: int, timeout: float) -> int | None:
    """Wait for pid; SIGKILL it after timeout. Returns its wait status (None if it was already reaped)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return status
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return os.waitpid(pid, 0)[1]
        time.sleep(0.02)


def _close_other_fds(keep: int) -> None:
    """In a forked child: drop every inherited fd (other clients' sockets, ptys) but 0-2 and keep."""
    limit = os.sysconf("SC_OPEN_MAX")
    os.closerange(3, keep)
    os.closerange(keep + 1, limit)


# ---------------------------------------------------------------------------------------------------------- shell


def run_shell(stream: Stream, service: str, config: Config) -> None:
    """shell:[CMD] under a pty, like old adbd: merged output, CRLF, no exit status; closes when the shell exits."""
    command = service[len("shell:") :] or None
    pid, master = pty.fork()
    if pid == 0:
        _shell_child(config, command)  # never returns
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 25, 80, 0, 0))
    state = {"reaped": False}
    lock = threading.Lock()

    def hang_up() -> None:
        with lock:
            if not state["reaped"]:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGHUP)

    def pump_input() -> None:
        while (chunk := stream.read_chunk()) is not None:
            try:
                while chunk:
                    chunk = chunk[os.write(master, chunk) :]
            except OSError:
                return
        if stream.closed.is_set():
            hang_up()  # the client went away: the shell gets SIGHUP, as from a vanished terminal

    threading.Thread(target=pump_input, daemon=True).start()
    try:
        _pump_output(stream, master, pid, state, lock)
    finally:
        hang_up()
        with lock:
            reaped = state["reaped"]
        if not reaped:
            _reap(pid, 2.0)
            with lock:
                state["reaped"] = True
        os.close(master)


def _pump_output(stream: Stream, master: int, pid: int, state: dict[str, bool], lock: threading.Lock) -> None:
    def exited() -> bool:
        with lock:
            if state["reaped"]:
                return True
            done = os.waitpid(pid, os.WNOHANG)[0]
            if done:
                state["reaped"] = True
            return bool(done)

    while not stream.closed.is_set():
        ready = select.select([master], [], [], 0.2)[0]
        if ready:
            try:
                data = os.read(master, stream.conn.max_payload)
            except OSError:  # EIO: every slave end is closed
                return
            if not data or not stream.write(data):
                return
        elif exited():
            break
    # The shell exited (old adbd closed the stream then): send what it left in the pty, then stop, even if a
    # background child still holds the terminal.
    while not stream.closed.is_set():
        ready = select.select([master], [], [], 0.05)[0]
        if not ready:
            return
        try:
            data = os.read(master, stream.conn.max_payload)
        except OSError:
            return
        if not data or not stream.write(data):
            return


def _shell_env(config: Config, home: str) -> dict[str, str]:
    return {
        "PATH": config.path,
        "HOME": home,
        "USER": "root",
        "LOGNAME": "root",
        "SHELL": "/bin/sh",
        "TERM": os.environ.get("TERM", "vt102"),
    }


def _shell_child(config: Config, command: str | None) -> None:
    """In the pty child (session leader, pty as controlling terminal): optional login, chroot, exec the shell.

    Only os-level calls here: the parent is threaded, so Python-level locks (logging, stdio) may be held.
    """
    code = 127
    try:
        home = "/"
        if config.login is not None:
            _login_dialogue(config.hostname, config.login)
            if (config.root / "root").is_dir():
                home = "/root"  # a login lands in the home directory; plain old adbd starts in /
        os.chroot(config.root)
        os.chdir(home)
        argv = ["sh", "-c", command] if command is not None else ["-sh"]
        os.execve("/bin/sh", argv, _shell_env(config, home))
    except BaseException as exc:  # pylint: disable=broad-exception-caught  # report and leave the forked child
        os.write(2, f"adbd: cannot start the shell: {exc}\n".encode())
        code = 1 if isinstance(exc, SystemExit) else 127
    finally:
        os._exit(code)


def _read_line(fd: int) -> str:
    """A line from the pty in canonical mode; EOF (client gone) ends the child."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = os.read(fd, 1024)
        if not chunk:
            os._exit(1)
        buf += chunk
    return buf.rstrip(b"\r\n").decode("utf-8", "replace")


def _login_dialogue(hostname: str, login: tuple[str, str]) -> None:
    """Ask `HOST login:` and `Password:` (no echo) until they match, like getty+login on the module."""
    want_user, want_password = login
    while True:
        os.write(1, f"\n{hostname} login: ".encode())
        user = _read_line(0).strip()
        os.write(1, b"Password: ")
        attrs = termios.tcgetattr(0)
        quiet = list(attrs)
        quiet[3] &= ~termios.ECHO
        termios.tcsetattr(0, termios.TCSANOW, quiet)
        try:
            password = _read_line(0)
        finally:
            termios.tcsetattr(0, termios.TCSANOW, attrs)
        os.write(1, b"\n")
        user_ok = hmac.compare_digest(user.encode(), want_user.encode())
        if hmac.compare_digest(password.encode(), want_password.encode()) and user_ok:
            return
        time.sleep(LOGIN_FAIL_DELAY)
        os.write(1, b"Login incorrect\n")


# ----------------------------------------------------------------------------------------------------------- sync


def run_sync(stream: Stream, service: str, config: Config) -> None:  # noqa: ARG001 - one signature for services
    """sync: in a forked child chrooted into the rootfs; this side only pumps bytes between stream and child."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fd = theirs.fileno()
            _close_other_fds(fd)
            os.chroot(config.root)
            os.chdir("/")
            SyncSession(theirs).serve()
            code = 0
        except BaseException:  # pylint: disable=broad-exception-caught  # the child must never return
            code = 1
        finally:
            os._exit(code)
    theirs.close()

    def pump_input() -> None:
        with contextlib.suppress(OSError):
            while (chunk := stream.read_chunk()) is not None:
                ours.sendall(chunk)
        with contextlib.suppress(OSError):
            ours.shutdown(socket.SHUT_WR)  # EOF for the child: a client gone mid-transfer ends it

    threading.Thread(target=pump_input, daemon=True).start()
    try:
        while data := ours.recv(stream.conn.max_payload):
            if not stream.write(data):
                break
    except OSError:
        pass
    finally:
        ours.close()
        _reap(pid, 5.0)


class SyncSession:
    """The v1 sync protocol over a plain byte stream, run chrooted. Requests: id(4) + u32 length + path."""

    PATH_MAX = 1024  # old adbd refused longer paths

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()

    def _read_exact(self, size: int) -> bytes | None:
        while len(self._buf) < size:
            chunk = self.sock.recv(max(65536, size - len(self._buf)))
            if not chunk:
                return None
            self._buf += chunk
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def _fail(self, message: str) -> None:
        self.sock.sendall(ap.sync_packet(b"FAIL", message.encode("utf-8", "replace")))

    def serve(self) -> None:
        while (head := self._read_exact(ap.SYNC_ID.size)) is not None:
            ident, length = ap.SYNC_ID.unpack(head)
            if ident == b"QUIT":
                return
            if ident not in (b"STAT", b"LIST", b"SEND", b"RECV"):
                self._fail(f"unknown sync request {ident!r}")
                return
            if length > self.PATH_MAX:
                self._fail("path too long")
                return
            path = self._read_exact(length)
            if path is None:
                return
            if ident == b"STAT":
                self._stat(path)
            elif ident == b"LIST":
                self._list(path)
            elif ident == b"RECV":
                self._recv(path)
            elif not self._send(path):
                return

    def _stat(self, path: bytes) -> None:
        try:
            st = os.lstat(path)
        except OSError:
            self.sock.sendall(ap.sync_stat(0, 0, 0))  # mode 0 tells the client it does not exist
            return
        self.sock.sendall(ap.sync_stat(st.st_mode, st.st_size, int(st.st_mtime)))

    def _list(self, path: bytes) -> None:
        try:
            names = [b".", b"..", *os.listdir(path)]
        except OSError:
            names = []
        for name in names:
            try:
                st = os.lstat(os.path.join(path, name))
            except OSError:
                continue
            self.sock.sendall(ap.sync_dent(name, st.st_mode, st.st_size, int(st.st_mtime)))
        self.sock.sendall(ap.SYNC_DENT.pack(b"DONE", 0, 0, 0, 0))

    def _recv(self, path: bytes) -> None:
        try:
            with open(path, "rb") as handle:
                while block := handle.read(ap.SYNC_DATA_MAX):
                    self.sock.sendall(ap.sync_packet(b"DATA", block))
        except OSError as exc:
            self._fail(os.strerror(exc.errno or errno.EIO))
            return
        self.sock.sendall(ap.sync_word(b"DONE", 0))

    def _send(self, target: bytes) -> bool:
        """Receive DATA chunks up to DONE. A write error is reported after DONE; a protocol error ends the session."""
        path, mode = ap.parse_send_target(target)
        link = stat.S_ISLNK(mode)
        error: str | None = None
        fd = -1
        link_data = b""
        if not link:
            try:
                fd = _create(path, mode & 0o777)
            except OSError as exc:
                error = f"couldn't create file: {os.strerror(exc.errno or errno.EIO)}"
        while True:
            head = self._read_exact(ap.SYNC_ID.size)
            if head is None:
                break
            ident, value = ap.SYNC_ID.unpack(head)
            if ident == b"DATA":
                if value > ap.SYNC_DATA_MAX:
                    self._fail("data too long")
                    break
                data = self._read_exact(value)
                if data is None:
                    break
                if link:
                    link_data += data
                elif fd >= 0:
                    try:
                        view = memoryview(data)
                        while view:
                            view = view[os.write(fd, view) :]
                    except OSError as exc:
                        error = f"write failed: {os.strerror(exc.errno or errno.EIO)}"
                        os.close(fd)
                        fd = -1
                        _unlink_quietly(path)
                continue
            if ident != b"DONE":
                self._fail("invalid data message")
                break
            if link:
                error = _symlink(link_data.rstrip(b"\0"), path)
            elif fd >= 0:
                os.close(fd)
                fd = -1
                os.utime(path, (value, value))
            if error is None:
                self.sock.sendall(ap.sync_word(b"OKAY", 0))
            else:
                self._fail(error)
            return True
        # The client vanished or broke the protocol mid-file: leave no half-written file behind.
        if fd >= 0:
            os.close(fd)
            _unlink_quietly(path)
        return False


def _create(path: bytes, mode: int) -> int:
    """Create path afresh like old adbd: unlink what is there, make missing parent directories (0775)."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, mode)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path) or b"/", 0o775, exist_ok=True)
        fd = os.open(path, flags, mode)
    os.fchmod(fd, mode)  # not masked by the umask, as on the module
    return fd


def _symlink(target: bytes, path: bytes) -> str | None:
    try:
        _unlink_quietly(path)
        os.makedirs(os.path.dirname(path) or b"/", 0o775, exist_ok=True)
        os.symlink(target, path)
    except OSError as exc:
        return f"symlink failed: {os.strerror(exc.errno or errno.EIO)}"
    return None


def _unlink_quietly(path: bytes) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


# ------------------------------------------------------------------------------------------------------------ CLI


def _read_login(args: argparse.Namespace) -> tuple[str, str] | None:
    """user:password from --login-file or (with --login-prompt) the environment; never from argv."""
    if args.login_file:
        text = Path(args.login_file).read_text(encoding="utf-8").strip("\r\n")
    elif args.login_prompt:
        text = os.environ.pop(LOGIN_ENV, "")
        if not text:
            raise SystemExit(f"adbd: --login-prompt needs {LOGIN_ENV}=user:password in the environment")
    else:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise SystemExit("adbd: the login must be `user:password`")
    return user, password


def _hostname(root: Path, given: str | None) -> str:
    if given:
        return given
    try:
        name = (root / "etc/hostname").read_text(encoding="utf-8").strip()
    except OSError:
        name = ""
    return name or socket.gethostname()


def _listen(spec: str) -> socket.socket:
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"adbd: --listen wants ADDR:PORT, got {spec!r}")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), int(port)))
    sock.listen(16)
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetlab.adbd", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="ADDR:PORT (port 0 picks a free one; see the log line)")
    parser.add_argument("--root", required=True, type=Path, help="the device rootfs shells and sync chroot into")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--login-file", help="file holding user:password; shells then ask for a login first")
    group.add_argument("--login-prompt", action="store_true", help=f"ask for a login; user:password in ${LOGIN_ENV}")
    parser.add_argument("--hostname", help="name in the login prompt (default: ROOT/etc/hostname)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="adbd: %(message)s", stream=sys.stderr
    )
    root = args.root.resolve()
    if not (root / "bin/sh").exists() and not (root / "bin/sh").is_symlink():
        raise SystemExit(f"adbd: {root}/bin/sh does not exist: --root must be a device rootfs")
    config = Config(
        root=root,
        hostname=_hostname(root, args.hostname),
        login=_read_login(args),
        path=os.environ.get("PATH") or DEFAULT_PATH,
    )
    server = _listen(args.listen)
    addr, port = server.getsockname()[:2]
    login = "with login prompt" if config.login else "no login"
    LOG.info("listening on %s:%d (root %s, %s)", addr, port, root, login)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            sock, peer = server.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            name = f"{peer[0]}:{peer[1]}"
            LOG.info("%s: connected", name)
            threading.Thread(target=Connection(sock, name, config).serve, daemon=True).start()
    except KeyboardInterrupt:
        return 0
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
