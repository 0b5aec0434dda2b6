# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetmesh.tailscale: keeps one logged-in shell per host (telnet, adb) alive across Ansible tasks.

Ansible makes a new connection object for every task, so without this each task would log in again. Like ssh's
ControlPersist, the first task spawns this small process with _session_client.ensure() (`python _session_daemon.py`,
settings and password on its stdin, never on the command line); it logs in, answers on a unix socket only its owner
can open, runs each request on its ShellSession (which logs in again by itself when the device dropped the session),
and exits after `persist` idle seconds or on a `stop` request. Ansible's own persistent framework
(ansible-connection) was not used: it is built around JSON-RPC for network_cli-style plugins and would need the same
proxying anyway.

This file holds the process: build_session() (the session a cfg describes), handle() (one request, also used in
process by the telnet plugin when not persistent), serve() and main(). The plugins' side is _session_client.py,
the options they read into a cfg _session_options.py.

Wire format, one request per connection: a JSON line in; a JSON line out followed by `len` raw bytes for results
that carry output. A put request with "progress": true may get {"progress": line} lines before its reply: the
_progress.Progress lines of a transfer that takes a while, for the task to print.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
from typing import Any

try:
    from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import (
        _adb_client,
        _http_push,
        _shell_errors,
        _shell_session,
        _telnet_client,
    )
except ImportError:  # started as a script by the connection plugin: this directory is sys.path[0]
    import _adb_client  # type: ignore[no-redef]
    import _http_push  # type: ignore[no-redef]
    import _shell_errors  # type: ignore[no-redef]
    import _shell_session  # type: ignore[no-redef]
    import _telnet_client  # type: ignore[no-redef]


def build_session(cfg: dict[str, Any], log: Any) -> _shell_session.ShellSession:
    """A session over telnet (cfg host/port) or over an interactive `adb shell` (cfg transport "adb", cfg adb)."""
    login = _shell_session.LoginSettings(**cfg["login"])

    def connect() -> _shell_session.Stream:
        if cfg.get("transport") == "adb":
            adb = cfg["adb"]
            client = _adb_client.AdbClient(adb["path"], adb["serial"], adb["server_port"], cfg["connect_timeout"])
            try:
                client.ensure_ready()
                return _adb_client.AdbShellStream(client)
            except _adb_client.AdbError as err:
                raise _shell_errors.ConnectError(str(err)) from None
        return _telnet_client.TelnetStream(cfg["host"], cfg["port"], cfg["connect_timeout"])

    # Old adbd acknowledges each burst of a shell's output before it sends the next: one burst per command there.
    coalesce = cfg.get("transport") == "adb"
    return _shell_session.ShellSession(
        connect, login, log=log, command_timeout=cfg["command_timeout"], coalesce=coalesce
    )


def http_factory(session: _shell_session.ShellSession, cfg: dict[str, Any]) -> Any:
    """A one-shot server maker bound to the address the device reaches us on (or None when unknown)."""
    address = cfg.get("http_host") or (session.stream.local_address() if session.stream else None)
    if not address:
        return None
    return lambda path: _http_push.OneShotServer(path, address, cfg.get("http_port") or 0)


def handle(
    session: _shell_session.ShellSession, cfg: dict[str, Any], req: dict[str, Any], progress: Any = None
) -> tuple[dict, bytes]:
    """Run one request; errors come back as {"error": kind, "msg": text}. progress(line) gets a put's progress
    lines when the request asks for them."""
    messages: list[str] = []
    session.log = messages.append
    try:
        op = req["op"]
        if op == "exec":
            result = session.run(bytes.fromhex(req["cmd"]))
            out = {"rc": result.rc, "stdout": len(result.stdout), "stderr": len(result.stderr)}
            return {**out, "log": messages}, result.stdout + result.stderr
        if op == "put":
            session.open()
            emit = progress if req.get("progress") else None
            method = session.put(
                req["local"], req["remote"], req.get("method", "auto"), http_factory(session, cfg), emit
            )
            return {"method": method, "log": messages}, b""
        if op == "fetch":
            return {"method": session.fetch(req["remote"], req["local"]), "log": messages}, b""
        if op in ("stats", "open"):
            if op == "open":
                session.open()
            stats = {"logins": session.logins, "commands": session.commands, "pid": os.getpid()}
            stats |= {"bytes_sent": session.bytes_sent, "bytes_received": session.bytes_received}
            return {**stats, "log": messages}, b""
        return {"error": "SessionError", "msg": f"unknown op {op!r}"}, b""
    except _shell_errors.SessionError as err:
        return {"error": type(err).__name__, "msg": str(err), "log": messages}, b""


def serve(cfg: dict[str, Any], session: _shell_session.ShellSession, listener: socket.socket) -> None:
    while True:
        watch: list[Any] = [listener]
        if session.stream is not None:
            watch.append(session.stream.fileno())
        ready = select.select(watch, [], [], cfg["persist"])[0]
        if not ready:
            return  # idle for `persist` seconds
        if listener not in ready:
            # The device spoke while we were idle: stray output (dropped), or the end of the session, which is let
            # go now so the next request logs in again.
            if session.connected():
                session.stream.recv(0)  # type: ignore[union-attr]
            else:
                session.log("the device ended the session while idle")
                session.close()
            continue
        conn = listener.accept()[0]
        with conn:
            conn.settimeout(None)
            reader = conn.makefile("rb")
            line = reader.readline()
            if not line:
                continue
            req = json.loads(line)
            if req.get("op") == "stop":
                conn.sendall(b'{"stopped": true}\n')
                return
            reply, payload = handle(session, cfg, req, lambda line, conn=conn: _send_progress(conn, line))
            reply["len"] = len(payload)
            with contextlib.suppress(OSError):  # the task died (Ctrl-C); the session itself is still good
                conn.sendall(json.dumps(reply).encode() + b"\n" + payload)


def _send_progress(conn: socket.socket, line: str) -> None:
    with contextlib.suppress(OSError):  # the task died (Ctrl-C): the transfer goes on, its reply is dropped too
        conn.sendall(json.dumps({"progress": line}).encode() + b"\n")


def _terminate(_signum: int, _frame: Any) -> None:
    raise SystemExit(0)  # runs main's cleanup: socket and pid file removed, device logged out


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    cfg = json.loads(sys.stdin.readline())
    session = build_session(cfg, lambda _msg: None)
    path = cfg["socket_path"]
    try:
        session.open()
    except _shell_errors.SessionError as err:
        print(json.dumps({"error": type(err).__name__, "msg": str(err)}), flush=True)
        return 1
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket is a root shell on the device: only our user may connect
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(8)
    with open(f"{path}.pid", "w", encoding="ascii") as pidfile:
        pidfile.write(f"{os.getpid()}\n")
    print(json.dumps({"ready": True, "pid": os.getpid(), "logins": session.logins}), flush=True)
    # Detach from the task's pipes: nothing more is printed, and Ansible must not wait for us.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    try:
        serve(cfg, session, listener)
    finally:
        listener.close()
        for leftover in (path, f"{path}.pid"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
