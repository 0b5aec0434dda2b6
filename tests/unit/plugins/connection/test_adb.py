"""adb connection plugin: framing against real shells, serial handling against a fake adb client at the boundary."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from ansible.errors import AnsibleConnectionFailure
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import connection_loader
from ansible_collections.fleetmesh.tailscale.plugins.connection.adb import frame, unframe
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._adb_client import AdbClient, AdbError

SHELLS = [s for s in ("/bin/sh", "/bin/dash", shutil.which("busybox")) if s and os.path.exists(s)]

HOSTILE = [
    ("echo hello", 0, b"hello\n"),
    ("printf 'no newline'; exit 3", 3, b"no newline"),
    ("printf '__FM_RC_ fake:9\\n'; false", 1, b"__FM_RC_ fake:9\n"),
    ("printf 'a\\r\\nb\\rc'", 0, b"a\r\nb\rc"),  # the device's own CRs survive the pty's CRLF
    ("nosuchcommand-fleetmesh 2>/dev/null", 127, b""),
    ("printf '\\n\\n'", 0, b"\n\n"),
]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(("command", "rc", "out"), HOSTILE)
def test_frame_round_trip_through_real_shells(shell: str, command: str, rc: int, out: bytes) -> None:
    argv = [shell, "sh", "-c"] if shell.endswith("busybox") else [shell, "-c"]
    raw = subprocess.run([*argv, frame(command, "0123abcd")], capture_output=True, check=False).stdout
    # A pty turns every LF into CRLF: simulate old adbd's translation.
    assert unframe(raw.replace(b"\n", b"\r\n"), "0123abcd") == (rc, out)


def test_unframe_of_cut_output_fails_clearly() -> None:
    with pytest.raises(AnsibleConnectionFailure, match="ended before its exit status"):
        unframe(b"partial output", "0123abcd")


def test_marker_is_never_whole_in_the_command_text() -> None:
    assert "__FM_RC_0123abcd" not in frame("ps", "0123abcd")


@pytest.fixture
def fake_adb(tmp_path: Path) -> Path:
    """A stand-in for the adb client binary: answers from files, logs its argv (the boundary of the plugin)."""
    script = tmp_path / "adb"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {tmp_path}/argv.log\n'
        'for a in "$@"; do case $a in get-state) cat '
        + str(tmp_path)
        + "/state; exit $(cat "
        + str(tmp_path)
        + "/state_rc);; connect) cat "
        + str(tmp_path)
        + "/connect; echo device > "
        + str(tmp_path)
        + "/state; echo 0 > "
        + str(tmp_path)
        + "/state_rc; exit 0;; esac; done\nexit 0\n"
    )
    script.chmod(0o755)
    return tmp_path


def set_state(base: Path, state: str, rc: int, connect: str = "connected to 198.18.0.20:5555\n") -> None:
    (base / "state").write_text(state)
    (base / "state_rc").write_text(str(rc))
    (base / "connect").write_text(connect)


def test_tcp_serial_runs_adb_connect_when_unknown(fake_adb: Path) -> None:
    set_state(fake_adb, "error: device '198.18.0.20:5555' not found\n", 1)
    client = AdbClient(str(fake_adb / "adb"), "198.18.0.20:5555", server_port=5999)
    client.ensure_ready()
    log = (fake_adb / "argv.log").read_text().splitlines()
    assert "-P 5999 connect 198.18.0.20:5555" in log
    assert log[-1] == "-P 5999 -s 198.18.0.20:5555 get-state"


def test_refused_connect_names_the_cause(fake_adb: Path) -> None:
    set_state(fake_adb, "", 1, connect="failed to connect to '198.18.0.20:5555': Connection refused\n")
    (fake_adb / "adb").write_text((fake_adb / "adb").read_text().replace("echo device >", "echo >"))
    with pytest.raises(AdbError, match="adb connect 198.18.0.20:5555 failed: .*Connection refused"):
        AdbClient(str(fake_adb / "adb"), "198.18.0.20:5555").ensure_ready()


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("error: device unauthorized.\n", "has not authorized this computer's adb key"),
        ("error: device offline\n", "is offline"),
        ("error: device 'ABC' not found\n", "device not found by the adb server"),
    ],
)
def test_usb_serial_states_become_clear_errors(fake_adb: Path, answer: str, message: str) -> None:
    set_state(fake_adb, answer, 1)
    with pytest.raises(AdbError, match=message):
        AdbClient(str(fake_adb / "adb"), "ABC").ensure_ready()
    assert "connect" not in (fake_adb / "argv.log").read_text()  # USB serials are never `adb connect`ed


def test_missing_client_is_reported() -> None:
    with pytest.raises(AdbError, match="adb client not found"):
        AdbClient("/nonexistent/adb", "ABC").state()


def test_plugin_loads_by_fqcn_and_reports_unreachable(fake_adb: Path) -> None:
    set_state(fake_adb, "error: device offline\n", 1)
    conn = connection_loader.get("fleetmesh.tailscale.adb", PlayContext(), None)
    assert conn.transport == "fleetmesh.tailscale.adb"
    conn.set_options(direct={"remote_addr": "ABC", "adb_path": str(fake_adb / "adb")})
    with pytest.raises(AnsibleConnectionFailure, match="ABC: the device is offline"):
        conn._connect()
