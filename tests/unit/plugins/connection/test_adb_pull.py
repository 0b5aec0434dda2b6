"""put_method auto/pull (issue 17): the device fetches a put_file from a one-shot HTTP server on the controller
with wget, hashes it while it lands and renames it, in one command; it falls back to the sync push when it cannot
fetch (and auto pushes the connection's later files). The device's shell is a local shell (with the local wget),
the push a local copy.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from ansible.errors import AnsibleError
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import connection_loader
from ansible_collections.fleetmesh.tailscale.plugins.connection import adb as adb_plugin
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._adb_client import AdbClient

PAYLOAD = bytes(range(256)) * 64 + b"\r\n\0" + os.urandom(300_000)


class LocalDevice:
    """Commands run in a local sh (PATH optionally led by a directory of fakes); the push is a local copy."""

    def __init__(self, conn: object, monkeypatch: pytest.MonkeyPatch, serial: str, fakes: Path | None = None) -> None:
        self.commands: list[str] = []
        self.pushes: list[str] = []
        self.env = dict(os.environ)
        if fakes is not None:
            self.env["PATH"] = f"{fakes}:{self.env['PATH']}"
        conn._connected = True  # type: ignore[attr-defined]  # noqa: SLF001
        conn._client = AdbClient("adb", serial)  # type: ignore[attr-defined]  # noqa: SLF001
        monkeypatch.setattr(conn, "_run", self.run)
        monkeypatch.setattr(conn, "_push", self.push)

    def run(self, command: str) -> tuple[int, bytes, bytes]:
        self.commands.append(command)
        proc = subprocess.run(["/bin/sh", "-c", command], capture_output=True, timeout=60, check=False, env=self.env)
        return proc.returncode, proc.stdout, proc.stderr

    def push(self, local: str, remote: str, progress: object = None) -> None:
        self.pushes.append(remote)
        Path(remote).write_bytes(Path(local).read_bytes())
        if progress is not None:
            progress(os.path.getsize(local))  # type: ignore[operator]


def connection(**options: object) -> object:
    conn = connection_loader.get("fleetmesh.tailscale.adb", PlayContext(), None)
    conn.set_options(direct={"remote_addr": "127.0.0.1:5555", **options})
    return conn


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    dest_dir = tmp_path / "dest dir"
    dest_dir.mkdir()
    return src, dest_dir / "it's.bin"


# --------------------------------------------------------------------------------------------------- options


def test_put_method_defaults_to_auto_with_any_port() -> None:
    conn = connection()
    assert conn.get_option("put_method") == "auto"  # type: ignore[attr-defined]
    assert conn.get_option("pull_host") is None  # type: ignore[attr-defined]
    assert conn.get_option("pull_port") == 0  # type: ignore[attr-defined]


def test_put_method_and_pull_address_from_host_vars() -> None:
    conn = connection_loader.get("fleetmesh.tailscale.adb", PlayContext(), None)
    conn.set_options(
        var_options={
            "fleetmesh_adb_put_method": "pull",
            "fleetmesh_adb_pull_host": "192.0.2.1",
            "fleetmesh_adb_pull_port": "8099",
        }
    )
    assert conn.get_option("put_method") == "pull"
    assert conn.get_option("pull_host") == "192.0.2.1"
    assert conn.get_option("pull_port") == 8099


def test_put_method_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETMESH_ADB_PUT_METHOD", "pull")
    monkeypatch.setenv("FLEETMESH_ADB_PULL_PORT", "8100")
    conn = connection()
    assert (conn.get_option("put_method"), conn.get_option("pull_port")) == ("pull", 8100)  # type: ignore[attr-defined]


def test_an_unknown_put_method_is_refused() -> None:
    with pytest.raises(AnsibleError, match="put_method"):
        connection(put_method="scp")


@pytest.mark.parametrize(
    ("serial", "address"),
    [("0123456789ABCDEF", None), ("127.0.0.1:5555", "127.0.0.1"), ("[::1]:5555", "::1")],
)
def test_the_controller_address_toward_the_device(serial: str, address: str | None) -> None:
    assert adb_plugin.local_address(serial) == address


# --------------------------------------------------------------------------------------------------- command


def test_the_pull_command_fetches_hashes_and_renames_in_one_pass() -> None:
    cmd = adb_plugin.pull_command("http://192.0.2.1:8080/s/x", "/d/it's.bin.fmtmp1", "/d/it's.bin", "S" * 64, "m" * 32)
    assert "h=$( { (wget -q -O - http://192.0.2.1:8080/s/x & p=$!; " in cmd
    assert "| tee '/d/it'\"'\"'s.bin.fmtmp1' || echo tee-failed; } | $c)" in cmd
    assert "exit 5" in cmd and "exit 3" in cmd and "w=" + "S" * 64 in cmd and "md5sum" in cmd
    assert "mv -f '/d/it'\"'\"'s.bin.fmtmp1' '/d/it'\"'\"'s.bin'" in cmd
    assert len(cmd) < adb_plugin.MAX_INLINE_COMMAND


# ------------------------------------------------------------------------------------------------------- put


def test_pull_installs_the_file_in_one_command_without_a_push(
    monkeypatch: pytest.MonkeyPatch, files: tuple[Path, Path]
) -> None:
    src, dest = files
    conn = connection(put_method="pull")
    device = LocalDevice(conn, monkeypatch, "127.0.0.1:5555")
    conn.put_file(str(src), str(dest))  # type: ignore[attr-defined]
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]
    assert device.pushes == [] and len(device.commands) == 1 and "wget" in device.commands[0]
    assert "http://127.0.0.1:" in device.commands[0]


def test_pull_reports_progress(monkeypatch: pytest.MonkeyPatch, files: tuple[Path, Path]) -> None:
    src, dest = files
    seen: list[int] = []
    monkeypatch.setattr(adb_plugin.Progress, "update", lambda self, done: seen.append(done))
    conn = connection(put_method="pull")
    LocalDevice(conn, monkeypatch, "127.0.0.1:5555")
    conn.put_file(str(src), str(dest))  # type: ignore[attr-defined]
    assert seen and seen[-1] == len(PAYLOAD)


def test_a_usb_serial_cannot_pull_and_is_pushed(monkeypatch: pytest.MonkeyPatch, files: tuple[Path, Path]) -> None:
    src, dest = files
    conn = connection(put_method="pull")
    device = LocalDevice(conn, monkeypatch, "0123456789ABCDEF")
    conn.put_file(str(src), str(dest))  # type: ignore[attr-defined]
    assert dest.read_bytes() == PAYLOAD
    assert len(device.pushes) == 1 and not any("wget" in c for c in device.commands)


@pytest.mark.parametrize(
    ("method", "size", "pulled"),
    [("auto", 16384, True), ("auto", 16383, False), ("sync", 16384, False), ("pull", 1, True)],
)
def test_which_put_method_a_file_takes(
    method: str, size: int, pulled: bool, monkeypatch: pytest.MonkeyPatch, files: tuple[Path, Path]
) -> None:
    src, dest = files
    src.write_bytes(PAYLOAD[:size])
    conn = connection(put_method=method)
    device = LocalDevice(conn, monkeypatch, "127.0.0.1:5555")
    conn.put_file(str(src), str(dest))  # type: ignore[attr-defined]
    assert dest.read_bytes() == PAYLOAD[:size]
    assert (len(device.pushes), any("wget" in c for c in device.commands)) == ((0, True) if pulled else (1, False))


def test_the_fetch_is_stopped_when_nothing_lands_in_time(tmp_path: Path) -> None:
    """A server that accepts and sends nothing (packets dropped on the way back, as far as wget can tell): wget is
    stopped after FIRST_BYTES_WITHIN seconds, not the connect or command timeout."""
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(1)
        url = f"http://127.0.0.1:{mute.getsockname()[1]}/x"
        fetch = adb_plugin._http_push.fetch_command(url, str(tmp_path / "t"), within=1)  # noqa: SLF001
        started = time.monotonic()
        proc = subprocess.run(
            ["/bin/sh", "-c", f"{fetch} > {tmp_path / 't'}"], capture_output=True, timeout=30, check=False
        )
        assert proc.returncode != 0 and time.monotonic() - started < 10


@pytest.mark.parametrize("why", ["no wget", "no route back"])
def test_a_device_that_cannot_fetch_falls_back_to_sync(
    why: str, monkeypatch: pytest.MonkeyPatch, files: tuple[Path, Path], tmp_path: Path
) -> None:
    src, dest = files
    logged: list[str] = []
    monkeypatch.setattr(adb_plugin.display, "vvv", lambda msg, host=None: logged.append(msg))
    fakes = None
    options: dict[str, object] = {"put_method": "auto"}
    if why == "no wget":
        fakes = tmp_path / "fakes"
        fakes.mkdir()
        (fakes / "wget").write_text("#!/bin/sh\necho 'wget: not found' >&2\nexit 127\n")
        (fakes / "wget").chmod(0o755)
    else:  # the server listens where the device's wget is refused (it fetches from another address)
        monkeypatch.setattr(
            adb_plugin._http_push.OneShotServer,  # noqa: SLF001
            "url",
            property(lambda self: "http://127.0.0.1:9/x", lambda self, value: None),
            raising=False,
        )
    conn = connection(**options)
    device = LocalDevice(conn, monkeypatch, "127.0.0.1:5555", fakes)
    conn.put_file(str(src), str(dest))  # type: ignore[attr-defined]
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]
    assert "wget" in device.commands[0] and len(device.pushes) == 1
    assert any("could not fetch" in m and "sync push" in m for m in logged)
    # auto does not try again on this connection: the next file goes by sync at once.
    tried = len(device.commands)
    conn.put_file(str(src), str(dest))  # type: ignore[attr-defined]
    assert len(device.pushes) == 2 and not any("wget" in c for c in device.commands[tried:])


def test_a_fetched_file_with_the_wrong_digest_is_removed_and_the_put_fails(
    monkeypatch: pytest.MonkeyPatch, files: tuple[Path, Path]
) -> None:
    src, dest = files
    dest.write_bytes(b"old")
    monkeypatch.setattr(adb_plugin, "_digests", lambda path: ("0" * 64, "0" * 32))
    conn = connection(put_method="pull")
    device = LocalDevice(conn, monkeypatch, "127.0.0.1:5555")
    with pytest.raises(AnsibleError, match=r"failed \(exit 3\): sha256 on the device is .*not installed"):
        conn.put_file(str(src), str(dest))  # type: ignore[attr-defined]
    assert dest.read_bytes() == b"old" and sorted(p.name for p in dest.parent.iterdir()) == [dest.name]
    assert device.pushes == [] and "w=" + "0" * 64 in device.commands[0]
