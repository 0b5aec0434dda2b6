"""The quecopen profile: armv7l sysvinit module behind the lab adbd, /usrdata, no tun node, read-only /."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetlab import lab
from fleetlab.state import Device

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths, binfmt_misc)"),
    pytest.mark.skipif(
        importlib.util.find_spec("fleetlab.adbd") is None,
        reason="fleetlab/adbd.py (the adbd helper's work) does not exist yet: quecopen devices cannot start",
    ),
]

NAME = "lt-quec"
RO_NAME = "lt-quecro"
LOGIN_NAME = "lt-queclg"


@pytest.fixture(scope="module")
def quecopen() -> Iterator[Device]:
    lab.down(NAME)
    yield lab.up(NAME, "quecopen")
    lab.down(NAME)


def sh(name: str, script: str) -> subprocess.CompletedProcess[str]:
    return lab.exec_(name, ["sh", "-c", script])


def test_quecopen_layout(quecopen: Device) -> None:
    assert sh(NAME, "uname -m; hostname").stdout.split() == ["armv7l", "mdm9607-perf"]
    assert sh(NAME, "grep -c ' /usrdata ' /proc/mounts").stdout.strip() == "1"
    # The kernel-module case: the kernel knows tun, the node is missing until someone creates it.
    assert sh(NAME, "test -e /dev/net/tun").returncode == 1
    assert " tun" in sh(NAME, "cat /proc/misc").stdout
    assert sh(NAME, "command -v start-stop-daemon").returncode == 0
    assert sh(NAME, "test -d /etc/rc5.d && test -d /etc/init.d").returncode == 0


def test_adb_door_listens(quecopen: Device) -> None:
    listening = sh(NAME, "netstat -ltn").stdout
    assert f"{quecopen.address}:5555" in listening


# A private adb server for these tests, killed at the end (by the adb protocol, not by name).
ADB_SERVER_PORT = "5041"
needs_adb = pytest.mark.skipif(shutil.which("adb") is None, reason="Debian's adb client missing (apt-get install adb)")


def adb(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["adb", "-P", ADB_SERVER_PORT, *args]
    return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def adb_server() -> Iterator[None]:
    yield
    adb("kill-server")


def connect(device: Device) -> str:
    serial = f"{device.address}:5555"
    adb("disconnect", serial)
    out = adb("connect", serial).stdout
    assert f"connected to {serial}" in out, out
    return serial


@needs_adb
def test_adb_shell_push_pull_with_the_debian_client(quecopen: Device, adb_server: None, tmp_path: Path) -> None:
    serial = connect(quecopen)
    assert adb("-s", serial, "shell", "uname -m; hostname").stdout.split() == ["armv7l", "mdm9607-perf"]
    # Old adbd (no shell_v2): the exit status of the remote command is not returned.
    failing = adb("-s", serial, "shell", "ls /no/such/file")
    assert failing.returncode == 0 and "No such file" in failing.stdout
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(100_000))
    assert adb("-s", serial, "push", str(payload), "/usrdata/payload.bin").returncode == 0
    back = tmp_path / "back.bin"
    assert adb("-s", serial, "pull", "/usrdata/payload.bin", str(back)).returncode == 0
    assert back.read_bytes() == payload.read_bytes()
    lab.reboot(NAME)
    serial = connect(quecopen)  # a reboot drops the TCP connection, as on the module
    assert adb("-s", serial, "shell", "ls -l /usrdata/payload.bin").stdout.split()[4] == "100000"
    adb("disconnect", serial)


@needs_adb
def test_adb_login_prompt(adb_server: None) -> None:
    lab.down(LOGIN_NAME)
    device = lab.up(LOGIN_NAME, "quecopen", login_prompt=True, password="quec-pw")
    try:
        serial = connect(device)
        proc = adb("-s", serial, "shell", input="root\nquec-pw\necho in-$((6*7)); exit\n")
        assert "mdm9607-perf login: " in proc.stdout and "Password: " in proc.stdout
        assert "in-42" in proc.stdout
        adb("disconnect", serial)
    finally:
        lab.down(LOGIN_NAME)


def test_reboot_runs_rc5_and_keeps_usrdata(quecopen: Device) -> None:
    script = """cat > /etc/init.d/lt-q <<'EOF'
#!/bin/sh
[ "$1" = start ] && echo booted >> /usrdata/boots
EOF
chmod +x /etc/init.d/lt-q; ln -sf ../init.d/lt-q /etc/rc5.d/S90lt-q; echo keep > /usrdata/keep"""
    assert sh(NAME, script).returncode == 0
    lab.reboot(NAME)
    assert sh(NAME, "cat /usrdata/keep /usrdata/boots").stdout.split() == ["keep", "booted"]
    assert f"{quecopen.address}:5555" in sh(NAME, "netstat -ltn").stdout  # the adbd came back


def test_readonly_root_can_be_remounted_rw() -> None:
    lab.down(RO_NAME)
    lab.up(RO_NAME, "quecopen", readonly_root=True)
    try:
        denied = sh(RO_NAME, "touch /lt-file")
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr
        assert sh(RO_NAME, "echo data > /usrdata/x").returncode == 0  # /usrdata stays writable
        assert sh(RO_NAME, "mount -o remount,rw / && touch /lt-file").returncode == 0
        lab.reboot(RO_NAME)
        # Read-only again after a boot, and the file written while rw is still there.
        assert sh(RO_NAME, "test -e /lt-file && ! touch /lt-file2").returncode == 0
    finally:
        lab.down(RO_NAME)
