# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: telnet
short_description: Run commands and move files on busybox devices that only speak telnet
version_added: 0.1.0
description:
  - Logs in over telnet (busybox C(telnetd) with C(login), or a telnetd that gives a shell at once) and runs
    commands in a POSIX shell. No Python is needed on the device.
  - After login the shell gets an empty prompt, C(stty -echo -opost) and no line editing; each command is framed
    with random markers, so stdout (exact bytes, no trailing newline added) and the real exit status come back
    whatever the command prints. Commands run in a subshell with stdin from C(/dev/null).
  - B(stderr) is captured separately through a per-session temp file on the device and returned as stderr; only
    on a device without a writable temp dir is it merged into stdout. Without C(stty) on the device, CRLF in the
    output is turned back into LF.
  - B(One login per host per run). The first task starts a small background process that owns the telnet session
    and answers on a unix socket in O(control_path_dir), like ssh's ControlPersist; later tasks reuse it. It exits
    after O(persist_timeout) idle seconds or on a C(reset_connection) meta task. A session the device dropped is
    re-established before the next command (also when the drop only shows as the command is sent; a command whose
    start marker never came back never ran, so it is sent again after a fresh login); a command cut mid-way fails
    with UNREACHABLE and is not retried. There is one background session per host, port and user.
  - B(Files) are written to a temp name and renamed into place only after the device's C(sha256sum) matches the
    controller's (C(md5sum) when the device lacks sha256sum, said at -vvv). O(transfer_method=auto) lets the device
    pull the file from a one-shot HTTP server on the controller (random path, only that file, closed after) with
    busybox C(wget) for files of 16 KiB or more, and otherwise types it through the shell as base64 lines
    (C(uudecode), then a C(printf) octal loop, when C(base64) is missing). O(transfer_method=auto) falls back from
    HTTP to the shell when the device cannot reach the controller. fetch_file reads C(base64) output (C(uuencode -m)
    or C(od) as fallbacks), verified the same way.
  - B(Progress.) A put_file that runs longer than 3 seconds prints a line every 5 seconds, at default verbosity,
    on stderr (bytes the link has acknowledged, rate, time left) and one when it is done, for HTTP and inline
    transfers alike.
  - C(become) is not supported (these devices give a root login); log in as the user you need.
author:
  - fleetmesh developers !UNKNOWN
extends_documentation_fragment:
  - fleetmesh.tailscale.shell_session
options:
  remote_addr:
    description: Address or name of the device.
    type: str
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
      - name: fleetmesh_telnet_host
  port:
    description: Telnet port of the device.
    type: int
    default: 23
    vars:
      - name: ansible_port
      - name: fleetmesh_telnet_port
    env:
      - name: ANSIBLE_REMOTE_PORT
    ini:
      - section: defaults
        key: remote_port
    keyword:
      - name: port
  remote_user:
    description: User to log in as when the device asks for a login.
    type: str
    default: root
    vars:
      - name: ansible_user
      - name: fleetmesh_telnet_user
    env:
      - name: ANSIBLE_REMOTE_USER
    ini:
      - section: defaults
        key: remote_user
    keyword:
      - name: remote_user
  password:
    description:
      - Password for the login. Unset or empty when the account has none (a Kobo in developer mode); an empty line
        is then sent if the device asks anyway. Never logged, never on a command line.
    type: str
    vars:
      - name: ansible_password
      - name: ansible_telnet_password
      - name: fleetmesh_telnet_password
    env:
      - name: FLEETMESH_TELNET_PASSWORD
  timeout:
    description: Seconds to wait for the TCP connection and then for each login step and the shell prompt.
    type: int
    default: 20
    vars:
      - name: ansible_timeout
      - name: fleetmesh_telnet_timeout
    env:
      - name: ANSIBLE_TIMEOUT
    ini:
      - section: defaults
        key: timeout
    keyword:
      - name: timeout
  transfer_method:
    description:
      - How put_file moves a file. V(auto) picks V(http) for files of 16 KiB or more when the device has
        C(wget), else the first of V(base64), V(uudecode), V(printf) the device supports.
      - V(http) makes the device pull the file from a one-shot HTTP server on the controller.
      - V(base64), V(uudecode) and V(printf) type the file through the shell (lines of 768 characters at most).
    type: str
    default: auto
    choices: [auto, http, base64, uudecode, printf]
    vars:
      - name: fleetmesh_telnet_transfer_method
    env:
      - name: FLEETMESH_TELNET_TRANSFER_METHOD
    ini:
      - section: fleetmesh_telnet
        key: transfer_method
  http_host:
    description:
      - Controller address the device can reach for V(http) transfers. Default is the local address of the telnet
        connection, that is the address the device sees the controller at.
    type: str
    vars:
      - name: fleetmesh_telnet_http_host
    env:
      - name: FLEETMESH_TELNET_HTTP_HOST
    ini:
      - section: fleetmesh_telnet
        key: http_host
  http_port:
    description: TCP port of the one-shot HTTP server; C(0) picks a free one per transfer.
    type: int
    default: 0
    vars:
      - name: fleetmesh_telnet_http_port
    env:
      - name: FLEETMESH_TELNET_HTTP_PORT
    ini:
      - section: fleetmesh_telnet
        key: http_port
  persistent:
    description:
      - Keep the session in a background process shared by the tasks of this host. V(false) logs in for every task
        and logs out at its end.
    type: bool
    default: true
    vars:
      - name: fleetmesh_telnet_persistent
    env:
      - name: FLEETMESH_TELNET_PERSISTENT
    ini:
      - section: fleetmesh_telnet
        key: persistent
  persist_timeout:
    description: >-
      Seconds the background session stays up without a request before it logs out. The default outlasts the gap
      between one host's tasks in a fleet run (at 100 devices and 25 forks a host waits over a minute between some
      of its tasks; 60 s meant 3-5 logins per device and run).
    type: int
    default: 300
    vars:
      - name: fleetmesh_telnet_persist_timeout
    env:
      - name: FLEETMESH_TELNET_PERSIST_TIMEOUT
    ini:
      - section: fleetmesh_telnet
        key: persist_timeout
  control_path_dir:
    description: Directory for the background sessions' unix sockets (mode 0700, created when missing).
    type: path
    default: ~/.ansible/cp
    vars:
      - name: fleetmesh_telnet_control_path_dir
    env:
      - name: FLEETMESH_TELNET_CONTROL_PATH_DIR
    ini:
      - section: fleetmesh_telnet
        key: control_path_dir
"""

EXAMPLES = r"""
# Inventory (YAML), a Kobo in developer mode (root, no password) and a box with a password:
#   all:
#     children:
#       kobo:
#         hosts:
#           kobo-sage: {ansible_host: 192.0.2.20}
#         vars:
#           ansible_connection: fleetmesh.tailscale.telnet
#       sysvinit:
#         hosts:
#           router1:
#             ansible_host: 192.0.2.30
#             ansible_password: "{{ vault_router1_password }}"
#             fleetmesh_shell_prompt_re: '\]\s*$'    # a prompt like [root@router1 /]
#         vars:
#           ansible_connection: fleetmesh.tailscale.telnet
#           fleetmesh_telnet_transfer_method: base64  # the device cannot reach the controller

- name: Look at telnet-only devices
  hosts: kobo:sysvinit
  gather_facts: false
  tasks:
    - name: Kernel and architecture
      ansible.builtin.raw: uname -a
      changed_when: false

    - name: Log in afresh for the next task (ends the background session)
      ansible.builtin.meta: reset_connection
"""

import contextlib
import os
import time
from typing import TYPE_CHECKING, Any, NoReturn

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _session_client, _session_options

if TYPE_CHECKING:
    from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._shell_session import ShellSession

# The session itself (_session_daemon and what it imports) is imported only where a task holds it in-process
# (persistent=false): with the default background session an Ansible worker only talks to it over its socket, and
# every task's worker imports this plugin afresh (about 36 ms saved per task and host).

display = Display()

# Failures that mean "this host cannot be used": Ansible reports them as UNREACHABLE.
_UNREACHABLE = {"ConnectError", "LoginError", "SessionLost", "CommandTimeout"}


def _unusable(err: OSError) -> NoReturn:
    raise AnsibleConnectionFailure(f"telnet session process unusable: {err}") from None


class Connection(ConnectionBase):
    """Telnet to busybox devices, one persistent login per host."""

    transport = "fleetmesh.tailscale.telnet"
    has_pipelining = False
    has_tty = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._local_session: ShellSession | None = None
        self._socket_path: str | None = None

    # ------------------------------------------------------------------------------------------------ settings

    def _config(self) -> dict[str, Any]:
        return {
            "host": str(self.get_option("remote_addr")),
            "port": int(self.get_option("port")),
            "connect_timeout": float(self.get_option("timeout")),
            "command_timeout": float(self.get_option("command_timeout")),
            "login": _session_options.login_settings(self),
            "http_host": None if self.get_option("http_host") is None else str(self.get_option("http_host")),
            "http_port": int(self.get_option("http_port")),
            "persist": float(self.get_option("persist_timeout")),
        }

    def _control_socket(self, cfg: dict[str, Any]) -> str:
        return _session_options.control_socket(self, "fmtelnet", cfg["host"], cfg["port"], cfg["login"]["user"])

    # ------------------------------------------------------------------------------------------------- session

    def _connect(self) -> Connection:
        if self._connected:
            return self
        if self.become is not None:
            raise AnsibleError("fleetmesh.tailscale.telnet does not support become: log in as the user you need")
        cfg = self._config()
        display.vvv(
            f"ESTABLISH TELNET CONNECTION FOR USER: {cfg['login']['user']} TO {cfg['host']}:{cfg['port']}",
            host=cfg["host"],
        )
        if self.get_option("persistent"):
            self._socket_path = self._control_socket(cfg)
            self._ensure_daemon(cfg)
        else:
            from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import (  # noqa: PLC0415
                _session_daemon,
            )

            self._local_session = _session_daemon.build_session(cfg, self._vvv)
            self._call({"op": "open"})  # logs in now, so a refused login fails here as UNREACHABLE
        self._connected = True
        return self

    def _vvv(self, msg: str) -> None:
        display.vvv(f"telnet: {msg}", host=str(self.get_option("remote_addr")))

    def _ensure_daemon(self, cfg: dict[str, Any]) -> None:
        """Reuse the host's background session, or start one (shared with the adb plugin: _session_client)."""
        if self._socket_path is None:
            raise AnsibleError("telnet: no control socket path (internal error)")
        reply = _session_client.ensure(self._socket_path, cfg, self._vvv)
        if "error" in reply:
            self._unwrap(reply, b"")

    def _daemon_call(self, req: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        if self._socket_path is None:
            raise ConnectionRefusedError("no background session")
        return _session_client.call(self._socket_path, req)

    def _local_call(self, req: dict[str, Any], on_progress: Any = None) -> tuple[dict[str, Any], bytes]:
        if self._local_session is None:
            raise AnsibleError("telnet: no session (internal error)")
        from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _session_daemon  # noqa: PLC0415

        cfg = self._config()
        return _session_daemon.handle(self._local_session, cfg, req, on_progress)

    def _call(self, req: dict[str, Any], on_progress: Any = None) -> tuple[dict[str, Any], bytes]:
        if self._local_session is not None:
            return self._unwrap(*self._local_call(req, on_progress))
        if self._socket_path is None:
            raise AnsibleError("telnet: no control socket path (internal error)")
        # When the background process is gone (idle exit, killed), request() starts a new one once, then gives up.
        reply = _session_client.request(
            self._socket_path, self._config(), req, self._vvv, unusable=_unusable, on_progress=on_progress
        )
        return self._unwrap(*reply)

    def _progress(self, line: str) -> None:
        """A long put's progress (_progress.Progress, sent by the session): stderr at default verbosity, so
        stdout callbacks that print JSON stay parseable; from a worker, Display hands it to the main process."""
        display.display(f"telnet {self.get_option('remote_addr')}: {line}", stderr=True)

    def _unwrap(self, reply: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
        for msg in reply.get("log", ()):
            if msg.startswith("warning: "):
                display.warning(f"telnet {self.get_option('remote_addr')}: {msg[9:]}")
            else:
                self._vvv(msg)
        if "error" not in reply:
            return reply, payload
        where = f"{self.get_option('remote_addr')}:{self.get_option('port')}"
        if reply["error"] in _UNREACHABLE:
            raise AnsibleConnectionFailure(f"telnet {where}: {reply['msg']}")
        raise AnsibleError(f"telnet {where}: {reply['msg']}")

    # ----------------------------------------------------------------------------------------------- interface

    def exec_command(self, cmd: str, in_data: bytes | None = None, sudoable: bool = True) -> tuple[int, bytes, bytes]:
        """Run a command in the device shell; returns (rc, stdout, stderr)."""
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        if in_data:
            raise AnsibleError("fleetmesh.tailscale.telnet cannot feed stdin to a command (no pipelining)")
        self._connect()
        display.vvv(f"EXEC {cmd}", host=str(self.get_option("remote_addr")))
        reply, payload = self._call({"op": "exec", "cmd": to_bytes(str(cmd), errors="surrogate_or_strict").hex()})
        return reply["rc"], payload[: reply["stdout"]], payload[reply["stdout"] :]

    def put_file(self, in_path: str, out_path: str) -> None:
        """Copy a controller file to the device, verified by checksum, renamed into place."""
        super().put_file(in_path, out_path)
        self._connect()
        local = to_text(to_bytes(str(in_path), errors="surrogate_or_strict"))
        if not os.path.isfile(local):
            raise AnsibleFileNotFound(f"file or module does not exist: {local}")
        display.vvv(f"PUT {local} TO {out_path}", host=str(self.get_option("remote_addr")))
        started = time.monotonic()
        req = {"op": "put", "local": os.path.abspath(local), "remote": str(out_path), "progress": True}
        reply = self._call({**req, "method": str(self.get_option("transfer_method"))}, self._progress)[0]
        self._vvv(f"put {out_path} by {reply['method']} in {time.monotonic() - started:.1f}s")

    def fetch_file(self, in_path: str, out_path: str) -> None:
        """Copy a device file to the controller, verified by checksum."""
        super().fetch_file(in_path, out_path)
        self._connect()
        local = to_text(to_bytes(str(out_path), errors="surrogate_or_strict"))
        display.vvv(f"FETCH {in_path} TO {local}", host=str(self.get_option("remote_addr")))
        self._call({"op": "fetch", "remote": str(in_path), "local": os.path.abspath(local)})

    def session_stats(self) -> dict[str, Any]:
        """Logins, commands and bytes of this host's session (for tests and benchmarks)."""
        self._connect()
        return self._call({"op": "stats"})[0]

    def reset(self) -> None:
        """End the host's session (meta: reset_connection): the next task logs in again."""
        if self._local_session is not None:
            self._local_session.close()
        else:
            cfg = self._config()
            self._socket_path = self._control_socket(cfg)
            with contextlib.suppress(OSError):  # no session running
                self._daemon_call({"op": "stop"})
        self._connected = False

    def close(self) -> None:
        """Leave the persistent session running for the next task; log out a non-persistent one."""
        if self._local_session is not None:
            self._local_session.close()
            self._local_session = None
        self._connected = False
