"""put_file's hash while pushing (issue 17): the device-side reader (follow_hash) against real sh, dash and
busybox sh with a file that grows as adbd's sync service writes it, and put_file's use of its digest, with the
push and the device's shell played by the local file system and a local shell.

What must hold: the digest is of exactly the pushed bytes (binary-safe), it is ready about when the last byte
lands, the reader never touches the file and ends by itself when the push fails or stops, and a wrong or missing
digest from it only means the file is hashed once more after the push (the old check decides).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ansible.errors import AnsibleError
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import connection_loader
from ansible_collections.fleetmesh.tailscale.plugins.connection import adb as adb_plugin
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._adb_client import AdbClient

SHELLS = [s for s in ("/bin/sh", "/bin/dash", shutil.which("busybox")) if s and os.path.exists(s)]
# Every byte value, CR/LF pairs, NULs and text that looks like a frame marker, then random bytes.
HOSTILE = bytes(range(256)) * 4 + b"\r\n\n\r\0\0__FME_x:0\n" + os.urandom((2 << 20) + 12345)


def sh_argv(shell: str, command: str) -> list[str]:
    return [shell, "sh", "-c", command] if shell.endswith("busybox") else [shell, "-c", command]


def grow(path: Path, data: bytes, chunk: int = 65536, pause: float = 0.003, delay: float = 0.1) -> None:
    """Write data to path in chunks, as adbd's sync service does: created afresh, then appended to."""
    time.sleep(delay)
    with open(path, "wb") as out:
        for at in range(0, len(data), chunk):
            out.write(data[at : at + chunk])
            out.flush()
            time.sleep(pause)


def start(
    shell: str, tmp: Path, size: int, env: dict[str, str] | None = None, tmp_dir: Path | None = None
) -> subprocess.Popen[bytes]:
    """The reader, waiting with `read -t` on a FIFO in tmp_dir (where the shell has `read -t`), else `sleep`."""
    command = adb_plugin.follow_hash(str(tmp), size, str(tmp_dir) if tmp_dir else None, "0123abcd")
    return subprocess.Popen(sh_argv(shell, command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


@pytest.fixture
def fifo_dir(tmp_path: Path) -> Iterator[Path]:
    """The reader's tmp_dir: its FIFO is unlinked as soon as it is open."""
    path = tmp_path / "device-tmp"
    path.mkdir()
    yield path
    assert list(path.iterdir()) == []


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("wait", ["fifo", "sleep"])
def test_the_reader_hashes_the_file_as_it_grows_and_is_done_with_the_last_byte(
    shell: str, wait: str, tmp_path: Path, fifo_dir: Path
) -> None:
    tmp = tmp_path / "dest dir *[x]" / "it's.fmtmp1234"  # quoted: spaces, glob characters, a quote
    tmp.parent.mkdir()
    reader = start(shell, tmp, len(HOSTILE), tmp_dir=fifo_dir if wait == "fifo" else None)
    grow(tmp, HOSTILE)
    landed = time.monotonic()
    out, err = reader.communicate(timeout=20)
    assert (reader.returncode, err) == (0, b"")
    assert out == b"sha256 " + hashlib.sha256(HOSTILE).hexdigest().encode() + b"\n"
    assert time.monotonic() - landed < 1.0  # ready about when the last byte landed (not a second pass)
    assert tmp.read_bytes() == HOSTILE and sorted(p.name for p in tmp.parent.iterdir()) == [tmp.name]


@pytest.mark.parametrize("shell", [s for s in SHELLS if not s.endswith("busybox")])  # busybox finds its applets
def test_without_sha256sum_the_reader_gives_md5(shell: str, tmp_path: Path, fifo_dir: Path) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("dd", "sleep", "mkfifo", "rm", "md5sum"):
        (tools / tool).symlink_to(shutil.which(tool))  # type: ignore[arg-type]
    tmp = tmp_path / "f.fmtmp"
    reader = start(shell, tmp, len(HOSTILE), env={"PATH": str(tools)}, tmp_dir=fifo_dir)
    grow(tmp, HOSTILE)
    out, _err = reader.communicate(timeout=20)
    assert out == b"md5 " + hashlib.md5(HOSTILE).hexdigest().encode() + b"\n"  # noqa: S324


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(
    ("case", "reason"),
    [("never created", 10), ("vanishes", 7), ("larger", 8), ("stops growing", 9)],
)
def test_the_reader_gives_up_by_itself_and_leaves_the_file_alone(
    shell: str, case: str, reason: int, tmp_path: Path, fifo_dir: Path
) -> None:
    tmp = tmp_path / "f.fmtmp"
    if case == "larger":
        tmp.write_bytes(HOSTILE + b"x")
    elif case == "stops growing":
        tmp.write_bytes(HOSTILE[: 1 << 20])
    reader = start(shell, tmp, len(HOSTILE), tmp_dir=fifo_dir)
    if case == "vanishes":
        grow(tmp, HOSTILE[: 1 << 20], pause=0)
        time.sleep(0.3)
        tmp.unlink()
    began = time.monotonic()
    out, _err = reader.communicate(timeout=20)
    assert out.startswith(f"gave up ({reason})\n".encode())  # no digest alone on a line: put_file hashes again
    assert time.monotonic() - began < (4 if case == "stops growing" else 2)
    if case in ("larger", "stops growing"):
        assert tmp.exists()  # never removed nor renamed by the reader


@pytest.mark.parametrize("shell", SHELLS)
def test_with_a_command_timeout_the_reader_gives_up_at_half_of_it(shell: str, tmp_path: Path, fifo_dir: Path) -> None:
    tmp = tmp_path / "f.fmtmp"
    with open(tmp, "wb") as slow:  # a push that goes on for longer than the command timeout (1 s)
        command = adb_plugin.follow_hash(str(tmp), len(HOSTILE), str(fifo_dir), "0123abcd", 1.0)
        reader = subprocess.Popen(sh_argv(shell, command), stdout=subprocess.PIPE)
        began = time.monotonic()
        while reader.poll() is None and time.monotonic() - began < 5:
            slow.write(HOSTILE[:5000])  # 250 KB/s
            slow.flush()
            time.sleep(0.02)
    out, _err = reader.communicate(timeout=5)
    assert out.startswith(b"gave up (12)\n")
    assert 0.4 < time.monotonic() - began < 1.0


# ------------------------------------------------------------------------------------------- put_file with it


class LocalDevice:
    """The plugin's push and shell played locally: the push writes the temp file in chunks (reporting progress,
    as the sync push does), commands run in a local shell. Records the commands."""

    def __init__(self, conn: object, monkeypatch: pytest.MonkeyPatch, shell: str = "/bin/sh") -> None:
        self.commands: list[str] = []
        self.shell = shell
        self.fail_push = ""
        conn._connected = True  # type: ignore[attr-defined]  # noqa: SLF001
        conn._client = AdbClient("adb", "ABC")  # type: ignore[attr-defined]  # noqa: SLF001
        monkeypatch.setattr(conn, "_run", self.run)
        monkeypatch.setattr(conn, "_push", self.push)

    def run(self, command: str) -> tuple[int, bytes, bytes]:
        self.commands.append(command)
        proc = subprocess.run(sh_argv(self.shell, command), capture_output=True, timeout=30, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    def push(self, local: str, remote: str, progress: object = None) -> None:
        with open(local, "rb") as src, open(remote, "wb") as dst:
            while block := src.read(256 * 1024):
                dst.write(block)
                dst.flush()
                if progress is not None:
                    progress(src.tell())  # type: ignore[operator]
                time.sleep(0.01)
                if self.fail_push and src.tell() > (1 << 20):
                    os.unlink(remote)  # adbd removes the temp file of a push that failed
                    raise AnsibleError(f"adb ABC: adb push to {remote} failed: {self.fail_push}")


@pytest.fixture
def conn() -> object:
    connection = connection_loader.get("fleetmesh.tailscale.adb", PlayContext(), None)
    connection.set_options(direct={"remote_addr": "ABC"})
    return connection


def test_a_large_put_is_verified_while_pushing_then_renamed_in_one_more_command(
    conn: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    device = LocalDevice(conn, monkeypatch)
    src, dest = tmp_path / "src.bin", tmp_path / "dest.bin"
    src.write_bytes(HOSTILE)
    conn.put_file(str(src), str(dest))  # type: ignore[attr-defined]
    assert dest.read_bytes() == HOSTILE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest.bin", "src.bin"]
    assert len(device.commands) == 2  # the reader (alongside the push), then the rename
    assert "/proc/self/fdinfo/4" in device.commands[0]
    assert device.commands[1].startswith("mv -f ") and "sha256sum" not in device.commands[1]


def test_a_small_put_is_checked_after_the_push_as_before(
    conn: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    device = LocalDevice(conn, monkeypatch)
    src, dest = tmp_path / "src.bin", tmp_path / "dest.bin"
    src.write_bytes(HOSTILE[:1000])
    conn.put_file(str(src), str(dest))  # type: ignore[attr-defined]
    assert dest.read_bytes() == HOSTILE[:1000]
    assert len(device.commands) == 1 and "sha256sum" in device.commands[0]


@pytest.mark.parametrize("reader", ["echo sha256 " + "1" * 64, "echo 'gave up (9)'", "exit 1"])
def test_a_wrong_or_missing_digest_from_the_reader_means_one_more_hash_not_a_failure(
    reader: str, conn: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    device = LocalDevice(conn, monkeypatch)
    monkeypatch.setattr(adb_plugin, "follow_hash", lambda *_args: reader)
    src, dest = tmp_path / "src.bin", tmp_path / "dest.bin"
    src.write_bytes(HOSTILE)
    conn.put_file(str(src), str(dest))  # type: ignore[attr-defined]
    assert dest.read_bytes() == HOSTILE
    assert len(device.commands) == 2 and "sha256sum" in device.commands[1]


def test_a_file_that_is_not_what_was_sent_is_removed_and_the_put_fails(
    conn: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    LocalDevice(conn, monkeypatch)
    monkeypatch.setattr(adb_plugin, "_digests", lambda _path: ("0" * 64, "0" * 32))
    src, dest = tmp_path / "src.bin", tmp_path / "dest.bin"
    src.write_bytes(HOSTILE)
    dest.write_bytes(b"old\n")
    with pytest.raises(AnsibleError, match=r"put .*dest.bin failed \(exit 3\): sha256 on the device is \w+"):
        conn.put_file(str(src), str(dest))  # type: ignore[attr-defined]
    assert dest.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest.bin", "src.bin"]


def test_without_sha256sum_on_the_device_md5_verifies_with_a_warning(
    conn: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("dd", "sleep", "mkfifo", "md5sum", "mv", "rm"):
        (tools / tool).symlink_to(shutil.which(tool))  # type: ignore[arg-type]
    monkeypatch.setenv("PATH", str(tools))
    device = LocalDevice(conn, monkeypatch, shell="/bin/dash" if os.path.exists("/bin/dash") else "/bin/sh")
    warnings: list[str] = []
    monkeypatch.setattr(adb_plugin.display, "warning", warnings.append)
    src, dest = tmp_path / "src.bin", tmp_path / "dest.bin"
    src.write_bytes(HOSTILE)
    conn.put_file(str(src), str(dest))  # type: ignore[attr-defined]
    assert dest.read_bytes() == HOSTILE
    assert device.commands[1].startswith("mv -f ")
    assert warnings == [f"adb ABC: no sha256sum on the device, {dest} verified with md5sum"]


def test_a_failed_push_ends_the_reader_soon_and_installs_nothing(
    conn: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    device = LocalDevice(conn, monkeypatch)
    device.fail_push = "write failed: No space left on device"
    src, dest = tmp_path / "src.bin", tmp_path / "dest.bin"
    src.write_bytes(HOSTILE)
    began = time.monotonic()
    with pytest.raises(AnsibleError, match="No space left on device"):
        conn.put_file(str(src), str(dest))  # type: ignore[attr-defined]
    assert time.monotonic() - began < 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.bin"]
    assert len(device.commands) == 1  # the reader only; it ended (put_file waited for it)


def test_no_reader_when_its_command_would_not_fit_one_adb_request(
    conn: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    device = LocalDevice(conn, monkeypatch)
    deep = tmp_path.joinpath(*["d" * 250] * 11)  # a destination path of some 2800 bytes (PATH_MAX is 4096)
    deep.mkdir(parents=True)
    src, dest = tmp_path / "src.bin", deep / "dest.bin"
    src.write_bytes(HOSTILE)
    conn.put_file(str(src), str(dest))  # type: ignore[attr-defined]
    assert dest.read_bytes() == HOSTILE
    assert len(device.commands) == 1 and "sha256sum" in device.commands[0]  # checked after the push, as before
