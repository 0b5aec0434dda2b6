"""fleetmesh.tailscale.telnet loaded through Ansible's loader, against a local telnet endpoint (127.0.0.1).

The endpoint is the boundary: it speaks telnet negotiation and a login prompt, then bridges to a real sh on a pty.
Real busybox telnetd is exercised by tests/integration/test_telnet_connection.py.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import become_loader, connection_loader

NEGOTIATION = bytes([255, 253, 1, 255, 253, 31, 255, 251, 1, 255, 251, 3])


class FakeTelnetd:
    """Accepts connections on 127.0.0.1, asks `login:`, then bridges the socket to `sh -i` on a pty."""

    def __init__(self, user: str = "root") -> None:
        self.user = user
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.logins: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn = self.sock.accept()[0]
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.sendall(NEGOTIATION + b"\x1b[1mfake telnetd\x1b[0m\r\n(none) login: ")
            line = b""
            while not line.endswith(b"\n"):
                chunk = conn.recv(1)
                if not chunk:
                    return
                if chunk == b"\xff":  # negotiation reply: 3 bytes
                    conn.recv(2)
                    continue
                line += chunk
            user = line.strip().decode()
            self.logins.append(user)
            if user != self.user:
                conn.sendall(b"\r\nLogin incorrect\r\n(none) login: ")
                conn.recv(100)
                return
            master, slave = os.openpty()
            env = {"PATH": os.environ["PATH"], "PS1": "# ", "HOME": "/tmp"}
            proc = subprocess.Popen(  # pylint: disable=consider-using-with
                ["/bin/sh", "-i"], stdin=slave, stdout=slave, stderr=slave, start_new_session=True, env=env
            )
            self.procs.append(proc)
            os.close(slave)
            try:
                while True:
                    ready = select.select([conn, master], [], [])[0]
                    if conn in ready:
                        data = conn.recv(65536)
                        if not data:
                            break
                        os.write(master, data.replace(b"\xff\xff", b"\xff"))
                    if master in ready:
                        data = os.read(master, 65536)
                        conn.sendall(data.replace(b"\xff", b"\xff\xff"))
            except OSError:
                pass  # the shell exited: the session ends, as telnetd's would
            finally:
                os.close(master)
                proc.kill()
                proc.wait()

    def close(self) -> None:
        self.sock.close()
        for proc in self.procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def telnetd() -> Iterator[FakeTelnetd]:
    server = FakeTelnetd()
    yield server
    server.close()


@pytest.fixture
def control_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "cp"
    yield path
    stop_sessions(path)


def stop_sessions(path: Path) -> None:
    """Stop the background sessions whose sockets are in path."""
    for sock in path.glob("fmtelnet-*"):
        if sock.suffix not in (".lock", ".pid"):
            try:
                with socket.socket(socket.AF_UNIX) as client:
                    client.connect(str(sock))
                    client.sendall(b'{"op": "stop"}\n')
                    client.recv(100)
            except OSError:
                pass  # already gone


def telnet(control_dir: Path, **options: Any) -> Any:
    conn = connection_loader.get("fleetmesh.tailscale.telnet", PlayContext(), "/dev/null")
    conn.set_options(direct={"remote_addr": "127.0.0.1", "control_path_dir": str(control_dir), **options})
    return conn


def test_loads_by_fqcn_with_documented_defaults(control_dir: Path) -> None:
    conn = telnet(control_dir)
    assert conn.transport == "fleetmesh.tailscale.telnet"
    assert conn.get_option("port") == 23
    assert conn.get_option("remote_user") == "root"
    assert conn.get_option("transfer_method") == "auto"
    assert conn.get_option("persistent") is True
    assert conn.get_option("shell_prompt_re") == "[#$>%][ \\t]*$"


@pytest.mark.parametrize("persistent", [True, False])
def test_closed_port_is_unreachable(control_dir: Path, persistent: bool) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conn = telnet(control_dir, port=port, persistent=persistent)
    with pytest.raises(AnsibleConnectionFailure, match=f"telnet 127.0.0.1:{port}: .*Connection refused"):
        conn.exec_command("true")


def test_persistent_session_is_shared_by_tasks(telnetd: FakeTelnetd, control_dir: Path) -> None:
    first = telnet(control_dir, port=telnetd.port)
    assert first.exec_command("echo one; exit 3") == (3, b"one\n", b"")
    first.close()
    second = telnet(control_dir, port=telnetd.port)  # the next task: a new connection object
    assert second.exec_command("echo two >&2") == (0, b"", b"two\n")
    assert second.session_stats()["logins"] == 1
    assert telnetd.accepted == 1
    second.reset()  # meta: reset_connection
    third = telnet(control_dir, port=telnetd.port)
    assert third.exec_command("echo three") == (0, b"three\n", b"")
    assert telnetd.accepted == 2


def test_non_persistent_logs_in_per_task(telnetd: FakeTelnetd, control_dir: Path) -> None:
    for _task in range(2):
        conn = telnet(control_dir, port=telnetd.port, persistent=False)
        assert conn.exec_command("echo x") == (0, b"x\n", b"")
        conn.close()
    assert telnetd.accepted == 2
    assert not control_dir.exists() or not list(control_dir.iterdir())


def test_wrong_user_is_unreachable_with_cause(telnetd: FakeTelnetd, control_dir: Path) -> None:
    conn = telnet(control_dir, port=telnetd.port, remote_user="nobody", timeout=5)
    with pytest.raises(AnsibleConnectionFailure, match="login as 'nobody' refused: wrong credentials"):
        conn.exec_command("true")


def test_put_and_fetch_through_the_plugin(telnetd: FakeTelnetd, control_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 64)
    conn = telnet(control_dir, port=telnetd.port, transfer_method="base64")
    conn.put_file(str(src), str(tmp_path / "dest.bin"))
    assert (tmp_path / "dest.bin").read_bytes() == src.read_bytes()
    conn.fetch_file(str(tmp_path / "dest.bin"), str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    with pytest.raises(AnsibleError, match="no such readable file"):
        conn.fetch_file(str(tmp_path / "missing"), str(tmp_path / "x"))


def test_stdin_and_become_are_refused(telnetd: FakeTelnetd, control_dir: Path) -> None:
    conn = telnet(control_dir, port=telnetd.port)
    with pytest.raises(AnsibleError, match="cannot feed stdin"):
        conn.exec_command("cat", in_data=b"data")
    conn = telnet(control_dir, port=telnetd.port)
    conn.set_become_plugin(become_loader.get("ansible.builtin.su"))
    with pytest.raises(AnsibleError, match="does not support become"):
        conn.exec_command("true")
