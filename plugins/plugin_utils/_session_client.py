# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetmesh.tailscale: the connection plugins' side of the session daemon (_session_daemon.py).

ensure() reuses the session process behind a host's unix socket or starts one (`python _session_daemon.py`, settings
and password on its stdin, never on the command line) and waits for its login; call() sends one request to it;
request() is call() that starts the process again when it went away (idle exit, killed). Wire format, one request per
connection: a JSON line in; a JSON line out followed by `len` raw bytes for results that carry output, after any
{"progress": line} lines of a put that asked for them (passed to call()'s on_progress).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any


def call(
    socket_path: str, req: dict[str, Any], on_progress: Callable[[str], None] | None = None
) -> tuple[dict[str, Any], bytes]:
    """One request to a running session process; OSError when there is none (or it went away)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(socket_path)
        sock.sendall(json.dumps(req).encode() + b"\n")
        reader = sock.makefile("rb")
        while True:
            line = reader.readline()
            if not line:
                raise ConnectionResetError("the background session closed the request")
            reply = json.loads(line)
            if "progress" not in reply:
                break
            if on_progress is not None:
                on_progress(str(reply["progress"]))
        payload = reader.read(reply.get("len", 0)) if reply.get("len") else b""
        return reply, payload


def ensure(socket_path: str, cfg: dict[str, Any], log: Any) -> dict[str, Any]:
    """Reuse the session process behind socket_path, or start one and wait for its login (under a lock: forks race).

    Returns its stats reply ({"pid", "logins", ...}), or {"error": kind, "msg": text} when it could not log in.
    Settings, password included, go to the new process through a pipe: never on a command line.
    """
    import fcntl  # pylint: disable=import-outside-toplevel  # POSIX only, like the plugins using it

    with open(f"{socket_path}.lock", "a", encoding="ascii") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            stats = call(socket_path, {"op": "stats"})[0]
            log(f"reusing session (pid {stats['pid']}, logins so far {stats['logins']})")
            return stats
        except OSError:
            pass  # none yet, or it exited (idle, killed): start one
        log("starting a background session")
        # Run as a script by path: its imports then come from this directory (sys.path[0]), Ansible or not.
        daemon = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_session_daemon.py")
        proc = subprocess.Popen(  # pylint: disable=consider-using-with  # it outlives this task on purpose
            [sys.executable, daemon],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        if proc.stdin is None or proc.stdout is None:
            return {"error": "SessionError", "msg": "could not talk to the session process"}
        proc.stdin.write(json.dumps({**cfg, "socket_path": socket_path}).encode() + b"\n")
        proc.stdin.close()
        line = proc.stdout.readline()
        proc.stdout.close()
        try:
            reply = json.loads(line) if line else {"error": "SessionError", "msg": "the session process died"}
        except ValueError:
            reply = {"error": "SessionError", "msg": f"the session process said {line[:200]!r}"}
        if "error" in reply:
            proc.wait()
        else:
            log(f"background session {reply['pid']} logged in")
        return dict(reply)


def request(
    socket_path: str,
    cfg: dict[str, Any],
    req: dict[str, Any],
    log: Any,
    unusable: Callable[[OSError], Any] | None = None,
    *,
    on_progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], bytes]:
    """call(), starting the session process first when it is gone (idle exit, killed); errors come back as replies.

    unusable(err), when given, is called (and raises) instead of that reply when the new process does not answer
    either: the telnet plugin's own error for it.
    """
    for attempt in (1, 2):
        try:
            return call(socket_path, req, on_progress)
        except OSError as err:
            if attempt == 2:
                if unusable is not None:
                    unusable(err)
                return {"error": "ConnectError", "msg": f"the session process is unusable: {err}"}, b""
            reply = ensure(socket_path, cfg, log)
            if "error" in reply:
                return reply, b""
    raise AssertionError("unreachable")
