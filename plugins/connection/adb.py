# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: adb
short_description: Run commands and move files on devices reachable only by adb (USB or TCP)
version_added: 0.1.0
description:
  - Connects to a device through the stock C(adb) client, by USB serial or C(host:port) (TCP; the plugin runs
    C(adb connect) when needed).
  - Exit codes come back right on old adbd without the C(shell_v2) feature (as on Quectel QuecOpen modules), where
    C(adb shell) itself always exits 0; each command is framed and its real exit status read from its output.
    With C(shell_v2) the shell protocol is used instead, and stdout and stderr come back separately.
  - Without C(shell_v2), the device runs commands under a pty, so stderr is merged into stdout; line endings are
    normalised from CRLF to LF.
  - Commands longer than old adbd's payload limit are pushed as a script and run from a file.
  - Files move with C(adb push)/C(adb pull) (the sync protocol), to a temporary name first, verified by SHA-256 on
    the device (MD5 when the device has no C(sha256sum)), then renamed into place.
  - No Python is needed on the device. C(become) is not supported (these devices give a root shell).
author:
  - fleetmesh developers !UNKNOWN
options:
  remote_addr:
    description:
      - Serial of the device, as C(adb devices) lists it, or C(host:port) for adb over TCP.
    type: str
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
      - name: fleetmesh_adb_serial
  adb_path:
    description: Path of the C(adb) client on the controller.
    type: str
    default: adb
    vars:
      - name: fleetmesh_adb_path
    env:
      - name: FLEETMESH_ADB_PATH
    ini:
      - section: fleetmesh_adb
        key: adb_path
  server_port:
    description:
      - Port of the adb server on the controller (C(adb -P)). Unset means the client's default (5037, or
        C(ANDROID_ADB_SERVER_PORT)).
    type: int
    vars:
      - name: fleetmesh_adb_server_port
    env:
      - name: FLEETMESH_ADB_SERVER_PORT
    ini:
      - section: fleetmesh_adb
        key: server_port
  timeout:
    description: Seconds to wait for one command (and for C(adb connect)) before giving up.
    type: int
    default: 60
    vars:
      - name: ansible_timeout
      - name: fleetmesh_adb_timeout
    env:
      - name: ANSIBLE_TIMEOUT
    ini:
      - section: defaults
        key: timeout
    keyword:
      - name: timeout
  shell_protocol:
    description:
      - Which way to run commands. C(auto) uses the shell protocol when the device advertises C(shell_v2),
        framing otherwise. C(framed) forces framing (for devices that advertise a shell_v2 they do not honour).
    type: str
    default: auto
    choices: [auto, framed]
    vars:
      - name: fleetmesh_adb_shell_protocol
  tmp_dir:
    description: Directory on the device for temporary files (transfers, long commands).
    type: str
    default: /tmp
    vars:
      - name: fleetmesh_adb_tmp_dir
"""

EXAMPLES = r"""
# inventory: a QuecOpen module over USB, and one over TCP (adb on port 55555 in the seed).
# quecopen:
#   hosts:
#     ec25-usb:
#       ansible_connection: fleetmesh.tailscale.adb
#       fleetmesh_adb_serial: 0123456789ABCDEF
#     ag35-tcp:
#       ansible_connection: fleetmesh.tailscale.adb
#       ansible_host: 192.0.2.31:55555

- name: Show the module's kernel
  hosts: quecopen
  gather_facts: false
  tasks:
    - name: Run a command (the real exit status comes back even on old adbd)
      ansible.builtin.raw: uname -a
      changed_when: false

    - name: Gather facts without Python on the device
      fleetmesh.tailscale.device_facts:
"""

import hashlib
import os
import secrets
import shlex
import tempfile
import typing as t

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._adb_client import AdbClient, AdbError

display = Display()

# Old adbd carries a service request ("shell:" + command) in one 4096-byte message; stay well below it.
MAX_INLINE_COMMAND = 3000


def frame(command: str, token: str) -> str:
    """Wrap a command so its exit status follows its output on a line of its own.

    The command runs in a subshell so that its own `exit` cannot skip the frame. The marker is assembled by printf
    from two arguments, so the command's own text (which a `ps` could print) never contains it whole.
    """
    return f"(\n{command}\n)\nprintf '\\n%s%s:%d\\n' __FM_RC_ {token} $?"


def unframe(output: bytes, token: str) -> tuple[int, bytes]:
    """(exit status, output without the frame) from a framed command's output; CRLF from a pty becomes LF."""
    data = output.replace(b"\r\n", b"\n")
    marker = b"\n__FM_RC_" + token.encode() + b":"
    at = data.rfind(marker)
    if at < 0:
        raise AnsibleConnectionFailure("the command's output ended before its exit status (connection cut?)")
    status = data[at + len(marker) :].split(b"\n", 1)[0]
    if not status.strip().isdigit():
        raise AnsibleConnectionFailure(f"unreadable exit status in framed output: {status[:40]!r}")
    return int(status), data[:at]


class Connection(ConnectionBase):
    """Run commands and move files on adb devices."""

    transport = "fleetmesh.tailscale.adb"
    has_pipelining = False
    allow_executable = True
    module_implementation_preferences = (".py", "")

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: AdbClient | None = None
        self._shell_v2 = False

    def _connect(self) -> Connection:
        if self._connected:
            return self
        serial = str(self.get_option("remote_addr"))
        server_port = self.get_option("server_port")
        self._client = AdbClient(
            str(self.get_option("adb_path")),
            serial,
            int(server_port) if server_port else None,
            float(self.get_option("timeout")),
        )
        display.vvv(f"ESTABLISH ADB CONNECTION FOR SERIAL {serial}", host=serial)
        try:
            self._client.ensure_ready()
            features = self._client.features()
        except AdbError as exc:
            raise AnsibleConnectionFailure(str(exc)) from exc
        self._shell_v2 = "shell_v2" in features and self.get_option("shell_protocol") == "auto"
        display.vvv(f"adb features: {','.join(sorted(features)) or 'none'}; shell_v2 used: {self._shell_v2}")
        self._connected = True
        return self

    @property
    def client(self) -> AdbClient:
        if self._client is None:
            raise AnsibleConnectionFailure("adb connection used before it was established")
        return self._client

    def _adb_shell(self, command: str) -> tuple[int, bytes, bytes]:
        try:
            if self._shell_v2:
                proc = self.client.shell(command, shell_v2=True)
                return proc.returncode, proc.stdout, proc.stderr
            token = secrets.token_hex(8)
            proc = self.client.shell(frame(command, token), shell_v2=False)
        except AdbError as exc:
            raise AnsibleConnectionFailure(str(exc)) from exc
        if proc.returncode != 0:
            # Old adbd always returns 0: a failure here is the client's or the transport's.
            self.close()
            raise AnsibleConnectionFailure(
                f"adb shell on {self.client.serial} failed: {to_text(proc.stderr or proc.stdout).strip()[-400:]}"
            )
        rc, out = unframe(proc.stdout, token)
        return rc, out, b""

    def exec_command(self, cmd: str, in_data: bytes | None = None, sudoable: bool = True) -> tuple[int, bytes, bytes]:
        """Run a command on the device and return its real exit status, stdout and stderr."""
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        if in_data is not None:
            raise AnsibleError("the adb connection does not support pipelining (in_data)")
        self._connect()
        command = to_text(cmd, errors="surrogate_or_strict")
        display.vvv(f"EXEC {command}", host=self.client.serial)
        if len(to_bytes(command, errors="surrogate_or_strict")) <= MAX_INLINE_COMMAND:
            return self._adb_shell(command)
        return self._exec_long(command)

    def _exec_long(self, command: str) -> tuple[int, bytes, bytes]:
        """Too long for one adb service request: push it as a script, run it, remove it."""
        remote = f"{self.get_option('tmp_dir')}/.fleetmesh-cmd-{secrets.token_hex(6)}.sh"
        with tempfile.NamedTemporaryFile("wb", prefix="fleetmesh-adb-", suffix=".sh") as script:
            script.write(to_bytes(command, errors="surrogate_or_strict") + b"\n")
            script.flush()
            try:
                self.client.push(script.name, remote)
            except AdbError as exc:
                raise AnsibleConnectionFailure(str(exc)) from exc
        quoted = shlex.quote(remote)
        return self._adb_shell(f"sh {quoted}; rc=$?; rm -f {quoted}; exit $rc")

    def _remote_digest(self, path: str) -> tuple[str, str]:
        """(algorithm, hex digest) of a file on the device: sha256sum, or md5sum where the device lacks it."""
        quoted = shlex.quote(path)
        rc, out, _err = self._adb_shell(
            f"if command -v sha256sum >/dev/null; then echo sha256 $(sha256sum {quoted}); "
            f"else echo md5 $(md5sum {quoted}); fi"
        )
        fields = to_text(out).split()
        if rc != 0 or len(fields) < 2 or fields[0] not in ("sha256", "md5"):
            raise AnsibleError(f"cannot checksum {path} on the device: {to_text(out).strip()[-200:]}")
        if fields[0] == "md5":
            display.warning(f"{self.client.serial}: no sha256sum on the device, verifying {path} with md5sum")
        return fields[0], fields[1]

    def put_file(self, in_path: str, out_path: str) -> None:
        """Push a file to a temporary name on the device, verify its checksum there, then rename it into place."""
        super().put_file(in_path, out_path)
        self._connect()
        local = to_bytes(in_path, errors="surrogate_or_strict")
        if not os.path.isfile(local):
            raise AnsibleFileNotFound(f"file or module does not exist: {in_path}")
        display.vvv(f"PUT {in_path} TO {out_path}", host=self.client.serial)
        tmp = f"{out_path}.fmtmp-{secrets.token_hex(4)}"
        try:
            self.client.push(to_text(local), tmp)
        except AdbError as exc:
            raise AnsibleError(str(exc)) from exc
        algo, remote_digest = self._remote_digest(tmp)
        local_digest = _digest(local, algo)
        qtmp, qout = shlex.quote(tmp), shlex.quote(out_path)
        if remote_digest != local_digest:
            self._adb_shell(f"rm -f {qtmp}")
            raise AnsibleError(
                f"{out_path}: {algo} on the device {remote_digest} != local {local_digest}; not installed"
            )
        rc, out, _err = self._adb_shell(f"mv -f {qtmp} {qout}")
        if rc != 0:
            self._adb_shell(f"rm -f {qtmp}")
            raise AnsibleError(f"cannot rename {tmp} to {out_path} on the device: {to_text(out).strip()}")

    def fetch_file(self, in_path: str, out_path: str) -> None:
        """Pull a file from the device to a temporary local name, verify its checksum, then rename it."""
        super().fetch_file(in_path, out_path)
        self._connect()
        display.vvv(f"FETCH {in_path} TO {out_path}", host=self.client.serial)
        local = to_bytes(out_path, errors="surrogate_or_strict")
        tmp = local + b".fmtmp-" + secrets.token_hex(4).encode()
        try:
            self.client.pull(in_path, to_text(tmp))
            algo, remote_digest = self._remote_digest(in_path)
            local_digest = _digest(tmp, algo)
            if remote_digest != local_digest:
                raise AnsibleError(f"{in_path}: {algo} on the device {remote_digest} != fetched {local_digest}")
            os.replace(tmp, local)
        except AdbError as exc:
            raise AnsibleError(str(exc)) from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def reset(self) -> None:
        """Forget the device's state; the next command reconnects."""
        self.close()

    def close(self) -> None:
        """Mark the connection closed (the adb server keeps its own link to the device)."""
        self._connected = False


def _digest(path: bytes, algo: str) -> str:
    hasher = hashlib.sha256() if algo == "sha256" else hashlib.md5()  # noqa: S324  # md5: device has nothing else
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()
