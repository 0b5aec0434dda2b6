"""adb connection plugin benchmark (prints figures; not a test). Run as root on a machine with the lab:

    /work/main/.venv/bin/python tests/benchmarks/bench_adb.py [--payload FILE] [--runs 3] [--commands 30]

Brings up a quecopen lab device (old adbd: no shell_v2, 4096-byte payloads) and one with a login prompt, drives
them with Debian's stock adb client on a private adb server port (killed at the end), and prints, measured side by
side in the same run (alternating, so drift hits both sides alike):

- push of the payload (default: the real tailscaled 1.98.10 arm binary the collection installs on a QuecOpen
  module, about 33 MiB, built by fleetlab.tailscale_release): the plugin's put_file with put_method=sync (sync
  push to a temp name, hashed on the device while it is written, then renamed) vs a bare `adb push` of the same
  file to the same directory; median of N runs each, and the ratio (target <= 1.10x); in the same rotation,
  put_file with the default put_method=auto (the device fetches the file with wget from the plugin's one-shot
  HTTP server, hashing it as it lands) and the sync push with the device's hash after the push (as before issue
  17: a second pass over the file once its last byte landed);
- per-command cost: the plugin's exec_command("true") (framed, real exit status, stderr apart) on one connection,
  the same with a new connection per command (what each Ansible task pays: one `adb features` more), and through
  the logged-in session of a login-prompt device, each vs a bare `adb shell true`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetlab import lab, tailscale_release

REPO = Path(__file__).resolve().parents[2]
PLAIN = "bench-adb1"
LOGIN = "bench-adb2"
PASSWORD = "bench-Secret-3"  # a lab-only password for a throwaway device


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _load_plugin() -> Any:
    from ansible.utils.collection_loader._collection_finder import (  # noqa: PLC0415
        _AnsibleCollectionFinder,
    )

    _AnsibleCollectionFinder(paths=[str(REPO / ".collections")], scan_sys_paths=False)._install()  # noqa: SLF001
    from ansible.playbook.play_context import PlayContext  # noqa: PLC0415
    from ansible.plugins.loader import connection_loader  # noqa: PLC0415

    return lambda: connection_loader.get("fleetmesh.tailscale.adb", PlayContext(), "/dev/null")


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _adb(port: int, serial: str, *args: str) -> None:
    subprocess.run(["adb", "-P", str(port), "-s", serial, *args], check=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--payload", type=Path, help="file to push (default: the real tailscaled, arm)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--commands", type=int, default=30)
    args = parser.parse_args()
    os.environ.setdefault("ANSIBLE_CONFIG", str(REPO / "ansible.cfg"))
    new_connection = _load_plugin()
    port = _free_port()
    work = Path(tempfile.mkdtemp(prefix="bench-adb-"))
    payload = args.payload or tailscale_release.binaries(tailscale_release.NEW_VERSION, "arm")["tailscaled"]
    print(f"payload: {payload} ({payload.stat().st_size} bytes)")
    for name in (PLAIN, LOGIN):
        lab.down(name)
    plain = lab.up(PLAIN, "quecopen")
    login = lab.up(LOGIN, "quecopen", password=PASSWORD, login_prompt=True)
    serial = f"{plain.address}:5555"

    def connection(device: Any, **extra: Any) -> Any:
        conn = new_connection()
        opts = {"remote_addr": f"{device.address}:5555", "server_port": port, "control_path_dir": str(work / "cp")}
        conn.set_options(direct={**opts, **extra})
        return conn

    try:
        subprocess.run(["adb", "-P", str(port), "connect", serial], check=True, capture_output=True)
        conn = connection(plain, put_method="sync")
        conn.exec_command("true")  # connected, server warm
        default = connection(plain)  # put_method=auto: the device pull
        plugin_module = sys.modules[type(conn).__module__]
        follow_min = plugin_module.FOLLOW_MIN

        def put_hash_after() -> None:
            plugin_module.FOLLOW_MIN = plugin_module.FOLLOW_MAX  # no hash while pushing: the check after it
            try:
                conn.put_file(str(payload), "/usrdata/plugin.bin")
            finally:
                plugin_module.FOLLOW_MIN = follow_min

        bare_push, plugin_push, pull_push, after_push = [], [], [], []
        for _run in range(args.runs):
            bare_push.append(_timed(lambda: _adb(port, serial, "push", str(payload), "/usrdata/bare.bin")))
            _adb(port, serial, "shell", "rm -f /usrdata/bare.bin")
            plugin_push.append(_timed(lambda: conn.put_file(str(payload), "/usrdata/plugin.bin")))
            _adb(port, serial, "shell", "rm -f /usrdata/plugin.bin")
            pull_push.append(_timed(lambda: default.put_file(str(payload), "/usrdata/plugin.bin")))
            _adb(port, serial, "shell", "rm -f /usrdata/plugin.bin")
            after_push.append(_timed(put_hash_after))
            _adb(port, serial, "shell", "rm -f /usrdata/plugin.bin")
        bare, plug, pull, after = (statistics.median(v) for v in (bare_push, plugin_push, pull_push, after_push))
        mib = payload.stat().st_size / 1024 / 1024
        print(f"push {mib:.1f} MiB (median of {args.runs}):")
        print(f"  bare adb push          {bare:6.2f} s  ({mib / bare:5.1f} MiB/s)")
        met = "met" if plug / bare <= 1.10 else "NOT met"
        ratio = f"ratio {plug / bare:.2f}x (target <= 1.10x: {met})"
        print(f"  plugin put_file, sync  {plug:6.2f} s  ({mib / plug:5.1f} MiB/s)  {ratio}")
        ratio = f"ratio {pull / bare:.2f}x"
        print(f"  plugin put_file, auto  {pull:6.2f} s  ({mib / pull:5.1f} MiB/s)  {ratio} (the default: device pull)")
        ratio = f"ratio {after / bare:.2f}x"
        print(f"  (hash after the push   {after:6.2f} s  ({mib / after:5.1f} MiB/s)  {ratio}: before issue 17)")
        print(
            "  runs (s): "
            + "; ".join(
                f"{label} {' '.join(f'{x:.2f}' for x in v)}"
                for label, v in (("bare", bare_push), ("sync", plugin_push), ("auto", pull_push), ("after", after_push))
            )
        )
        _adb(port, serial, "push", str(payload), "/usrdata/bare.bin")
        verify = _timed(lambda: _adb(port, serial, "shell", "sha256sum /usrdata/bare.bin >/dev/null"))
        _adb(port, serial, "shell", "rm -f /usrdata/bare.bin")
        print(f"  (bare adb shell sha256sum of the {mib:.1f} MiB file on the device: {verify:.2f} s)")

        n = args.commands
        bare_cmd = [_timed(lambda: _adb(port, serial, "shell", "true")) for _i in range(n)]
        same = [_timed(lambda: conn.exec_command("true")) for _i in range(n)]
        fresh = [_timed(lambda: connection(plain).exec_command("true")) for _i in range(n)]
        session = connection(login, password=PASSWORD)
        login_first = _timed(lambda: session.exec_command("true"))
        logged = [_timed(lambda: session.exec_command("true")) for _i in range(n)]
        base = statistics.median(bare_cmd)
        print(f"per command (median of {n}):")
        print(f"  bare adb shell true                 {base * 1000:6.1f} ms")
        for label, times in (
            ("plugin exec, same connection", same),
            ("plugin exec, new connection (task)", fresh),
            ("plugin exec, login session", logged),
        ):
            med = statistics.median(times)
            print(f"  {label:35s} {med * 1000:6.1f} ms  (+{(med - base) * 1000:5.1f} ms, {med / base:.2f}x)")
        print(f"  first command on the login device (detects the prompt, logs in): {login_first * 1000:.0f} ms")
        stats = session.session_stats()
        print(f"  logins for {n + 1} commands on the login device: {stats['logins']}")
    finally:
        for pidfile in (work / "cp").glob("fmadb-*.pid"):
            with contextlib.suppress(OSError, ValueError):  # already gone
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
        subprocess.run(["adb", "-P", str(port), "kill-server"], capture_output=True, check=False)
        for name in (PLAIN, LOGIN):
            lab.down(name)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
