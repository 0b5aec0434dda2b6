"""The adb connection against a fake adb client whose server holds a stale transport for the device's host:port.

A rebooted (or re-made) device at the same address leaves the adb server a transport that still lists the
device while its first shell fails before the device opened it ("error: closed"). The plugin must then run
`adb disconnect` + `adb connect` and send the command again, a bounded number of times, and never send again a
command whose output had started.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
from pathlib import Path

import pytest
from ansible.errors import AnsibleConnectionFailure
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import connection_loader

FAKE_ADB = r'''#!PYTHON
"""Fake adb: state in $FAKE_ADB_DIR. 'stale' holds how many shells/pushes fail with the error in 'error' before
the service opens; adb disconnect makes the transport fresh only when 'sticky' is absent."""
import os, subprocess, sys
d = os.environ["FAKE_ADB_DIR"]
args = sys.argv[1:]
while args and args[0] in ("-P", "-s"):
    args = args[2:]
with open(os.path.join(d, "calls"), "a") as log:
    log.write(" ".join(args[:1]) + "\n")
def read(name, default=""):
    try:
        with open(os.path.join(d, name)) as f:
            return f.read().strip()
    except OSError:
        return default
stale = int(read("stale", "0"))
cmd = args[0]
if cmd == "get-state":
    print("device")
elif cmd == "features":
    print(read("features", "cmd"))
elif cmd == "disconnect":
    if not os.path.exists(os.path.join(d, "sticky")):
        open(os.path.join(d, "stale"), "w").write("0")
    print("disconnected " + args[1])
elif cmd == "connect":
    print("connected to " + args[1])
elif cmd in ("shell", "push"):
    if stale:
        sys.stderr.write(read("error", "error: closed") + "\n")
        sys.exit(1)
    if cmd == "push":
        import shutil
        shutil.copyfile(args[1], os.path.join(d, "pushed"))
        sys.exit(0)
    command = args[-1]
    proc = subprocess.run(["sh", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sys.stdout.buffer.write(proc.stdout)
    if os.path.exists(os.path.join(d, "cut")):
        sys.stderr.write("error: closed\n")
        sys.exit(1)
    sys.exit(proc.returncode if args[1] == "-T" else 0)
'''

COUNT = "n=$(cat $FAKE_ADB_DIR/ran 2>/dev/null); echo $((n+1)) >$FAKE_ADB_DIR/ran; echo ran"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    adb = tmp_path / "adb"
    adb.write_text(FAKE_ADB.replace("PYTHON", sys.executable))
    adb.chmod(adb.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("FAKE_ADB_DIR", str(tmp_path))
    return tmp_path


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def connection(fake: Path, serial: str = "198.51.100.7:5555") -> object:
    conn = connection_loader.get("fleetmesh.tailscale.adb", PlayContext(), "/dev/null")
    conn.set_options(
        direct={
            "remote_addr": serial,
            "adb_path": str(fake / "adb"),
            "control_path_dir": str(fake / "cp"),
            "tmp_dir": str(fake),
            "timeout": 10,
            "server_port": _closed_port(),  # no adb server there: transfers go through the (fake) client
        }
    )
    return conn


def calls(fake: Path) -> list[str]:
    return (fake / "calls").read_text().split()


@pytest.mark.parametrize(
    ("features", "error"),
    [
        ("cmd", "error: closed"),
        ("cmd", "error: device '198.51.100.7:5555' not found"),
        ("cmd,shell_v2", "error: closed"),
        ("cmd,shell_v2", "error: device offline"),
    ],
)
def test_stale_transport_is_made_afresh_and_the_command_runs_once(fake: Path, features: str, error: str) -> None:
    (fake / "features").write_text(features)
    (fake / "error").write_text(error)
    (fake / "stale").write_text("1")
    rc, out, _err = connection(fake).exec_command(COUNT)
    assert (rc, out.strip()) == (0, b"ran")
    assert (fake / "ran").read_text().strip() == "1"
    seen = calls(fake)
    assert seen.index("disconnect") < seen.index("connect") < len(seen) - 1 - seen[::-1].index("shell")
    assert seen.count("shell") == 2


def test_first_push_on_a_stale_transport_is_retried(fake: Path) -> None:
    (fake / "stale").write_text("1")
    src = fake / "payload"
    src.write_bytes(b"x" * 100)
    conn = connection(fake)
    conn._connect()  # noqa: SLF001 - push alone, as put_file's first step does
    conn._push(str(src), "/tmp/x")  # noqa: SLF001
    assert (fake / "pushed").read_bytes() == src.read_bytes()
    assert calls(fake).count("push") == 2


def test_a_transport_that_stays_stale_is_unreachable_after_bounded_tries(fake: Path) -> None:
    (fake / "stale").write_text("1")
    (fake / "sticky").write_text("")
    with pytest.raises(AnsibleConnectionFailure, match=r"error: closed \(after 3 fresh connections\)"):
        connection(fake).exec_command(COUNT)
    assert not (fake / "ran").exists()
    assert calls(fake).count("shell") == 3


def test_a_command_whose_output_started_is_never_sent_again(fake: Path) -> None:
    (fake / "cut").write_text("")
    with pytest.raises(AnsibleConnectionFailure, match=r"error: closed"):
        connection(fake).exec_command(COUNT)
    assert (fake / "ran").read_text().strip() == "1"
    assert "connect" not in calls(fake)


def test_only_the_first_command_of_a_connection_is_retried(fake: Path) -> None:
    conn = connection(fake)
    assert conn.exec_command(COUNT)[0] == 0
    (fake / "stale").write_text("1")
    with pytest.raises(AnsibleConnectionFailure, match=r"error: closed"):
        conn.exec_command(COUNT)
    assert (fake / "ran").read_text().strip() == "1"
    assert "disconnect" not in calls(fake)


def test_non_tcp_serial_is_not_reconnected(fake: Path) -> None:
    (fake / "stale").write_text("1")
    with pytest.raises(AnsibleConnectionFailure, match=r"error: closed$"):
        connection(fake, serial="0123456789ABCDEF").exec_command(COUNT)
    assert json.dumps(calls(fake)).count("connect") == 0
    assert os.path.exists(fake / "stale")
