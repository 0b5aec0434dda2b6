# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: adb
short_description: Run commands and move files on devices reachable only by adb (USB or TCP)
version_added: 0.1.0
description:
  - Connects to a device through the stock C(adb) client (Debian's 1.0.41 or current platform-tools), by USB serial
    or C(host:port) (TCP; the plugin runs C(adb connect) when the adb server does not know the device yet, and says
    clearly when the device refuses the connection, is unauthorized or offline). No Python is needed on the device.
  - B(Exit codes.) On old adbd without the C(shell_v2) feature (Quectel QuecOpen modules), C(adb shell) itself
    always exits 0; each command is therefore framed by random markers and its real exit status read from its
    output. Anything the device prints before the command starts (a greeting) is dropped; markers never reach
    stdout. With C(shell_v2) the shell protocol is used instead (C(adb shell -T)).
  - B(Output.) Without C(shell_v2) the device runs commands under a pty, so CRLF is turned back into LF (a CR the
    command printed itself survives). B(stderr) is kept apart in a temp file in O(tmp_dir) and returned as stderr;
    only when O(tmp_dir) is not writable is it merged into stdout. Commands run in a subshell with stdin from
    C(/dev/null).
  - B(Round trips.) Old adbd waits for the client's acknowledgement after each burst of output, so the command's
    whole frame (stdout, status, stderr) is collected in a temp file in O(tmp_dir) and sent in one burst when it
    ends; a command costs one round trip (plus one per 4 KiB of output), with or without the login session.
  - B(Long commands.) Old adbd takes a command of at most 4096 bytes; longer ones are pushed as a script to
    O(tmp_dir), run from there and removed.
  - B(Login prompt.) When the adb shell greets with a login prompt (as some QuecOpen firmware does), the plugin
    logs in with O(remote_user)/O(password), using the same prompt handling as the C(fleetmesh.tailscale.telnet)
    connection (the shared shell session code), and keeps that session in a background process shared by the
    tasks of the host, like ssh's ControlPersist, so a play pays one login. The password goes to that process
    through a pipe, never on a command line, and is never logged.
  - B(Files) move by the sync protocol (which needs no login), spoken to the adb server's socket directly (two round
    trips plus the bytes, where C(adb push) takes four; C(adb push)/C(adb pull) when C(ADB_SERVER_SOCKET) is set or
    the server does not answer on its port), to a temporary name first, verified by SHA-256 on the device (MD5
    when the device has no C(sha256sum), with a warning) and renamed into place in one more round trip. From
    1 MiB on, a second shell hashes the temporary file on the device while the push writes it (C(dd) and
    C(sha256sum), no Python), so the digest is ready about when the last byte lands; when that reader gives up
    or disagrees, the whole file is hashed once more after the push, as for smaller files, and that decides.
  - B(Device pull.) By default (O(put_method=auto)) a put_file of 16 KiB or more to a network device (a
    C(host:port) serial, or any serial with O(pull_host)) is fetched by the device instead; a one-shot HTTP server
    on the controller serves the file once under a random path, and one device command fetches it with busybox
    C(wget), hashes it while it lands (C(tee) into C(sha256sum), MD5 without it) and renames it into place. Old
    adbd moves at most 4 KiB per round trip (about 6x bytes/bandwidth on a 1 Mbit/s, 100 ms link); the pull runs
    at the link's rate. When the device cannot fetch (no route back to O(pull_host), no C(wget)) the file is
    pushed by sync instead, and so are the task's later files. A device whose fetch fails at once costs a round
    trip, one whose packets to the controller are dropped costs up to 10 seconds (C(wget) is stopped when nothing
    has landed by then). A USB serial without O(pull_host) always uses the sync push.
  - B(Progress.) A put_file that runs longer than 3 seconds prints a line every 5 seconds, at default verbosity,
    on stderr (bytes the device acknowledged for a device pull, the adb server has taken for a sync push; rate,
    time left) and one when it is done; not with the C(adb push) fallback.
  - A device that goes away (unplugged, adbd gone) makes the task UNREACHABLE with the adb client's reason.
  - C(become) is not supported (these devices give a root shell).
author:
  - fleetmesh developers !UNKNOWN
extends_documentation_fragment:
  - fleetmesh.tailscale.shell_session
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
        C(ANDROID_ADB_SERVER_PORT)). The client starts a server there when none runs.
    type: int
    vars:
      - name: fleetmesh_adb_server_port
    env:
      - name: FLEETMESH_ADB_SERVER_PORT
    ini:
      - section: fleetmesh_adb
        key: server_port
  timeout:
    description:
      - Seconds to wait for the adb server's answers, for C(adb connect), and for each login step when the device
        asks for a login. How long one command may run is O(command_timeout).
    type: int
    default: 30
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
      - Which way to run commands. V(auto) uses the shell protocol when the device advertises C(shell_v2),
        framing otherwise. V(framed) forces framing (for devices that advertise a shell_v2 they do not honour).
    type: str
    default: auto
    choices: [auto, framed]
    vars:
      - name: fleetmesh_adb_shell_protocol
  tmp_dir:
    description: Directory on the device for temporary files (stderr of a command, long commands).
    type: str
    default: /tmp
    vars:
      - name: fleetmesh_adb_tmp_dir
  remote_user:
    description: User to log in as when the adb shell asks for a login.
    type: str
    default: root
    vars:
      - name: ansible_user
      - name: fleetmesh_adb_user
    env:
      - name: ANSIBLE_REMOTE_USER
    ini:
      - section: defaults
        key: remote_user
    keyword:
      - name: remote_user
  password:
    description:
      - Password for the login prompt. Unset when the account has none (an empty line is then sent if the device
        asks anyway). Never logged, never on a command line.
    type: str
    vars:
      - name: ansible_password
      - name: fleetmesh_adb_password
    env:
      - name: FLEETMESH_ADB_PASSWORD
  login:
    description:
      - V(auto) runs commands with one C(adb shell) each and switches to a logged-in background session when the
        shell greets with a login prompt (the command never started then, so it is run again in the session).
      - V(always) starts the logged-in session at once (saves one round trip per play on devices known to ask).
    type: str
    default: auto
    choices: [auto, always]
    vars:
      - name: fleetmesh_adb_login
  persist_timeout:
    description: >-
      Seconds a logged-in background session stays up without a request before it logs out. The default outlasts
      the gap between one host's tasks in a fleet run (at 100 devices and 25 forks a host waits over a minute
      between some of its tasks; 60 s meant 3-5 logins per device and run).
    type: int
    default: 300
    vars:
      - name: fleetmesh_adb_persist_timeout
    env:
      - name: FLEETMESH_ADB_PERSIST_TIMEOUT
    ini:
      - section: fleetmesh_adb
        key: persist_timeout
  put_method:
    description:
      - How put_file sends a file. V(sync) pushes it over adb's sync protocol. V(pull) lets the device fetch it
        from a one-shot HTTP server on the controller (busybox C(wget)), for network-attached devices on slow or
        metered links, where old adbd's 4 KiB per round trip is the bottleneck; it falls back to V(sync) when the
        device cannot fetch, and is not tried for a USB serial without O(pull_host) or for an empty file.
      - V(auto) is V(pull) for files of 16 KiB or more (smaller ones take about as long either way) and V(sync)
        below; after a fetch the device could not make, the connection pushes the task's later files by V(sync).
      - Set V(sync) where the controller must not listen for the device (the one-shot server listens on
        O(pull_host) for the length of one put, serving one file under a random path, once).
    type: str
    default: auto
    choices: [auto, sync, pull]
    vars:
      - name: fleetmesh_adb_put_method
    env:
      - name: FLEETMESH_ADB_PUT_METHOD
    ini:
      - section: fleetmesh_adb
        key: put_method
  pull_host:
    description:
      - Controller address the device fetches from with O(put_method=pull); the one-shot server listens there.
        Unset means the controller's local address toward the device (the source address of a route to the host
        part of a C(host:port) serial).
    type: str
    vars:
      - name: fleetmesh_adb_pull_host
    env:
      - name: FLEETMESH_ADB_PULL_HOST
    ini:
      - section: fleetmesh_adb
        key: pull_host
  pull_port:
    description: Port of the one-shot server for O(put_method=pull); 0 means any free port.
    type: int
    default: 0
    vars:
      - name: fleetmesh_adb_pull_port
    env:
      - name: FLEETMESH_ADB_PULL_PORT
    ini:
      - section: fleetmesh_adb
        key: pull_port
  control_path_dir:
    description: Directory for the logged-in background sessions' unix sockets (mode 0700, created when missing).
    type: path
    default: ~/.ansible/cp
    vars:
      - name: fleetmesh_adb_control_path_dir
    env:
      - name: FLEETMESH_ADB_CONTROL_PATH_DIR
    ini:
      - section: fleetmesh_adb
        key: control_path_dir
"""

EXAMPLES = r"""
# Inventory: a QuecOpen module over USB, one over TCP (adb on port 5555), and one whose adb shell asks for a login.
# quecopen:
#   vars:
#     ansible_connection: fleetmesh.tailscale.adb
#   hosts:
#     ec25-usb:
#       fleetmesh_adb_serial: 0123456789ABCDEF
#     ag35-tcp:
#       ansible_host: 192.0.2.31:5555
#     ag35-login:
#       ansible_host: 192.0.2.32:5555
#       ansible_user: root
#       ansible_password: "{{ vault_quecopen_password }}"

- name: Show the modules' kernels
  hosts: quecopen
  gather_facts: false
  tasks:
    - name: Run a command (the real exit status comes back even on old adbd)
      ansible.builtin.raw: uname -a
      changed_when: false

    - name: Gather facts without Python on the device
      fleetmesh.tailscale.device_facts:

    - name: Log in afresh for the next task (ends the background session of a login-prompt device)
      ansible.builtin.meta: reset_connection
"""

import concurrent.futures
import contextlib
import hashlib
import os
import secrets
import shlex
import socket
import tempfile
import time
import typing as t

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import (
    _http_push,
    _session_client,
    _session_options,
)
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._adb_client import (
    AdbClient,
    AdbError,
    DeviceGone,
    LoginRequired,
    NotStarted,
    feature_list,
)
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._progress import Progress

display = Display()

# Old adbd carries a service request ("shell:" + framed command) in one 4096-byte message; the frame adds ~300.
MAX_INLINE_COMMAND = 3400
# put_file hashes on the device while it pushes (follow_hash) from this size on (smaller files hash in no time),
# and below 2 GiB (shell arithmetic of 32-bit busybox builds).
FOLLOW_MIN = 1 << 20
FOLLOW_MAX = (1 << 31) - 1
# put_method=auto lets the device fetch files from this size on (as the telnet connection's transfer_method=auto).
PULL_MIN = 16 * 1024
# Session failures that mean "this host cannot be used": Ansible reports them as UNREACHABLE.
_UNREACHABLE = {"ConnectError", "LoginError", "SessionLost", "CommandTimeout"}


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
        self._socket_path: str | None = None  # set once the device is known to ask for a login
        self._proven = False  # a command or push went through this connection's transport
        self._pull_failed = False  # put_method=auto: the device could not fetch once, push the next file

    # ------------------------------------------------------------------------------------------------ settings

    def _config(self) -> dict[str, t.Any]:
        """Settings of the logged-in session process (password included: they go to it through a pipe)."""
        server_port = self.get_option("server_port")
        return {
            "transport": "adb",
            "adb": {
                "path": str(self.get_option("adb_path")),
                "serial": str(self.get_option("remote_addr")),
                "server_port": int(server_port) if server_port else None,
            },
            "connect_timeout": float(self.get_option("timeout")),
            "command_timeout": float(self.get_option("command_timeout")),
            "login": _session_options.login_settings(self, line_end="\n"),
            "persist": float(self.get_option("persist_timeout")),
        }

    def _control_socket(self) -> str:
        cfg = self._config()
        return _session_options.control_socket(
            self, "fmadb", cfg["adb"]["server_port"], cfg["adb"]["serial"], cfg["login"]["user"]
        )

    @property
    def client(self) -> AdbClient:
        if self._client is None:
            raise AnsibleConnectionFailure("adb connection used before it was established")
        return self._client

    def _vvv(self, msg: str) -> None:
        display.vvv(f"adb: {msg}", host=str(self.get_option("remote_addr")))

    # ------------------------------------------------------------------------------------------------- connect

    def _connect(self) -> Connection:
        if self._connected:
            return self
        if self.become is not None:
            raise AnsibleError("fleetmesh.tailscale.adb does not support become: these devices give a root shell")
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
            features = self._client.features()  # one adb call when the server knows the device already
            if features is None:
                self._client.ensure_ready()
                features = self._client.features() or set()
        except AdbError as exc:
            raise AnsibleConnectionFailure(f"adb {serial}: {exc}") from None
        self._shell_v2 = "shell_v2" in features and self.get_option("shell_protocol") == "auto"
        self._vvv(f"features: {feature_list(features)}; shell_v2 used: {self._shell_v2}")
        socket_path = self._control_socket()
        if self.get_option("login") == "always" or os.path.exists(socket_path):
            self._start_session(socket_path)
        self._connected = True
        return self

    def _start_session(self, socket_path: str) -> None:
        """Use (or start) the host's logged-in background session."""
        reply = _session_client.ensure(socket_path, self._config(), self._vvv)
        if "error" in reply:
            self._unwrap(reply, b"")
        self._socket_path = socket_path

    def _unwrap(self, reply: dict[str, t.Any], payload: bytes) -> tuple[dict[str, t.Any], bytes]:
        for msg in reply.get("log", ()):
            if msg.startswith("warning: "):
                display.warning(f"adb {self.get_option('remote_addr')}: {msg[9:]}")
            else:
                self._vvv(msg)
        if "error" not in reply:
            return reply, payload
        if reply["error"] in _UNREACHABLE:
            raise AnsibleConnectionFailure(f"adb {self.get_option('remote_addr')}: {reply['msg']}")
        raise AnsibleError(f"adb {self.get_option('remote_addr')}: {reply['msg']}")

    # ------------------------------------------------------------------------------------------------ commands

    def _fresh_transport(self, what: t.Callable[[], t.Any]) -> t.Any:
        """Do what (the connection's first command or push) and, when the adb server's transport fails before the
        device opened the service (a stale transport to a rebooted device: the command never started), make the
        transport afresh (adb disconnect + adb connect) and try again, a bounded number of times.

        Only before anything went through this connection: a later failure may come from a command that ran.
        """
        tries = 0
        deadline = time.monotonic() + float(self.get_option("timeout"))
        while True:
            try:
                result = what()
            except NotStarted as exc:
                tries += 1
                if self._proven or tries >= 3 or not self.client.is_tcp or time.monotonic() >= deadline:
                    after = f" (after {tries} fresh connections)" if tries > 1 else ""
                    raise AnsibleConnectionFailure(f"adb {self.client.serial}: {exc}{after}") from None
                self._vvv(f"{exc}: the command did not start; adb disconnect + adb connect, then again")
                try:
                    state = self.client.reconnect()
                except AdbError as again:
                    raise AnsibleConnectionFailure(f"adb {self.client.serial}: {exc}; then {again}") from None
                if state != "device":
                    raise AnsibleConnectionFailure(
                        f"adb {self.client.serial}: {exc}; after adb connect the device is {state or 'not listed'}"
                    ) from None
                continue
            self._proven = True
            return result

    def _run(self, command: str) -> tuple[int, bytes, bytes]:
        """Run a command the way this device needs: shell protocol, framed adb shell, or the logged-in session."""
        if self._socket_path is not None:
            return self._session_run(command)
        try:
            if self._shell_v2:
                return self._fresh_transport(lambda: self.client.shell_v2(command, timeout=self._command_timeout()))
            return self._fresh_transport(
                lambda: self.client.shell_framed(
                    command,
                    secrets.token_hex(8),
                    str(self.get_option("tmp_dir")) or None,
                    timeout=self._command_timeout(),
                    login_res=(str(self.get_option("login_prompt_re")), str(self.get_option("password_prompt_re"))),
                )
            )
        except LoginRequired as exc:
            self._vvv(f"{exc}: logging in (a background session keeps the login for the next tasks)")
            self._start_session(self._control_socket())
            return self._session_run(command)
        except AdbError as exc:
            # Whatever the adb client could not do here (device gone, output cut) makes the host unusable.
            raise AnsibleConnectionFailure(f"adb {self.client.serial}: {exc}") from None

    def _command_timeout(self) -> float | None:
        limit = float(self.get_option("command_timeout"))
        return limit or 1e6  # 0: as long as the adb client keeps the stream (1e6 s: poll() takes at most 2^31 ms)

    def _session_run(self, command: str) -> tuple[int, bytes, bytes]:
        if self._socket_path is None:
            raise AnsibleConnectionFailure("adb: no session (internal error)")
        req = {"op": "exec", "cmd": to_bytes(command, errors="surrogate_or_strict").hex()}
        reply, payload = self._unwrap(*_session_client.request(self._socket_path, self._config(), req, self._vvv))
        return reply["rc"], payload[: reply["stdout"]], payload[reply["stdout"] :]

    def exec_command(self, cmd: str, in_data: bytes | None = None, sudoable: bool = True) -> tuple[int, bytes, bytes]:
        """Run a command on the device and return its real exit status, stdout and stderr."""
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        if in_data is not None:
            raise AnsibleError("the adb connection does not support pipelining (in_data)")
        self._connect()
        command = to_text(cmd, errors="surrogate_or_strict")
        display.vvv(f"EXEC {command}", host=self.client.serial)
        if self._socket_path is not None or len(to_bytes(command, errors="surrogate_or_strict")) <= MAX_INLINE_COMMAND:
            return self._run(command)  # a logged-in session types long commands in pieces itself
        return self._exec_long(command)

    def _exec_long(self, command: str) -> tuple[int, bytes, bytes]:
        """Too long for one adb service request: push it as a script, run it, remove it."""
        remote = f"{self.get_option('tmp_dir')}/.fmadb-cmd-{secrets.token_hex(6)}.sh"
        with tempfile.NamedTemporaryFile("wb", prefix="fleetmesh-adb-", suffix=".sh") as script:
            script.write(to_bytes(command, errors="surrogate_or_strict") + b"\n")
            script.flush()
            self._push(script.name, remote)
        quoted = shlex.quote(remote)
        self._vvv(f"command of {len(command)} characters pushed as {remote}")
        return self._run(f"sh {quoted}; rc=$?; rm -f {quoted}; exit $rc")

    # --------------------------------------------------------------------------------------------------- files

    def _push(self, local: str, remote: str, progress: t.Callable[[int], None] | None = None) -> None:
        try:
            self._fresh_transport(lambda: self.client.push(local, remote, progress))
        except DeviceGone as exc:
            raise AnsibleConnectionFailure(f"adb {self.client.serial}: {exc}") from None
        except AdbError as exc:
            raise AnsibleError(f"adb {self.client.serial}: {exc}") from None

    def put_file(self, in_path: str, out_path: str) -> None:
        """Push a file to a temporary name on the device, verify its checksum there, then rename it into place."""
        super().put_file(in_path, out_path)
        self._connect()
        local = to_text(to_bytes(in_path, errors="surrogate_or_strict"))
        if not os.path.isfile(local):
            raise AnsibleFileNotFound(f"file or module does not exist: {in_path}")
        out_path = str(out_path)
        display.vvv(f"PUT {local} TO {out_path}", host=self.client.serial)
        size = os.path.getsize(local)
        method = self.get_option("put_method")
        pull = method == "pull" or (method == "auto" and size >= PULL_MIN and not self._pull_failed)
        if pull and self._put_pull(local, out_path, size):
            return
        tmp = f"{out_path}.fmtmp{secrets.token_hex(4)}"
        meter = self._meter(size, out_path)
        follow = FOLLOW_MIN <= size < FOLLOW_MAX
        tmp_dir = str(self.get_option("tmp_dir")) or None
        followed: list[concurrent.futures.Future[tuple[int, bytes, bytes]] | None] = []
        with concurrent.futures.ThreadPoolExecutor(2) as pool:

            def pushed(count: int) -> None:
                meter.update(count)
                if follow and not followed:
                    # The device opened sync and takes the bytes: the transport is good (no stale-transport retry
                    # from here on, which could race with the second shell). The device now hashes the temp file
                    # as it grows, in parallel with the push, so the digest is ready about when the last byte
                    # lands (follow_hash); not with the adb push fallback, which reports no progress.
                    self._proven = True
                    reader = follow_hash(
                        tmp, size, tmp_dir, secrets.token_hex(6), float(self.get_option("command_timeout"))
                    )
                    # One adb service request (longer, old adbd would drop the connection, the push's with it).
                    fits = len(to_bytes(reader, errors="surrogate_or_strict")) <= MAX_INLINE_COMMAND
                    followed.append(pool.submit(self._run, reader) if fits or self._socket_path else None)

            digests = pool.submit(_digests, local)  # hashed while adb pushes
            self._push(local, tmp, pushed)  # on failure the device's reader ends by itself (see follow_hash)
            sha256, md5 = digests.result()
            device = _followed_digest(followed[0] if followed else None)
        meter.finish()
        qtmp, qout = shlex.quote(tmp), shlex.quote(out_path)
        if device is not None and device[1] == (sha256 if device[0] == "sha256" else md5):
            # Verified already: one round trip renames it into place.
            check = f"mv -f {qtmp} {qout} || {{ rm -f {qtmp}; exit 5; }}; echo {device[0]}"
        else:
            # One round trip: checksum on the device, then rename into place or remove the temp file. Also when
            # the reader's digest differs (or it gave up): only a hash of the whole pushed file decides.
            if followed and followed[0] is not None:
                self._vvv(f"hash while pushing gave {device or 'nothing'}: hashing {tmp} once more")
            check = verify_command(
                tmp, out_path, sha256, md5, produce=f"h=$($c {qtmp}) || {{ rm -f {qtmp}; exit 4; }}", rename_failed=5
            )
        rc, out, err = self._run(check)
        if rc != 0:
            why = to_text(err or out).strip()[-400:]
            raise AnsibleError(f"adb {self.client.serial}: put {out_path} failed (exit {rc}): {why}")
        if to_text(out).strip() == "md5":
            display.warning(f"adb {self.client.serial}: no sha256sum on the device, {out_path} verified with md5sum")

    def _meter(self, size: int, out_path: str) -> Progress:
        """Lines on stderr at default verbosity, so stdout callbacks that print JSON stay parseable; from a worker,
        Display hands them to the main process."""
        return Progress(
            size,
            f"put {os.path.basename(out_path)}",
            lambda line: display.display(f"adb {self.client.serial}: {line}", stderr=True),
        )

    def _pull_address(self) -> str | None:
        """The controller address the device fetches from: pull_host, else the local address of a route toward
        the host part of a host:port serial; None for a USB serial (or no route)."""
        host = self.get_option("pull_host")
        if host:
            return str(host)
        return local_address(self.client.serial)

    def _put_pull(self, local: str, out_path: str, size: int) -> bool:
        """put_method=pull: the device fetches the file from a one-shot HTTP server on the controller, hashes it
        while it lands and renames it into place, in one device command. False when the device could not fetch
        it (the caller pushes it by sync then); an error when what it fetched is not the file."""
        address = self._pull_address()
        if address is None or size == 0:
            self._vvv(f"put_method pull: {'empty file' if size == 0 else 'no controller address (USB)'}: sync push")
            return False
        try:
            server = _http_push.OneShotServer(local, address, int(self.get_option("pull_port") or 0))
        except OSError as exc:
            self._vvv(f"put_method pull: cannot listen on {address}: {exc}: sync push")
            return False
        meter = self._meter(size, out_path)
        try:
            server.on_progress = meter.update
            sha256, md5 = _digests(local)
            tmp = f"{out_path}.fmtmp{secrets.token_hex(4)}"
            rc, out, err = self._run(pull_command(server.url, tmp, out_path, sha256, md5))
        finally:
            server.close()
        if rc == 5:
            why = to_text(err or out).strip()[-300:]
            self._vvv(f"put_method pull: the device could not fetch {server.url} ({why or 'nothing'}): sync push")
            self._pull_failed = True
            return False
        meter.finish()
        if rc != 0:
            why = to_text(err or out).strip()[-400:]
            raise AnsibleError(f"adb {self.client.serial}: put {out_path} failed (exit {rc}): {why}")
        if to_text(out).strip() == "md5":
            display.warning(f"adb {self.client.serial}: no sha256sum on the device, {out_path} verified with md5sum")
        return True

    def fetch_file(self, in_path: str, out_path: str) -> None:
        """Pull a file from the device to a temporary local name, verify its checksum, then rename it."""
        super().fetch_file(in_path, out_path)
        self._connect()
        in_path = str(in_path)
        display.vvv(f"FETCH {in_path} TO {out_path}", host=self.client.serial)
        local = to_text(to_bytes(out_path, errors="surrogate_or_strict"))
        tmp = f"{local}.fmtmp{secrets.token_hex(4)}"
        quoted = shlex.quote(in_path)
        try:
            # The device's checksum and the pull are independent reads of the file: both at once, so the fetch
            # costs the pull's two round trips (sync open, RECV) instead of three.
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                summed = pool.submit(
                    self._run,
                    f"[ -f {quoted} ] && [ -r {quoted} ] || {{ echo 'no such readable file' >&2; exit 2; }}; "
                    f"if command -v sha256sum >/dev/null; then echo sha256 $(sha256sum {quoted}); "
                    f"else echo md5 $(md5sum {quoted}); fi",
                )
                try:
                    self.client.pull(in_path, tmp)
                    pulled: AdbError | None = None
                except AdbError as exc:
                    pulled = exc
                rc, out, err = summed.result()
            fields = to_text(out).split()
            if rc != 0 or len(fields) < 2 or fields[0] not in ("sha256", "md5"):
                why = to_text(err or out).strip()[-300:]
                raise AnsibleError(f"adb {self.client.serial}: cannot fetch {in_path}: {why}")
            if pulled is not None:  # a pull is read-only: once more, now that the checksum's command went through
                self._vvv(f"{pulled}: pulling again")
                try:
                    self.client.pull(in_path, tmp)
                    pulled = None
                except AdbError as exc:
                    pulled = exc
            if isinstance(pulled, DeviceGone):
                raise AnsibleConnectionFailure(f"adb {self.client.serial}: {pulled}") from None
            if pulled is not None:
                raise AnsibleError(f"adb {self.client.serial}: {pulled}") from None
            got = _digests(tmp)[0 if fields[0] == "sha256" else 1]
            if got != fields[1]:
                raise AnsibleError(
                    f"adb {self.client.serial}: {in_path}: {fields[0]} on the device {fields[1]} != fetched {got}"
                )
            if fields[0] == "md5":
                display.warning(f"adb {self.client.serial}: no sha256sum on the device, {in_path} verified with md5")
            os.replace(tmp, local)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    # --------------------------------------------------------------------------------------------------- state

    def session_stats(self) -> dict[str, t.Any] | None:
        """Logins and commands of the host's logged-in session, None without one (for tests and benchmarks)."""
        self._connect()
        if self._socket_path is None:
            return None
        return self._unwrap(*_session_client.request(self._socket_path, self._config(), {"op": "stats"}, self._vvv))[0]

    def reset(self) -> None:
        """End the host's logged-in session, if any (meta: reset_connection): the next task logs in again."""
        socket_path = self._control_socket()
        if os.path.exists(socket_path):
            with contextlib.suppress(OSError):  # it had exited already
                _session_client.call(socket_path, {"op": "stop"})
        self._socket_path = None
        self._connected = False

    def close(self) -> None:
        """Mark the connection closed; the adb server and a logged-in session stay for the next task."""
        self._connected = False


def _digests(path: str) -> tuple[str, str]:
    """(sha256, md5) of a local file in one read: which one the device can check is known only afterwards."""
    sha256 = hashlib.sha256()
    md5 = hashlib.md5()  # noqa: S324  # md5 only where the device has nothing better
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha256.update(block)
            md5.update(block)
    return sha256.hexdigest(), md5.hexdigest()


def local_address(serial: str) -> str | None:
    """The controller's source address toward the host of a `host:port` serial (a UDP connect() sends
    nothing); None for a USB serial or when there is no route."""
    if ":" not in serial:
        return None
    host = serial.rsplit(":", 1)[0].strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))
            return str(probe.getsockname()[0])
    except OSError:
        return None


def verify_command(tmp: str, out_path: str, sha256: str, md5: str, *, produce: str, rename_failed: int) -> str:
    """The device's check of a put: ``produce`` sets h to the output of $c (sha256sum, md5sum without it) over the
    file; then tmp is renamed to out_path when the digest is right (prints the algorithm), else removed (exit 3);
    exit ``rename_failed`` when the rename fails."""
    qtmp, qout = shlex.quote(tmp), shlex.quote(out_path)
    return (
        f"if command -v sha256sum >/dev/null; then a=sha256; w={sha256}; c=sha256sum; "
        f"else a=md5; w={md5}; c=md5sum; fi; {produce}; h=${{h%% *}}; "
        f'if [ "$h" = "$w" ]; then mv -f {qtmp} {qout} || {{ rm -f {qtmp}; exit {rename_failed}; }}; echo $a; '
        f'else rm -f {qtmp}; echo "$a on the device is $h, expected $w: not installed" >&2; exit 3; fi'
    )


def pull_command(url: str, tmp: str, out_path: str, sha256: str, md5: str) -> str:
    """One device command: fetch url with busybox wget into tmp while hashing it (tee), then rename tmp to
    out_path when the digest is right. wget is stopped when nothing has landed within
    _http_push.FIRST_BYTES_WITHIN seconds (a device that cannot reach the controller); the command timeout
    bounds a fetch that stalls later. tee passes the whole stream on when it cannot write the file (a full
    disk): its failure adds a line to what is hashed, so a short file never matches. Exit 5: nothing fetched (no
    route back, no wget); 3: wrong digest (or tee failed, its message before ours), tmp removed; 6: the rename
    failed."""
    qtmp = shlex.quote(tmp)
    fetch = (
        f"h=$( {{ {_http_push.fetch_command(url, tmp)} | tee {qtmp} || echo tee-failed; }} | $c); "
        f"[ -s {qtmp} ] || {{ rm -f {qtmp}; echo 'wget fetched nothing' >&2; exit 5; }}"
    )
    return verify_command(tmp, out_path, sha256, md5, produce=fetch, rename_failed=6)


def follow_hash(tmp: str, size: int, tmp_dir: str | None = "/tmp", token: str = "", limit: float = 0) -> str:
    """A device command that hashes tmp while adb's sync service writes it, and prints `sha256 DIGEST` (`md5
    DIGEST` without sha256sum) once it has read size bytes: started with the push, done when the push is.

    POSIX sh and busybox applets only (dd, sleep, mkfifo; no python, no shell_v2; about 900 bytes). The file is
    opened once (fd 4); each turn one `dd` passes what was added since the last turn, up to the current end of
    the file, into the one sha256sum (bytes through pipes only: binary-safe), and the shell's `read` builtin
    takes the offset reached from /proc/self/fdinfo/4. Between turns it waits 0.05 s, 0.5 s after a turn that
    found less than 64 KiB more (a slow link: no busy device), with `read -t` on a FIFO nobody writes to (made in
    tmp_dir and unlinked at once: no process per wait), or `sleep` where that is not possible (no writable
    tmp_dir, a shell without `read -t` such as dash). So one process a turn (under qemu-user about 6 ms of CPU).

    It never writes, renames or removes the file, and ends by itself: the file is not there within 10 turns
    (about 0.5-1 s: the push failed to create it, or failed and adbd removed it before the first turn), it
    vanished (adbd removes the temp file of a push that failed), it is larger than size, or it did not grow for
    40 turns (2-20 s: the controller went away), or (limit, the command timeout, when set) its waits add up to
    half the limit: it ends well before the command timeout would cut it (and a logged-in session with it).
    A wrong or missing digest only means the file is hashed once more after the push, as without this reader.
    """
    qtmp = shlex.quote(tmp)
    fifo = shlex.quote(f"{tmp_dir}/.fmadb-w{token}") if tmp_dir else ""
    wait = (
        f"if mkfifo {fifo} 2>/dev/null; then exec 5<>{fifo}; rm -f {fifo}; "
        "z() { read -t $d k <&5 2>/dev/null; [ $? -ne 2 ] || sleep $d; }; fi\n"
        if fifo
        else ""
    )
    return (
        f"set -f; t={qtmp}; n={int(size)}; b={int(limit * 50)}; o=0; w=0; d=0.05; e=5; u=0\n"
        "if command -v sha256sum >/dev/null; then a=sha256; c=sha256sum; else a=md5; c=md5sum; fi\n"
        'x() { echo "gave up ($1)" >&3; exit $1; }; exec 3>&1; z() { sleep $d; }\n'
        f"{wait}"
        'until [ -f "$t" ]; do w=$((w + 1)); [ $w -gt 10 ] && x 10; z; done; w=0\n'
        'exec 4<"$t"\n'
        "h=$(while :; do\n"
        " dd bs=1048576 <&4 2>/dev/null || x 6\n"
        ' read -r k p </proc/self/fdinfo/4 && [ "$k" = pos: ] && [ "$p" -ge 0 ] 2>/dev/null || x 11\n'
        " [ $p -le $n ] || x 8; [ $p -lt $n ] || break\n"
        " if [ $p -gt $o ]; then\n"
        "  if [ $o -gt 0 ] && [ $((p - o)) -lt 65536 ]; then d=0.5; e=50; else d=0.05; e=5; fi; o=$p; w=0\n"
        ' else [ -f "$t" ] || x 7; w=$((w + 1)); [ $w -gt 40 ] && x 9; fi\n'
        " z; u=$((u + e)); [ $b -gt 0 ] && [ $u -gt $b ] && x 12\n"
        "done | $c) || exit 2\n"
        "echo $a ${h%% *}"
    )


def _followed_digest(future: concurrent.futures.Future[tuple[int, bytes, bytes]] | None) -> tuple[str, str] | None:
    """(algorithm, digest) the device's reader printed, None when it gave up or was not started."""
    if future is None:
        return None
    try:
        rc, out, _err = future.result()
    except AnsibleError:  # the push's own error, or the check's, says what went wrong
        return None
    fields = to_text(out).split()
    if rc != 0 or len(fields) != 2 or fields[0] not in ("sha256", "md5"):
        return None
    return fields[0], fields[1]
