"""adb connection plugin: framing against real shells, serial handling against a fake adb client at the boundary."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from ansible.errors import AnsibleConnectionFailure
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import connection_loader
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._adb_client import (
    AdbClient,
    AdbError,
    DeviceGone,
    LoginRequired,
    frame,
    unframe,
)

SHELLS = [s for s in ("/bin/sh", "/bin/dash", shutil.which("busybox")) if s and os.path.exists(s)]
TOKEN = "0123abcd"

HOSTILE = [
    ("echo hello", 0, b"hello\n", b""),
    ("printf 'no newline'; exit 3", 3, b"no newline", b""),
    ("printf '__FME_ fake:9\\n'; false", 1, b"__FME_ fake:9\n", b""),
    ("printf 'a\\r\\nb\\rc'", 0, b"a\r\nb\rc", b""),  # the device's own CRs survive the pty's CRLF
    ("nosuchcommand-fleetmesh", 127, b"", b"not found"),
    ("echo out; echo err >&2; exit 1", 1, b"out\n", b"err\n"),
    ("printf '\\n\\n'", 0, b"\n\n", b""),
    ("cat", 0, b"", b""),  # stdin is /dev/null: nothing can hang reading the pty
]


def run_framed(shell: str, command: str, tmp_dir: str | None) -> bytes:
    argv = [shell, "sh", "-c"] if shell.endswith("busybox") else [shell, "-c"]
    raw = subprocess.run(
        [*argv, frame(command, TOKEN, tmp_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
        timeout=10,
    )
    # Old adbd runs the command under a pty: stderr joins stdout and every LF becomes CRLF.
    return raw.stdout.replace(b"\n", b"\r\n")


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_frame_round_trip_through_real_shells(shell: str, case: tuple[str, int, bytes, bytes], tmp_path: Path) -> None:
    command, rc, out, err = case
    got_rc, got_out, got_err = unframe(run_framed(shell, command, str(tmp_path)), TOKEN)
    assert (got_rc, got_out) == (rc, out)
    assert err in got_err if err else got_err == b""
    assert list(tmp_path.iterdir()) == []  # the stderr temp file is gone


@pytest.mark.parametrize("shell", SHELLS)
def test_the_whole_frame_comes_in_one_burst_at_the_end(shell: str, tmp_path: Path) -> None:
    """Old adbd waits a round trip after each burst of pty output: nothing may come before the command ends."""
    argv = [shell, "sh", "-c"] if shell.endswith("busybox") else [shell, "-c"]
    script = frame("echo one; sleep 0.4; echo two >&2; echo three", TOKEN, str(tmp_path))
    proc = subprocess.Popen([*argv, script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    start = time.monotonic()
    first = os.read(proc.stdout.fileno(), 65536)
    waited = time.monotonic() - start
    time.sleep(0.2)  # anything written after the first burst would be readable by now
    rest = proc.stdout.read()
    proc.wait(timeout=10)
    assert waited >= 0.35
    assert rest == b""
    assert unframe(first, TOKEN) == (0, b"one\nthree\n", b"two\n")


def test_stderr_merges_into_stdout_when_the_tmp_dir_is_not_writable(tmp_path: Path) -> None:
    rc, out, err = unframe(run_framed("/bin/sh", "echo out; echo err >&2; exit 4", str(tmp_path / "nodir")), TOKEN)
    assert (rc, out, err) == (4, b"out\nerr\n", b"")


def test_a_greeting_before_the_command_never_reaches_stdout(tmp_path: Path) -> None:
    raw = b"Welcome to QuecOpen\r\n/ # " + run_framed("/bin/sh", "echo hi", str(tmp_path))
    assert unframe(raw, TOKEN) == (0, b"hi\n", b"")


def test_unframe_of_cut_output_is_a_lost_device() -> None:
    with pytest.raises(DeviceGone, match="ended before its exit status"):
        unframe(b"__FMB_" + TOKEN.encode() + b"\r\npartial output", TOKEN)


def test_unframe_without_begin_marker_names_what_the_device_said() -> None:
    with pytest.raises(AdbError, match="did not start the command .*permission denied"):
        unframe(b"/system/bin/sh: permission denied\r\n", TOKEN)


def test_markers_are_never_whole_in_the_command_text() -> None:
    text = frame("ps", TOKEN, "/tmp")
    assert f"__FMB_{TOKEN}" not in text
    assert f"__FME_{TOKEN}" not in text


# ---------------------------------------------------------------------------------- the adb client boundary


@pytest.fixture
def fake_adb(tmp_path: Path) -> Path:
    """A stand-in for the adb client binary: answers from files, logs its argv (the boundary of the plugin).

    `shell CMD` runs CMD with the host's sh and turns LF into CRLF, like old adbd's pty; `shell` output can be
    replaced by a file `greeting` printed before waiting (a login prompt).
    """
    script = tmp_path / "adb"
    base = str(tmp_path)
    script.write_text(
        f"""#!/bin/sh
echo "$*" >> {base}/argv.log
while [ $# -gt 0 ]; do
  case $1 in
    -P|-s) shift 2;;
    get-state|features)
      if [ "$(cat {base}/state_rc)" != 0 ]; then cat {base}/state >&2; exit "$(cat {base}/state_rc)"; fi
      [ "$1" = get-state ] && cat {base}/state || cat {base}/features 2>/dev/null; exit 0;;
    connect) cat {base}/connect; grep -q 'connected to' {base}/connect && echo 0 > {base}/state_rc \
        && echo device > {base}/state; exit 0;;
    disconnect) exit 0;;
    shell)
      if [ -f {base}/greeting ]; then cat {base}/greeting; sleep 30; exit 0; fi
      if [ -f {base}/shell_error ]; then cat {base}/shell_error >&2; exit 1; fi
      sh -c "$2" 2>&1 | sed 's/$/\\r/'; exit 0;;
    *) exit 0;;
  esac
done
"""
    )
    script.chmod(0o755)
    set_state(tmp_path, "device\n", 0)
    return tmp_path


def set_state(base: Path, state: str, rc: int, connect: str = "connected to 198.18.0.20:5555\n") -> None:
    (base / "state").write_text(state)
    (base / "state_rc").write_text(str(rc))
    (base / "connect").write_text(connect)


def client(base: Path, serial: str = "ABC", **kwargs: object) -> AdbClient:
    return AdbClient(str(base / "adb"), serial, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("serial", "tcp"),
    [("0123456789ABCDEF", False), ("emulator-5554", False), ("192.0.2.31:5555", True), ("ec25.lan:5555", True)],
)
def test_tcp_serials_are_told_from_usb_serials(serial: str, tcp: bool) -> None:
    assert AdbClient("adb", serial).is_tcp is tcp


def test_argv_selects_server_port_and_serial() -> None:
    assert AdbClient("/opt/adb", "ABC", server_port=5999).argv("shell", "x") == [
        "/opt/adb",
        "-P",
        "5999",
        "-s",
        "ABC",
        "shell",
        "x",
    ]
    assert AdbClient("adb", "h:1").argv("connect", "h:1", device=False) == ["adb", "connect", "h:1"]


def test_tcp_serial_runs_adb_connect_when_unknown(fake_adb: Path) -> None:
    set_state(fake_adb, "error: device '198.18.0.20:5555' not found\n", 1)
    client(fake_adb, "198.18.0.20:5555", server_port=5999).ensure_ready()
    log = (fake_adb / "argv.log").read_text().splitlines()
    assert "-P 5999 connect 198.18.0.20:5555" in log
    assert log[-1] == "-P 5999 -s 198.18.0.20:5555 get-state"


def test_refused_connect_names_the_cause(fake_adb: Path) -> None:
    set_state(fake_adb, "", 1, connect="failed to connect to '198.18.0.20:5555': Connection refused\n")
    with pytest.raises(DeviceGone, match="adb connect 198.18.0.20:5555 failed: .*Connection refused"):
        client(fake_adb, "198.18.0.20:5555").ensure_ready()


def test_offline_tcp_device_is_reconnected_once_then_reported(fake_adb: Path) -> None:
    set_state(fake_adb, "error: device offline\n", 1, connect="already connected to 198.18.0.20:5555\n")
    sticky = (
        (fake_adb / "adb")
        .read_text()
        .replace("&& echo 0 >", "&& echo 1 >")
        .replace("&& echo device >", "|| echo device >")
    )
    (fake_adb / "adb").write_text(sticky)
    with pytest.raises(DeviceGone, match="198.18.0.20:5555: the device is offline"):
        client(fake_adb, "198.18.0.20:5555", timeout=1).ensure_ready()
    log = (fake_adb / "argv.log").read_text()
    assert "disconnect 198.18.0.20:5555" in log and "connect 198.18.0.20:5555" in log


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
    with pytest.raises(DeviceGone, match=message):
        client(fake_adb).ensure_ready()
    assert "connect" not in (fake_adb / "argv.log").read_text()  # USB serials are never `adb connect`ed


def test_missing_client_is_reported() -> None:
    with pytest.raises(AdbError, match="adb client not found"):
        AdbClient("/nonexistent/adb", "ABC").state()


def test_framed_shell_returns_the_real_status_through_the_client(fake_adb: Path) -> None:
    got = client(fake_adb).shell_framed("echo hi; echo oops >&2; exit 7", TOKEN, str(fake_adb))
    assert got == (7, b"hi\n", b"oops\n")


def test_login_greeting_raises_login_required_before_the_command_runs(fake_adb: Path) -> None:
    (fake_adb / "greeting").write_text("\nmdm9607-perf login: ")
    with pytest.raises(LoginRequired):
        client(fake_adb).shell_framed("touch ran", TOKEN, None, timeout=10, login_res=[r"(?i)login\s*:\s*$"])
    assert not (fake_adb / "ran").exists()


def test_client_error_during_a_command_is_a_lost_device(fake_adb: Path) -> None:
    (fake_adb / "shell_error").write_text("error: closed\n")
    with pytest.raises(DeviceGone, match="error: closed"):
        client(fake_adb).shell_framed("true", TOKEN, None)


def adb_connection(fake_adb: Path, **options: object) -> object:
    conn = connection_loader.get("fleetmesh.tailscale.adb", PlayContext(), None)
    assert conn.transport == "fleetmesh.tailscale.adb"
    opts = {"remote_addr": "ABC", "adb_path": str(fake_adb / "adb"), "control_path_dir": str(fake_adb / "cp")}
    conn.set_options(direct={**opts, **options})
    return conn


def test_plugin_loads_by_fqcn_and_reports_unreachable(fake_adb: Path) -> None:
    set_state(fake_adb, "error: device offline\n", 1)
    conn = adb_connection(fake_adb)
    with pytest.raises(AnsibleConnectionFailure, match="ABC: the device is offline"):
        conn._connect()  # type: ignore[attr-defined]


def test_plugin_exec_frames_and_passes_server_port(fake_adb: Path) -> None:
    conn = adb_connection(fake_adb, server_port=5999, tmp_dir=str(fake_adb))
    assert conn.exec_command("echo hi; exit 3") == (3, b"hi\n", b"")  # type: ignore[attr-defined]
    log = (fake_adb / "argv.log").read_text().splitlines()
    assert log[0] == "-P 5999 -s ABC features"  # one call to check the device before the first command
    assert log[1].startswith("-P 5999 -s ABC shell FMc() (")


def test_plugin_device_gone_mid_command_is_unreachable(fake_adb: Path) -> None:
    conn = adb_connection(fake_adb)
    (fake_adb / "shell_error").write_text("error: device offline\n")
    with pytest.raises(AnsibleConnectionFailure, match="ABC: adb shell on ABC failed: error: device offline"):
        conn.exec_command("true")  # type: ignore[attr-defined]
