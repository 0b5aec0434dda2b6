"""The lab adbd (fleetlab.adbd) driven by the stock Debian adb client, on 127.0.0.1 with a busybox rootfs.

Each test module run starts its own adbd processes and its own adb server on a private port, and stops exactly
those in teardown. Root is needed because adbd chroots into the rootfs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pty
import select
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetlab import adb_protocol as ap

BUSYBOX = "/bin/busybox"
pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="adbd chroots into the device rootfs: needs root"),
    pytest.mark.skipif(
        shutil.which("adb") is None, reason="Debian's adb client is not installed (apt-get install adb)"
    ),
    pytest.mark.skipif(
        not Path(BUSYBOX).exists() or "ELF" not in Path(BUSYBOX).read_bytes()[:4].decode("latin-1"),
        reason="busybox-static is not installed (apt-get install busybox-static)",
    ),
]
LAB_DIR = Path(__file__).resolve().parents[1] / "lab"
HOSTNAME = "mdm9607-perf"
PASSWORD = "quectel123"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small busybox rootfs with an absolute symlink (/data -> /usrdata) that must resolve inside it."""
    root = tmp_path_factory.mktemp("adbd") / "rootfs"
    for sub in ("bin", "etc", "tmp", "root", "usrdata"):
        (root / sub).mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc/hostname").write_text(f"{HOSTNAME}\n")
    (root / "dev").mkdir()
    os.mknod(root / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # busybox sh redirects `cmd &` from it
    (root / "data").symlink_to("/usrdata")
    return root


@dataclass
class Adbd:
    proc: subprocess.Popen[bytes]
    serial: str
    log: Path


@pytest.fixture(scope="module")
def start_adbd(rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Adbd]]:
    """Starts adbd processes (port chosen by adbd itself); stops exactly those afterwards."""
    started: list[Adbd] = []
    workdir = tmp_path_factory.mktemp("adbd-run")

    def start(*extra: str) -> Adbd:
        log = workdir / f"adbd{len(started)}.log"
        env = {**os.environ, "PYTHONPATH": str(LAB_DIR), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        cmd = [sys.executable, "-m", "fleetlab.adbd", "--listen", "127.0.0.1:0", "--root", str(rootfs), *extra]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 10
        while "listening on" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"adbd did not start: {log.read_text()}")
            time.sleep(0.05)
        serial = log.read_text().split("listening on ")[1].split()[0]
        started.append(Adbd(proc, serial, log))
        return started[-1]

    yield start
    for adbd in started:
        adbd.proc.terminate()
        try:
            adbd.proc.wait(10)
        except subprocess.TimeoutExpired:
            adbd.proc.kill()
            adbd.proc.wait()


class AdbClient:
    """The Debian adb client with its own server port, so tests never touch a server on 5037."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.env = {**os.environ, "ANDROID_ADB_SERVER_PORT": str(self.port)}

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["adb", *args], capture_output=True, timeout=timeout, env=self.env, check=False)

    def popen(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["adb", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env)

    def connect(self, serial: str) -> None:
        proc = self.run("connect", serial)
        assert f"connected to {serial}".encode() in proc.stdout, proc

    def kill_server(self) -> None:
        self.run("-P", str(self.port), "kill-server", timeout=30)


@pytest.fixture(scope="module")
def client() -> Iterator[AdbClient]:
    adb = AdbClient()
    yield adb
    adb.kill_server()


@pytest.fixture(scope="module")
def adbd(start_adbd: Callable[..., Adbd], client: AdbClient) -> Adbd:
    daemon = start_adbd()
    client.connect(daemon.serial)
    return daemon


# ------------------------------------------------------------------------------------------------ raw protocol


def _running(pid: int) -> bool:
    """True while pid exists and is not a zombie (it may vanish while we read)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class RawClient:
    """A bare ADB peer on a socket, for what the adb client never sends (oversized messages, abrupt closes)."""

    def __init__(self, serial: str) -> None:
        host, port = serial.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.reader = self.sock.makefile("rb")

    def send(self, msg: ap.Message) -> None:
        self.sock.sendall(msg.encode())

    def recv(self) -> ap.Message | None:
        raw = self.reader.read(ap.HEADER_SIZE)
        if len(raw) < ap.HEADER_SIZE:
            return None
        header = ap.decode_header(raw, 1 << 20)
        data = self.reader.read(header.data_length)
        return ap.Message(header.command, header.arg0, header.arg1, data)

    def handshake(self) -> ap.Message:
        self.send(ap.Message(ap.A_CNXN, ap.A_VERSION_SKIP_CHECKSUM, 1 << 20, b"host::features=shell_v2,cmd"))
        reply = self.recv()
        assert reply is not None and reply.command == ap.A_CNXN
        return reply

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def test_handshake_is_old_adbd(adbd: Adbd) -> None:
    raw = RawClient(adbd.serial)
    try:
        reply = raw.handshake()
    finally:
        raw.close()
    assert (reply.arg0, reply.arg1) == (ap.A_VERSION_MIN, 4096)
    kind, props = ap.parse_banner(reply.data)
    assert kind == "device"
    assert props["features"] == ""  # no shell_v2: exit codes are not returned


def test_oversized_message_drops_the_connection(adbd: Adbd) -> None:
    raw = RawClient(adbd.serial)
    try:
        raw.handshake()
        raw.send(ap.Message(ap.A_OPEN, 1, 0, b"shell:" + b"x" * 5000 + b"\0"))
        assert raw.recv() is None  # old adbd's check_header fails: transport closed, no OKAY/CLSE
    finally:
        raw.close()


def test_unknown_service_is_refused(adbd: Adbd) -> None:
    raw = RawClient(adbd.serial)
    try:
        raw.handshake()
        raw.send(ap.Message(ap.A_OPEN, 5, 0, b"jdwp:1\0"))
        reply = raw.recv()
    finally:
        raw.close()
    assert reply is not None
    assert (reply.name, reply.arg0, reply.arg1) == ("CLSE", 0, 5)


def test_abrupt_disconnect_hangs_up_the_shell_and_adbd_survives(adbd: Adbd, rootfs: Path, client: AdbClient) -> None:
    pid_file = rootfs / "tmp/abrupt.pid"
    pid_file.unlink(missing_ok=True)
    raw = RawClient(adbd.serial)
    raw.handshake()
    raw.send(ap.Message(ap.A_OPEN, 3, 0, b"shell:echo $$ >/tmp/abrupt.pid; exec sleep 300\0"))
    okay = raw.recv()
    assert okay is not None and okay.name == "OKAY"
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline, "the shell never ran"
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    assert _running(pid)
    raw.sock.shutdown(socket.SHUT_RDWR)  # the client vanishes without CLSE
    raw.close()
    deadline = time.monotonic() + 10
    while _running(pid):
        assert time.monotonic() < deadline, "the shell of a vanished client is still running"
        time.sleep(0.05)
    assert adbd.proc.poll() is None
    assert client.run("-s", adbd.serial, "shell", "echo still").stdout == b"still\r\n"


# ------------------------------------------------------------------------------------------------ adb client


def test_connect_devices_and_disconnect(start_adbd: Callable[..., Adbd]) -> None:
    daemon = start_adbd()
    adb = AdbClient()
    try:
        adb.connect(daemon.serial)
        listing = adb.run("devices", "-l").stdout.decode()
        assert f"{daemon.serial}" in listing
        assert "device product:mdm9607 model:QuecOpen device:mdm9607" in listing
        assert b"shell_v2" not in adb.run("-s", daemon.serial, "features").stdout
        assert adb.run("disconnect", daemon.serial).returncode == 0
        assert daemon.serial not in adb.run("devices").stdout.decode()
        deadline = time.monotonic() + 5
        while "disconnected" not in daemon.log.read_text():
            assert time.monotonic() < deadline, "adbd did not see the disconnect"
            time.sleep(0.05)
    finally:
        adb.kill_server()


def test_shell_echo_comes_back_with_crlf(adbd: Adbd, client: AdbClient) -> None:
    proc = client.run("-s", adbd.serial, "shell", "echo hello; echo world")
    assert proc.returncode == 0
    assert proc.stdout == b"hello\r\nworld\r\n"


def test_shell_runs_chrooted(adbd: Adbd, client: AdbClient, rootfs: Path) -> None:
    (rootfs / "etc/marker").write_text("inside the rootfs\n")
    proc = client.run("-s", adbd.serial, "shell", "cat /etc/marker; pwd")
    assert proc.stdout == b"inside the rootfs\r\n/\r\n"


@pytest.mark.parametrize("command", ["false", "exit 3", "no-such-command"])
def test_failing_command_exits_zero_like_old_adbd(adbd: Adbd, client: AdbClient, command: str) -> None:
    proc = client.run("-s", adbd.serial, "shell", command)
    assert proc.returncode == 0  # no shell_v2: the client cannot know the exit status


def test_stderr_is_merged_into_stdout(adbd: Adbd, client: AdbClient) -> None:
    proc = client.run("-s", adbd.serial, "shell", "echo out; echo err >&2")
    assert proc.stdout == b"out\r\nerr\r\n"
    assert proc.stderr == b""


def test_shell_gets_a_tty(adbd: Adbd, client: AdbClient) -> None:
    proc = client.run("-s", adbd.serial, "shell", "test -t 0 && test -t 1 && echo tty")
    assert proc.stdout == b"tty\r\n"


def test_command_over_the_payload_limit_fails(adbd: Adbd, client: AdbClient) -> None:
    proc = client.run("-s", adbd.serial, "shell", "echo " + "a" * 4200)
    assert proc.returncode != 0
    assert b"too long" in proc.stderr
    fits = client.run("-s", adbd.serial, "shell", "echo " + "a" * 4000)
    assert fits.stdout == b"a" * 4000 + b"\r\n"


def test_shell_exit_does_not_wait_for_background_children(adbd: Adbd, client: AdbClient) -> None:
    """Old adbd closed the stream when the shell exited, even if a child kept the pty open."""
    proc = client.run("-s", adbd.serial, "shell", "sleep 30 & echo started", timeout=20)
    assert proc.stdout == b"started\r\n"


def test_push_pull_30mb_round_trip(adbd: Adbd, client: AdbClient, rootfs: Path, tmp_path: Path) -> None:
    payload = bytes(range(256)) * (30 * 1024 * 4)  # 30 MiB, every byte value
    src = tmp_path / "payload.bin"
    src.write_bytes(payload)
    want = hashlib.sha256(payload).hexdigest()
    pushed = client.run("-s", adbd.serial, "push", str(src), "/tmp/payload.bin", timeout=300)
    assert pushed.returncode == 0, pushed.stderr
    assert hashlib.sha256((rootfs / "tmp/payload.bin").read_bytes()).hexdigest() == want
    back = tmp_path / "back.bin"
    pulled = client.run("-s", adbd.serial, "pull", "/tmp/payload.bin", str(back), timeout=300)
    assert pulled.returncode == 0, pulled.stderr
    assert hashlib.sha256(back.read_bytes()).hexdigest() == want
    (rootfs / "tmp/payload.bin").unlink()


def test_push_keeps_mode_and_mtime(adbd: Adbd, client: AdbClient, rootfs: Path, tmp_path: Path) -> None:
    src = tmp_path / "script.sh"
    src.write_text("#!/bin/sh\necho ran\n")
    src.chmod(0o755)
    os.utime(src, (1_600_000_000, 1_600_000_000))
    assert client.run("-s", adbd.serial, "push", str(src), "/usrdata/bin/script.sh").returncode == 0
    target = rootfs / "usrdata/bin/script.sh"  # the missing directory was created, as old adbd did
    assert target.stat().st_mode & 0o777 == 0o755
    assert int(target.stat().st_mtime) == 1_600_000_000
    assert client.run("-s", adbd.serial, "shell", "/usrdata/bin/script.sh").stdout == b"ran\r\n"


def test_sync_resolves_absolute_symlinks_inside_the_rootfs(
    adbd: Adbd, client: AdbClient, rootfs: Path, tmp_path: Path
) -> None:
    src = tmp_path / "f.txt"
    src.write_text("via /data\n")
    assert client.run("-s", adbd.serial, "push", str(src), "/data/f.txt").returncode == 0
    assert (rootfs / "usrdata/f.txt").read_text() == "via /data\n"  # /data -> /usrdata of the device, not the host
    assert not Path("/usrdata/f.txt").exists()
    back = tmp_path / "back.txt"
    assert client.run("-s", adbd.serial, "pull", "/data/f.txt", str(back)).returncode == 0
    assert back.read_text() == "via /data\n"


def test_pull_of_a_missing_file_fails(adbd: Adbd, client: AdbClient, tmp_path: Path) -> None:
    proc = client.run("-s", adbd.serial, "pull", "/no/such/file", str(tmp_path / "x"))
    assert proc.returncode != 0
    assert b"remote object '/no/such/file' does not exist" in proc.stdout + proc.stderr  # adb 1.0.41: on stdout
    assert not (tmp_path / "x").exists()


def test_push_to_an_impossible_path_fails(adbd: Adbd, client: AdbClient, tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_text("x")
    proc = client.run("-s", adbd.serial, "push", str(src), "/etc/hostname/sub")  # a file as parent dir
    assert proc.returncode != 0
    assert b"failed to copy" in proc.stdout + proc.stderr


def test_pull_of_a_directory_lists_it(adbd: Adbd, client: AdbClient, rootfs: Path, tmp_path: Path) -> None:
    (rootfs / "usrdata/dir/sub").mkdir(parents=True, exist_ok=True)
    (rootfs / "usrdata/dir/a").write_text("A")
    (rootfs / "usrdata/dir/sub/b").write_text("B")
    proc = client.run("-s", adbd.serial, "pull", "/usrdata/dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "dir/a").read_text() == "A"
    assert (tmp_path / "dir/sub/b").read_text() == "B"


def test_push_of_a_directory(adbd: Adbd, client: AdbClient, rootfs: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "top.txt").write_text("top")
    (tree / "sub/deep.txt").write_text("deep")
    proc = client.run("-s", adbd.serial, "push", str(tree), "/usrdata/")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (rootfs / "usrdata/tree/top.txt").read_text() == "top"
    assert (rootfs / "usrdata/tree/sub/deep.txt").read_text() == "deep"


def test_two_streams_at_once_on_one_client(adbd: Adbd, client: AdbClient, rootfs: Path) -> None:
    """The first command blocks on a fifo only the second one feeds: both streams must run concurrently."""
    fifo = rootfs / "tmp/fifo1"
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    reader = client.popen("-s", adbd.serial, "shell", "read x < /tmp/fifo1; echo got $x")
    try:
        writer = client.run("-s", adbd.serial, "shell", "echo ping > /tmp/fifo1; echo sent", timeout=30)
        out = reader.communicate(timeout=30)[0]
    finally:
        reader.kill()
        reader.wait()
    assert writer.stdout == b"sent\r\n"
    assert out == b"got ping\r\n"


def test_two_clients_at_once(adbd: Adbd, client: AdbClient, rootfs: Path) -> None:
    """A second adb server (own port) talks to the same adbd while the first one's command is still running."""
    fifo = rootfs / "tmp/fifo2"
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    other = AdbClient()
    try:
        other.connect(adbd.serial)
        reader = client.popen("-s", adbd.serial, "shell", "read x < /tmp/fifo2; echo got $x")
        try:
            writer = other.run("-s", adbd.serial, "shell", "echo pong > /tmp/fifo2; echo sent", timeout=30)
            out = reader.communicate(timeout=30)[0]
        finally:
            reader.kill()
            reader.wait()
        assert writer.stdout == b"sent\r\n"
        assert out == b"got pong\r\n"
    finally:
        other.kill_server()


# ------------------------------------------------------------------------------------------------------ login


class Terminal:
    """`adb shell` under a pty of its own, as a person at a terminal runs it."""

    newline = b"\r"

    def __init__(self, env: dict[str, str], serial: str) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child only execs: nothing else may run in a forked pytest
            os.execvpe("adb", ["adb", "-s", serial, "shell"], env)
        self.wfd = self.fd
        self.seen = b""

    def expect(self, text: bytes, timeout: float = 15) -> bytes:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} not seen; got {self.seen!r}")
            ready = select.select([self.fd], [], [], left)[0]
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"adb shell ended before {text!r}; got {self.seen!r}")
                self.seen += chunk
        before, _sep, self.seen = self.seen.partition(text)
        return before

    def send(self, line: str) -> None:
        os.write(self.wfd, line.encode() + self.newline)

    def close(self) -> int:
        """Wait for adb shell to end (kill it after 10 s); its exit status."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            with_data = select.select([self.fd], [], [], 0.1)[0]
            if with_data:
                with contextlib.suppress(OSError):
                    os.read(self.fd, 4096)
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        os.close(self.fd)
        return -9


class PipedShell(Terminal):
    """`adb shell CMD` with pipes, as a program (e.g. a connection plugin) runs it: no local tty in between."""

    newline = b"\n"

    def __init__(self, env: dict[str, str], serial: str, command: str) -> None:  # pylint: disable=super-init-not-called
        self.proc = subprocess.Popen(
            ["adb", "-s", serial, "shell", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.pid, self.fd, self.wfd = self.proc.pid, self.proc.stdout.fileno(), self.proc.stdin.fileno()
        self.seen = b""

    def close(self) -> int:
        try:
            self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
        return self.proc.returncode


def test_interactive_shell_without_login(adbd: Adbd, client: AdbClient) -> None:
    term = Terminal(client.env, adbd.serial)
    try:
        term.expect(b"# ")  # straight to a root prompt: no login configured
        term.send("echo $((6*7))")
        term.expect(b"42\r\n")
        term.send("exit 5")
    finally:
        status = term.close()
    assert status == 0  # old adbd: not even an interactive shell's status comes back


@pytest.fixture(scope="module")
def login_adbd(start_adbd: Callable[..., Adbd], client: AdbClient, tmp_path_factory: pytest.TempPathFactory) -> Adbd:
    login_file = tmp_path_factory.mktemp("login") / "login"
    login_file.write_text(f"root:{PASSWORD}\n")
    login_file.chmod(0o600)
    daemon = start_adbd("--login-file", str(login_file))
    client.connect(daemon.serial)
    return daemon


def test_password_is_not_on_any_command_line(login_adbd: Adbd) -> None:
    assert PASSWORD.encode() not in Path(f"/proc/{login_adbd.proc.pid}/cmdline").read_bytes()


def test_login_prompt_wrong_then_right_password(login_adbd: Adbd, client: AdbClient) -> None:
    term = Terminal(client.env, login_adbd.serial)
    try:
        term.expect(f"{HOSTNAME} login: ".encode())
        term.send("root")
        term.expect(b"Password: ")
        term.send("wrong-password")
        term.expect(b"Login incorrect")
        term.expect(f"{HOSTNAME} login: ".encode())
        term.send("root")
        term.expect(b"Password: ")
        term.send(PASSWORD)
        greeting = term.expect(b"# ")  # root shell prompt
        assert PASSWORD.encode() not in greeting  # not echoed
        term.send("echo $((6*7)); id -u")
        term.expect(b"42\r\n0\r\n")
        term.send("exit")
    finally:
        status = term.close()
    assert status == 0


def test_login_prompt_also_guards_shell_commands(login_adbd: Adbd, client: AdbClient) -> None:
    """`adb shell CMD` on a login-guarded module meets the prompt too; the command runs only after the login."""
    term = PipedShell(client.env, login_adbd.serial, "echo after-login")
    try:
        term.expect(f"{HOSTNAME} login: ".encode())
        term.send("root")
        term.expect(b"Password: ")
        term.send(PASSWORD)
        assert term.expect(b"after-login\r\n").strip() == b""  # nothing ran before the login
    finally:
        status = term.close()
    assert status == 0
