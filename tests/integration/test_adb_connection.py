"""fleetmesh.tailscale.adb against the lab's old adbd (no shell_v2, 4096-byte payloads) with Debian's stock adb client.

The plugin is loaded by FQCN through Ansible's connection loader, or driven by ansible-playbook for whole-play
behaviour (one login per play, two devices, a device lost mid-play). A private adb server port is used and that
server is killed in teardown, as are the devices and the background login sessions made here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import connection_loader

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
]

lab = pytest.importorskip("fleetlab.lab", reason="the fleetlab package (tests/lab) is not installed")

from repo_checkout import REPO, ansible_env  # noqa: E402

PLAIN = "adb-i1"
LOGIN = "adb-i2"
GONE = "adb-i3"
PASSWORD = "adb-Secret-7"  # a lab-only password for a throwaway device
PAYLOAD_SIZE = 30 * 1024 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A private adb server port and control dir; in teardown: sessions stopped, that server killed."""
    path = tmp_path_factory.mktemp("adb-it")
    port = _free_port()
    yield {"path": path, "port": port, "cp": path / "cp"}
    for pidfile in (path / "cp").glob("fmadb-*.pid"):
        with contextlib.suppress(OSError, ValueError):  # already gone
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
    try:
        subprocess.run(["adb", "-P", str(port), "kill-server"], capture_output=True, check=False, timeout=15)
    except subprocess.TimeoutExpired:
        # A server still holding a transport to a device whose namespace is gone can hang kill-server: end the
        # process that listens on this module's private port (found by that port, its command line checked).
        _kill_listener(port)


def _kill_listener(port: int) -> None:
    out = subprocess.run(
        ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=False, timeout=10
    ).stdout
    for pid in {int(m) for m in re.findall(r"pid=(\d+)", out)}:
        with contextlib.suppress(OSError):
            if b"adb" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]:
                os.kill(pid, signal.SIGKILL)


def _device(name: str, **kwargs: Any) -> Iterator[Any]:
    lab.down(name)
    yield lab.up(name, "quecopen", **kwargs)
    lab.down(name)


@pytest.fixture(scope="module")
def plain() -> Iterator[Any]:
    yield from _device(PLAIN)


@pytest.fixture(scope="module")
def login() -> Iterator[Any]:
    yield from _device(LOGIN, password=PASSWORD, login_prompt=True)


def serial(device: Any) -> str:
    return f"{device.address}:5555"


def connect(work: dict[str, Any], device: Any, **options: Any) -> Any:
    conn = connection_loader.get("fleetmesh.tailscale.adb", PlayContext(), "/dev/null")
    direct = {"remote_addr": serial(device), "server_port": work["port"], "control_path_dir": str(work["cp"])}
    if device.login_prompt:
        direct["password"] = PASSWORD
    conn.set_options(direct={**direct, **options})
    return conn


def sh(device: Any, script: str) -> str:
    proc = lab.exec_(device.name, ["sh", "-c", script])
    return proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------------- commands


CASES = [
    ("echo hello", 0, b"hello\n", b""),
    ("echo out; echo err >&2; false", 1, b"out\n", b"err\n"),
    ("nosuchcommand-fm", 127, b"", b"not found"),
    ("printf 'a\\nb\\r\\nc'; exit 42", 42, b"a\nb\r\nc", b""),
    ("printf '%s\\n' __FME_x:0 __FMB_x; exit 3", 3, b"__FME_x:0\n__FMB_x\n", b""),
    ("cat; echo after", 0, b"after\n", b""),  # stdin is /dev/null, the pty is not read
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("kind", ["plain", "login"])
def test_exit_codes_and_output_come_back_right(
    work: dict[str, Any], request: pytest.FixtureRequest, kind: str, case: tuple[str, int, bytes, bytes]
) -> None:
    command, rc, stdout, stderr = case
    device = request.getfixturevalue(kind)
    got_rc, got_out, got_err = connect(work, device).exec_command(command)
    assert (got_rc, got_out) == (rc, stdout)
    assert stderr in got_err if stderr else got_err == b""


def test_command_longer_than_the_adb_payload_limit(work: dict[str, Any], plain: Any) -> None:
    body = "".join(f"{i:05d}" for i in range(1200))  # 6000 bytes of distinct digits
    command = f"printf '%s' '{body}' | wc -c; echo done >&2; exit 5"
    assert len(command) > 4096
    rc, out, err = connect(work, plain).exec_command(command)
    assert (rc, out.strip(), err) == (5, b"6000", b"done\n")
    assert sh(plain, "ls -a /tmp | grep -c fmadb || true").strip() == "0"  # script and stderr files removed


def test_binary_round_trip_verified(work: dict[str, Any], plain: Any, tmp_path: Path) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(PAYLOAD_SIZE))
    want = hashlib.sha256(payload.read_bytes()).hexdigest()
    conn = connect(work, plain, put_method="sync")
    commands: list[str] = []
    run = conn._run  # noqa: SLF001
    conn._run = lambda command: commands.append(command) or run(command)  # noqa: SLF001
    conn.put_file(str(payload), "/usrdata/payload.bin")
    # Hashed on the device while it was pushed (busybox under qemu, old adbd), then renamed: no second pass.
    assert len(commands) == 2 and "fdinfo" in commands[0] and commands[1].startswith("mv -f ")
    assert sh(plain, "sha256sum /usrdata/payload.bin").split()[0] == want
    assert sh(plain, "ls -a /usrdata | grep -c fmtmp || true").strip() == "0"  # temp name renamed away
    back = tmp_path / "back.bin"
    conn.fetch_file("/usrdata/payload.bin", str(back))
    assert hashlib.sha256(back.read_bytes()).hexdigest() == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.bin", "payload.bin"]
    sh(plain, "rm -f /usrdata/payload.bin")


@pytest.mark.parametrize(
    ("method", "error"),
    [
        ("sync", "adb push to /usrdata/ro/x.fmtmp"),
        ("auto", r"(?s)exit 3\): tee: /usrdata/ro/x\.fmtmp\w+: .*not installed"),
    ],
)
def test_failed_put_leaves_the_target_as_it_was(
    method: str, error: str, work: dict[str, Any], plain: Any, tmp_path: Path
) -> None:
    """A full disk: the sync push fails; the device pull's tee passes the whole stream on although it could not
    write the file, and its failure must still keep the short file from being installed."""
    sh(plain, "echo old > /usrdata/keep; mkdir -p /usrdata/ro && mount -t tmpfs -o size=4k tmpfs /usrdata/ro")
    try:
        big = tmp_path / "big"
        big.write_bytes(os.urandom(64 * 1024))
        with pytest.raises(AnsibleError, match=error):
            connect(work, plain, put_method=method).put_file(str(big), "/usrdata/ro/x")
        assert sh(plain, "ls -a /usrdata/ro").split() == [".", ".."]
    finally:
        sh(plain, "umount /usrdata/ro; rmdir /usrdata/ro; rm -f /usrdata/keep")


def test_put_with_a_checksum_mismatch_installs_nothing(
    work: dict[str, Any], plain: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Debian's busybox ash runs its own sha256sum applet whatever PATH says, so the device cannot be made to lie
    # here: the controller's expectation is made wrong instead, and the device's check must refuse the file.
    conn = connect(work, plain)
    monkeypatch.setattr(sys.modules[type(conn).__module__], "_digests", lambda _path: ("0" * 64, "0" * 32))
    sh(plain, "echo old > /usrdata/target")
    try:
        new = tmp_path / "new"
        new.write_bytes(b"new content\n")
        with pytest.raises(AnsibleError, match=r"put /usrdata/target failed \(exit 3\): sha256 on the device is \w+"):
            conn.put_file(str(new), "/usrdata/target")
        assert sh(plain, "cat /usrdata/target") == "old\n"
        assert sh(plain, "ls -a /usrdata | grep -c fmtmp || true").strip() == "0"
    finally:
        sh(plain, "rm -f /usrdata/target")


def test_the_device_pull_is_one_device_command_and_falls_back_to_sync(
    work: dict[str, Any], plain: Any, tmp_path: Path
) -> None:
    """By default the device fetches the file from the controller (busybox wget), hashes and renames it in one
    command; a pull_host the device cannot reach (127.0.0.1 is the device itself) means the sync push, and still
    the file."""
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(4 * 1024 * 1024 + 123))
    want = hashlib.sha256(payload.read_bytes()).hexdigest()
    try:
        for pull_host, used in ((None, "pull"), ("127.0.0.1", "sync")):
            conn = connect(work, plain, **({"pull_host": pull_host} if pull_host else {}))
            commands: list[str] = []
            pushes: list[str] = []
            run, push = conn._run, conn._push  # noqa: SLF001
            conn._run = lambda command, run=run, seen=commands: seen.append(command) or run(command)  # noqa: SLF001
            conn._push = lambda local, remote, *a, push=push, seen=pushes: (
                seen.append(remote) or push(local, remote, *a)
            )  # noqa: SLF001
            conn.put_file(str(payload), "/usrdata/pulled.bin")
            assert sh(plain, "sha256sum /usrdata/pulled.bin").split()[0] == want
            assert sh(plain, "ls -a /usrdata | grep -c fmtmp || true").strip() == "0"
            assert "wget" in commands[0]
            if used == "pull":
                assert len(commands) == 1 and pushes == []
            else:
                assert len(pushes) == 1 and len(commands) >= 2
            sh(plain, "rm -f /usrdata/pulled.bin")
    finally:
        sh(plain, "rm -f /usrdata/pulled.bin")


def test_a_fetch_that_lands_nothing_is_stopped(work: dict[str, Any], plain: Any) -> None:
    """The device's wget connects to a controller socket that never answers (as when the answers are dropped): the
    watchdog stops it after its deadline (busybox sh and wget under qemu-user here), not the TCP or command timeout."""
    conn = connect(work, plain)
    conn.exec_command("true")  # connected: the command below is timed alone
    address = conn._pull_address()  # noqa: SLF001
    mod = sys.modules[type(conn).__module__]
    with socket.socket() as mute:
        mute.bind((address, 0))
        mute.listen(1)
        url = f"http://{address}:{mute.getsockname()[1]}/x"
        fetch = mod._http_push.fetch_command(url, "/usrdata/mute.tmp", within=2)  # noqa: SLF001
        started = time.monotonic()
        rc, out, _err = conn._run(f"{fetch} > /usrdata/mute.tmp; echo rc=$?; rm -f /usrdata/mute.tmp")  # noqa: SLF001
        took = time.monotonic() - started
    assert rc == 0 and out.strip() != b"rc=0" and out.strip().startswith(b"rc=")
    assert 1.5 < took < 15


# --------------------------------------------------------------------------------------------------- login


def test_login_session_is_one_login_and_keeps_the_password_off_command_lines(work: dict[str, Any], login: Any) -> None:
    conn = connect(work, login)
    assert conn.exec_command("echo $USER")[1] == b"root\n"
    stats = conn.session_stats()
    assert stats is not None and stats["logins"] == 1
    again = connect(work, login)  # a new task: same background session, no new login
    assert again.exec_command("true")[0] == 0
    assert again.session_stats()["logins"] == 1
    cmdline = Path(f"/proc/{stats['pid']}/cmdline").read_bytes()
    assert PASSWORD.encode() not in cmdline
    assert b"_session_daemon.py" in cmdline


def test_wrong_password_is_unreachable_and_names_the_cause(work: dict[str, Any], login: Any) -> None:
    conn = connect(work, login, password="wrong-password", remote_user="root", control_path_dir=str(work["path"] / "x"))
    with pytest.raises(AnsibleConnectionFailure, match="refused: wrong credentials") as err:
        conn.exec_command("true")
    assert "wrong-password" not in str(err.value)


# ----------------------------------------------------------------------------------------------- playbooks


def play(work: dict[str, Any], hosts: dict[str, dict[str, Any]], tasks: list[dict[str, Any]]) -> tuple[int, str]:
    inventory = work["path"] / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    playbook = work["path"] / "play.yml"
    playbook.write_text(yaml.safe_dump([{"hosts": "all", "gather_facts": False, "tasks": tasks}]))
    home = work["path"] / "home"
    home.mkdir(exist_ok=True)
    proc = subprocess.run(
        ["ansible-playbook", "-vvv", "-i", str(inventory), str(playbook)],
        env=ansible_env(home, ANSIBLE_CONFIG=str(REPO / "ansible.cfg")),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )
    return proc.returncode, proc.stdout + proc.stderr


def host(work: dict[str, Any], device: Any) -> dict[str, Any]:
    hv = {
        "ansible_connection": "fleetmesh.tailscale.adb",
        "ansible_host": serial(device),
        "ansible_user": "root",
        "fleetmesh_adb_server_port": work["port"],
        "fleetmesh_adb_control_path_dir": str(work["cp"]),
    }
    if device.login_prompt:
        hv["ansible_password"] = PASSWORD
    return hv


def test_two_devices_twenty_tasks_one_login(work: dict[str, Any], plain: Any, login: Any) -> None:
    tasks = [
        {"name": f"Task {i}", "ansible.builtin.raw": f"echo task{i} $(cat /etc/hostname)", "changed_when": False}
        for i in range(20)
    ]
    before = connect(work, login).session_stats()
    rc, out = play(work, {PLAIN: host(work, plain), LOGIN: host(work, login)}, tasks)
    assert rc == 0, out[-3000:]
    assert re.search(rf"{PLAIN}\s+: ok=20 ", out) and re.search(rf"{LOGIN}\s+: ok=20 ", out), out[-2000:]
    after = connect(work, login).session_stats()
    assert after["pid"] == before["pid"] and after["logins"] == before["logins"] == 1
    assert after["commands"] >= before["commands"] + 20
    assert PASSWORD not in out


def test_device_gone_mid_play_is_unreachable(work: dict[str, Any]) -> None:
    lab.down(GONE)
    device = lab.up(GONE, "quecopen")
    try:
        tasks = [
            {"name": "Before", "ansible.builtin.raw": "echo still-here", "changed_when": False},
            {
                "name": "Device goes away",
                "ansible.builtin.command": f"fleetlab down {GONE}",
                "delegate_to": "localhost",
            },
            {"name": "After", "ansible.builtin.raw": "echo too-late", "changed_when": False},
        ]
        rc, out = play(work, {GONE: host(work, device)}, tasks)
        assert rc != 0
        assert "still-here" in out
        after = out.split("TASK [After]")[-1]
        assert re.search(r"UNREACHABLE! =>.*\n(?:.*\n)*?.*msg: .*adb " + re.escape(serial(device)), after), after[
            -2000:
        ]
        assert re.search(rf"{GONE}\s+: ok=2 .*unreachable=1 ", out), out[-2000:]
    finally:
        lab.down(GONE)


def test_connect_errors_name_the_cause(work: dict[str, Any], plain: Any) -> None:
    refused = connect(work, plain, remote_addr=f"{plain.address}:5556")
    with pytest.raises(AnsibleConnectionFailure, match=r"adb connect .*:5556 failed: .*Connection refused"):
        refused.exec_command("true")
    # A TCP peer that never speaks ADB (the kernel completes the handshake; nobody answers): the adb server gives
    # up after its 10 s and lists it offline.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        mute = connect(work, plain, remote_addr=f"127.0.0.1:{port}")
        with pytest.raises(AnsibleConnectionFailure, match=r"failed: .*the device is offline"):
            mute.exec_command("true")
    subprocess.run(
        ["adb", "-P", str(work["port"]), "disconnect", f"127.0.0.1:{port}"], capture_output=True, check=False
    )


FLAKY = "adb-i4"


def test_first_command_after_reboot_or_fresh_up_reconnects(work: dict[str, Any]) -> None:
    """A rebooted (or re-made) device at the same address leaves the adb server a stale transport: the first shell
    then fails before it starts ("device offline", "error: closed", "device not found"). The plugin drops that
    transport and connects again, so the first command right after each reboot runs (once: the counter shows it)."""
    lab.down(FLAKY)
    try:
        device = lab.up(FLAKY, "quecopen")
        assert connect(work, device).exec_command("echo warm")[1] == b"warm\n"
        for attempt in range(4):
            device = lab.reboot(FLAKY) if attempt % 2 == 0 else (lab.down(FLAKY), lab.up(FLAKY, "quecopen"))[1]
            conn = connect(work, device, timeout=30)
            rc, out, err = conn.exec_command(
                "n=$(cat /tmp/fm-ran 2>/dev/null); echo $((n+1)) >/tmp/fm-ran; cat /tmp/fm-ran"
            )  # noqa: E501
            assert (rc, out) == (0, b"1\n"), (attempt, err)
            assert connect(work, device).exec_command("echo again")[1] == b"again\n"
    finally:
        lab.down(FLAKY)
