"""fleetmesh.tailscale.telnet against real busybox telnetd + login on lab devices (sysvinit amd64, kobo armv7l).

The plugin is loaded by FQCN through Ansible's connection loader, or driven by ansible-playbook for the tests that
are about a whole run (one login per host, forks). Every device, background session and file made here is removed
in teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import connection_loader

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
]

lab = pytest.importorskip("fleetlab.lab", reason="the fleetlab package (tests/lab) is not installed")

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
SV = "tn-sv"
KOBO = "tn-kobo"
PW = "tn-pw"
PASSWORD = "tn-Secret-1"  # a lab-only password for a throwaway device
FLEET = [f"tn-f{i}" for i in range(10)]
PAYLOAD_SIZE = 30 * 1024 * 1024

# Debian's busybox ash runs applets even when their symlink is gone, so a device "without base64" is made the way
# the shell sees it: login shells get functions that fail like a missing applet.
NO_BASE64_PROFILE = """
base64() { echo "sh: base64: not found" >&2; return 127; }
sha256sum() { echo "sh: sha256sum: not found" >&2; return 127; }
"""
NO_DECODERS_PROFILE = NO_BASE64_PROFILE + 'uudecode() { echo "sh: uudecode: not found" >&2; return 127; }\n'
NO_DECODERS_PROFILE += 'uuencode() { echo "sh: uuencode: not found" >&2; return 127; }\n'
# Passes the plugin's probe (empty input) but lies about files: a transfer must then fail and change nothing.
LYING_SHA256_PROFILE = 'sha256sum() { if [ -n "$1" ]; then echo "0000  $1"; else command sha256sum; fi; }\n'
COLOUR_MOTD = "\x1b[1;31m*** Kobo developer mode ***\x1b[0m\nprices: 5$ \n# not a prompt\n"
COLOUR_PS1 = "export PS1='\\[\\e[1;32m\\]\\u@\\h\\[\\e[0m\\]:\\w\\$ '\n"


def _up(name: str, profile: str, **kwargs: Any) -> Any:
    lab.down(name)
    return lab.up(name, profile, **kwargs)


@pytest.fixture(scope="module")
def control_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the background sessions put their sockets; every one of them is stopped in teardown."""
    path = tmp_path_factory.mktemp("telnet-cp")
    yield path
    stop_sessions(path)


def stop_sessions(path: Path) -> None:
    for sock in path.glob("fmtelnet-*"):
        if sock.suffix in (".lock", ".pid"):
            continue
        try:
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(5)
                client.connect(str(sock))
                client.sendall(b'{"op": "stop"}\n')
                client.recv(100)
        except OSError:
            pass  # already gone
    for pidfile in path.glob("*.pid"):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGTERM)


@pytest.fixture
def own_cp(tmp_path: Path) -> Iterator[Path]:
    """A control dir for one test; its background sessions are stopped in teardown."""
    path = tmp_path / "cp"
    yield path
    stop_sessions(path)


def session_stats(path: Path) -> list[dict[str, Any]]:
    stats = []
    for sock in sorted(path.glob("fmtelnet-*")):
        if sock.suffix in (".lock", ".pid"):
            continue
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(sock))
            client.sendall(b'{"op": "stats"}\n')
            stats.append(json.loads(client.makefile("rb").readline()))
    return stats


@pytest.fixture(scope="module")
def devices() -> Iterator[dict[str, Any]]:
    made = {
        SV: _up(SV, "sysvinit"),
        KOBO: _up(KOBO, "kobo"),
        PW: _up(PW, "sysvinit", password=PASSWORD),
    }
    yield made
    for name in made:
        lab.down(name)


def connect(host: str, control_dir: Path, **options: Any) -> Any:
    conn = connection_loader.get("fleetmesh.tailscale.telnet", PlayContext(), "/dev/null")
    conn.set_options(direct={"remote_addr": host, "control_path_dir": str(control_dir), "timeout": 15, **options})
    return conn


@pytest.fixture(params=[SV, KOBO])
def device(request: pytest.FixtureRequest, devices: dict[str, Any]) -> Any:
    return devices[request.param]


# ------------------------------------------------------------------------------------------------------ commands


def test_exit_codes_and_stderr(device: Any, control_dir: Path) -> None:
    conn = connect(device.address, control_dir)
    assert conn.exec_command("echo ok") == (0, b"ok\n", b"")
    assert conn.exec_command("false")[0] == 1
    rc, out, err = conn.exec_command("no-such-command-fm")
    assert (rc, out) == (127, b"")
    assert b"not found" in err
    assert conn.exec_command("echo to-err >&2; echo to-out; exit 9") == (9, b"to-out\n", b"to-err\n")
    conn.close()


def test_hostile_output_comes_back_exactly(device: Any, control_dir: Path) -> None:
    conn = connect(device.address, control_dir)
    # Prompt look-alikes, marker look-alikes, CRs, ESC, high bytes (no NUL), and no trailing newline.
    expected = b"# \n$ \n~ # \r\nrc=0 E 0\n\x1b[0m\x01\x7f\xfe\xff\xc3\x28end"
    script = "printf '" + "".join(f"\\{b:03o}" for b in expected) + "'"
    assert conn.exec_command(script) == (0, expected, b"")
    assert conn.exec_command("printf 'no newline'") == (0, b"no newline", b"")
    # A command with single quotes, a CR and a tab typed through the tty.
    assert conn.exec_command("printf '%s|' 'it'\"'\"'s' \"$(printf 'a\\tb')\"") == (0, b"it's|a\tb|", b"")


def test_one_megabyte_of_text(device: Any, control_dir: Path) -> None:
    conn = connect(device.address, control_dir)
    rc, out, _err = conn.exec_command("i=0; while [ $i -lt 16384 ]; do printf '%063d\\n' $i; i=$((i+1)); done")
    assert rc == 0
    assert len(out) == 16384 * 64
    assert out.splitlines()[-1] == b"%063d" % 16383


def test_long_command_is_split_below_the_line_limit(device: Any, control_dir: Path) -> None:
    conn = connect(device.address, control_dir)
    word = "x" * 5000
    assert conn.exec_command(f"echo {word} | wc -c") == (0, b"5001\n", b"")


# ------------------------------------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("payload") / "every-byte.bin"
    block = bytes(range(256)) * 4096  # 1 MiB with every byte value
    path.write_bytes(block * (PAYLOAD_SIZE // len(block)))
    return path


@pytest.mark.parametrize("method", ["http", "base64"])
def test_30mb_round_trip(device: Any, control_dir: Path, payload: Path, tmp_path: Path, method: str) -> None:
    conn = connect(device.address, control_dir, transfer_method=method)
    remote = "/mnt/onboard/every-byte.bin" if device.profile == "kobo" else "/tmp/every-byte.bin"
    conn.put_file(str(payload), remote)
    rc, out, _err = conn.exec_command(f"sha256sum {remote}; ls -a {os.path.dirname(remote)}")
    assert rc == 0
    import hashlib  # pylint: disable=import-outside-toplevel

    assert out.split()[0].decode() == hashlib.sha256(payload.read_bytes()).hexdigest()
    assert b".fmtmp" not in out  # the temp name was renamed into place
    back = tmp_path / "back.bin"
    conn.fetch_file(remote, str(back))
    assert back.read_bytes() == payload.read_bytes()
    conn.exec_command(f"rm -f {remote}")


@pytest.fixture(scope="module")
def spare_devices() -> Iterator[list[Any]]:
    """Sysvinit devices each test customises (/etc/profile, motd); all up at once, so no address is reused."""
    made = [_up(f"tn-spare{i}", "sysvinit") for i in range(4)]
    yield list(made)  # tests pop from this copy; teardown removes every one
    for device in made:
        lab.down(device.name)


@pytest.fixture
def stripped_device(spare_devices: list[Any]) -> Any:
    """A fresh device for one test: the module's spare devices are handed out one per test."""
    return spare_devices.pop()


@pytest.mark.parametrize(
    "case", [(NO_BASE64_PROFILE, "uudecode", "uuencode"), (NO_DECODERS_PROFILE, "printf", "od")], ids=["uu", "printf"]
)
def test_device_without_base64(stripped_device: Any, own_cp: Path, tmp_path: Path, case: tuple[str, str, str]) -> None:
    profile, put_method, fetch_method = case
    lab.exec_(stripped_device.name, ["sh", "-c", "cat >> /etc/profile"], input=profile)
    conn = connect(stripped_device.address, own_cp, persistent=False, transfer_method="auto")
    assert conn.exec_command("base64 -d </dev/null")[0] == 127
    src = tmp_path / "small.bin"
    src.write_bytes(bytes(range(256)) * 40)  # below the HTTP threshold: typed through the shell
    conn.put_file(str(src), "/tmp/small.bin")
    assert conn._local_session.pick_put_method("auto", 100, False) == put_method  # pylint: disable=protected-access
    assert conn._local_session.caps.md5 and not conn._local_session.caps.sha256  # pylint: disable=protected-access
    back = tmp_path / "back.bin"
    conn.fetch_file("/tmp/small.bin", str(back))
    assert back.read_bytes() == src.read_bytes()
    session = conn._local_session  # pylint: disable=protected-access
    assert session.fetch("/tmp/small.bin", str(back)) == fetch_method
    conn.close()


# ----------------------------------------------------------------------------------------------- login failures


def test_password_login(devices: dict[str, Any], control_dir: Path) -> None:
    conn = connect(devices[PW].address, control_dir, password=PASSWORD)
    assert conn.exec_command("id -u") == (0, b"0\n", b"")


def test_wrong_password_is_unreachable_and_named(devices: dict[str, Any], tmp_path: Path) -> None:
    conn = connect(devices[PW].address, tmp_path, password="wrong", timeout=20)
    with pytest.raises(AnsibleConnectionFailure, match="wrong credentials"):
        conn.exec_command("true")
    conn = connect(devices[PW].address, tmp_path, timeout=20)  # no password at all
    with pytest.raises(AnsibleConnectionFailure, match="wrong credentials"):
        conn.exec_command("true")


def test_closed_port_is_unreachable(devices: dict[str, Any], tmp_path: Path) -> None:
    conn = connect(devices[SV].address, tmp_path, port=2323)
    with pytest.raises(AnsibleConnectionFailure, match="Connection refused"):
        conn.exec_command("true")


def test_no_prompt_within_timeout(devices: dict[str, Any], tmp_path: Path) -> None:
    conn = connect(devices[SV].address, tmp_path, timeout=3, shell_prompt_re="NEVER-MATCHES$", persistent=False)
    with pytest.raises(AnsibleConnectionFailure, match="no shell prompt within 3s"):
        conn.exec_command("true")


def test_checksum_mismatch_keeps_the_old_file(stripped_device: Any, own_cp: Path, tmp_path: Path) -> None:
    lab.exec_(stripped_device.name, ["sh", "-c", "cat >> /etc/profile"], input=LYING_SHA256_PROFILE)
    conn = connect(stripped_device.address, own_cp, persistent=False, transfer_method="base64")
    conn.exec_command("echo old > /tmp/keep.txt")
    src = tmp_path / "new.txt"
    src.write_text("new\n")
    with pytest.raises(AnsibleError, match="sha256 mismatch: device has 0000"):
        conn.put_file(str(src), "/tmp/keep.txt")
    assert conn.exec_command("cat /tmp/keep.txt; ls -a /tmp | grep -c fmtmp") == (1, b"old\n0\n", b"")
    conn.close()


def test_colour_banner_and_prompt(stripped_device: Any, own_cp: Path) -> None:
    lab.exec_(stripped_device.name, ["sh", "-c", "cat > /etc/motd"], input=COLOUR_MOTD)
    lab.exec_(stripped_device.name, ["sh", "-c", "cat >> /etc/profile"], input=COLOUR_PS1)
    conn = connect(stripped_device.address, own_cp)
    assert conn.exec_command("echo logged-in") == (0, b"logged-in\n", b"")


# ------------------------------------------------------------------------------------------------- persistence


def test_session_dying_between_tasks_is_reestablished(devices: dict[str, Any], own_cp: Path) -> None:
    control = own_cp
    conn = connect(devices[SV].address, control)
    shell_pid = conn.exec_command("echo $$")[1].strip().decode()
    assert conn.session_stats()["logins"] == 1
    conn.close()
    lab.exec_(SV, ["kill", "-9", shell_pid])  # the device drops the session between two tasks
    conn = connect(devices[SV].address, control)
    assert conn.exec_command("echo $$")[1].strip().decode() != shell_pid
    assert conn.session_stats()["logins"] == 2
    # A command cut mid-way fails clearly, and the next one logs in again.
    with pytest.raises(AnsibleConnectionFailure, match="lost while the command ran"):
        conn.exec_command("kill -9 $$")
    assert conn.exec_command("echo back") == (0, b"back\n", b"")
    stop_sessions(control)


def _playbook(tmp_path: Path, hosts: dict[str, str], tasks: int, control: Path, forks: int) -> str:
    inventory = {
        "all": {
            "hosts": {name: {"ansible_host": addr} for name, addr in hosts.items()},
            "vars": {
                "ansible_connection": "fleetmesh.tailscale.telnet",
                "fleetmesh_telnet_control_path_dir": str(control),
            },
        }
    }
    (tmp_path / "inventory.json").write_text(json.dumps(inventory))
    steps = [
        {"name": f"step {i}", "ansible.builtin.raw": f"echo step-{i}-$(hostname)", "changed_when": False}
        for i in range(tasks)
    ]
    play = [{"name": "telnet fleet", "hosts": "all", "gather_facts": False, "tasks": steps}]
    (tmp_path / "play.json").write_text(json.dumps(play))
    collections = tmp_path / "collections" / "ansible_collections" / "fleetmesh"
    collections.mkdir(parents=True)
    (collections / "tailscale").symlink_to(REPO)
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(tmp_path / "collections"), "ANSIBLE_HOST_KEY_CHECKING": "0"}
    proc = subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            "-i",
            str(tmp_path / "inventory.json"),
            "-f",
            str(forks),
            str(tmp_path / "play.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_ten_devices_with_forks_one_login_each(tmp_path: Path, own_cp: Path) -> None:
    control = own_cp
    try:
        hosts = {name: _up(name, "sysvinit").address for name in FLEET}
        out = _playbook(tmp_path, hosts, tasks=20, control=control, forks=10)
        for name in FLEET:
            assert re.search(rf"^{name}\s+: ok=20\s+changed=0\s+unreachable=0\s+failed=0", out, re.M), out[-2000:]
        stats = session_stats(control)
        assert len(stats) == len(FLEET)
        assert [s["logins"] for s in stats] == [1] * len(FLEET)
        assert all(s["commands"] >= 20 for s in stats)
    finally:
        stop_sessions(control)
        for name in FLEET:
            lab.down(name)
