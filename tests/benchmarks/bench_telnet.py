"""Telnet plugin benchmark (prints figures; not a test). Run as root on a machine with the lab:

    /work/main/.venv/bin/python tests/benchmarks/bench_telnet.py [--profile kobo] [--payload FILE | --gzip]
        [--rate-kbit 10000] [--latency-ms 30] [--no-fetch]

A lab device sits behind the lab's link shaper (fleetlab.shaper, one-way latency and a rate cap per direction).
The telnet door goes through one shaper; for the device-pull strategy the one-shot HTTP server is put behind a
second shaper with the same settings, so the device's wget crosses the same kind of link. Figures:

- put of the payload (default: the real tailscaled 1.98.10 binary for the device's arch, what the binary role
  uploads: about 33 MiB arm, 39 MiB amd64, built by fleetlab.tailscale_release) by each strategy (http device
  pull, base64 through the shell) and fetch (base64 out): wall time and bytes on the wire, each as a ratio to the
  physical limit payload/bandwidth (targets: pull <= 1.10x, base64 <= 1.6x), and wall time as a ratio to the bytes
  the shaper passed (both directions) / bandwidth ("x wire");
- --gzip puts what the binary role really sends on first provisioning: the gzip copy of tailscaled that the release
  action makes (plugins/plugin_utils/_release.py extract(), from the lab's release tarball; about 18 MB arm, 21 MB
  amd64). Issue 17's target on a 1 Mbit/s, 100 ms link (--rate-kbit 1000 --latency-ms 100): wall <= 1.15x
  bytes/bandwidth. --no-fetch skips the fetch back (at 1 Mbit/s it takes about as long as the base64 put);
- logins on the device for a 20-task ansible-playbook run (target 1);
- per-command round trip minus the link's own round trip (2 x latency).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fleetlab import lab, tailscale_release
from fleetlab.shaper import ShaperConfig, run_in_thread

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins" / "plugin_utils"))
import _http_push  # noqa: E402  # pylint: disable=wrong-import-position  # the plugin's own code, by path
import _shell_session  # noqa: E402  # pylint: disable=wrong-import-position
import _telnet_client  # noqa: E402  # pylint: disable=wrong-import-position

NAME = "bench-tn"
GATEWAY = "198.18.0.1"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _shaper(target: tuple[str, int], args: argparse.Namespace) -> tuple[Any, Any]:
    config = ShaperConfig(GATEWAY, 0, target[0], target[1], latency_ms=args.latency_ms, rate_kbit=args.rate_kbit)
    return run_in_thread(config)


def _wire(*shapers: Any) -> int:
    return sum(s.stats.bytes_up + s.stats.bytes_down for s in shapers)


def _play_logins(door_port: int, tasks: int) -> tuple[int, float]:
    """Logins the device saw for one ansible-playbook run of `tasks` raw tasks through the shaped door."""
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp)
        (top / "c" / "ansible_collections" / "fleetmesh").mkdir(parents=True)
        (top / "c" / "ansible_collections" / "fleetmesh" / "tailscale").symlink_to(REPO)
        inventory = {
            "all": {
                "hosts": {"dev": {"ansible_host": GATEWAY, "ansible_port": door_port}},
                "vars": {
                    "ansible_connection": "fleetmesh.tailscale.telnet",
                    "fleetmesh_telnet_control_path_dir": str(top / "cp"),
                },
            }
        }
        (top / "inv.json").write_text(json.dumps(inventory))
        steps = [{"ansible.builtin.raw": f"echo {i}", "changed_when": False} for i in range(tasks)]
        (top / "play.json").write_text(json.dumps([{"hosts": "all", "gather_facts": False, "tasks": steps}]))
        env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(top / "c")}
        start = time.monotonic()
        proc = subprocess.run(
            [str(REPO / ".venv/bin/ansible-playbook"), "-i", str(top / "inv.json"), str(top / "play.json")],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.monotonic() - start
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-2000:])
            return -1, wall
        sock = next(p for p in (top / "cp").iterdir() if p.suffix not in (".lock", ".pid"))
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(sock))
            client.sendall(b'{"op": "stats"}\n')
            logins = int(json.loads(client.makefile("rb").readline())["logins"])
            client.close()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(sock))
            client.sendall(b'{"op": "stop"}\n')
            client.recv(100)
        return logins, wall


def _release_gzip(version: str, arch: str, out: Path) -> Path:
    """The gzip copy of tailscaled the release action sends (plugins/plugin_utils/_release.py: extract(), packed()),
    made from the lab's release tarball (fleetlab.tailscale_release, cached) into out."""
    from ansible.utils.collection_loader._collection_finder import (  # noqa: PLC0415
        _AnsibleCollectionFinder,
    )

    _AnsibleCollectionFinder(paths=[str(REPO / ".collections")], scan_sys_paths=False)._install()  # noqa: SLF001
    from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _release  # noqa: PLC0415

    (built,) = tailscale_release.build(versions=[version], arches=[arch])
    return _release.packed(_release.extract(built.path, out))["tailscaled"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="kobo", choices=["kobo", "sysvinit"])
    parser.add_argument("--payload", type=Path, help="file to put (default: the real tailscaled for the device)")
    parser.add_argument("--gzip", action="store_true", help="put the release action's gzip copy of tailscaled")
    parser.add_argument("--no-fetch", dest="fetch", action="store_false", help="skip the fetch back")
    parser.add_argument("--rate-kbit", type=int, default=10000)
    parser.add_argument("--latency-ms", type=int, default=30)
    args = parser.parse_args()

    lab.down(NAME)
    device = lab.up(NAME, args.profile)
    door, door_stop = _shaper((device.address, 23), args)
    http_port = _free_port()
    web, web_stop = _shaper(("127.0.0.1", http_port), args)
    workdir = Path(tempfile.mkdtemp(prefix="bench-telnet-"))
    try:
        arch = "arm" if args.profile == "kobo" else "amd64"
        if args.gzip:
            payload = _release_gzip(tailscale_release.NEW_VERSION, arch, workdir / "release")
        else:
            payload = args.payload or tailscale_release.binaries(tailscale_release.NEW_VERSION, arch)["tailscaled"]
        size = payload.stat().st_size
        limit = size * 8 / (args.rate_kbit * 1000)
        print(
            f"device {NAME} ({args.profile}, {device.address}) behind the shaper: {args.rate_kbit} kbit/s, "
            f"{args.latency_ms} ms one way; payload {payload} ({size} bytes); physical limit {limit:.1f} s"
        )

        def connect() -> _telnet_client.TelnetStream:
            return _telnet_client.TelnetStream(GATEWAY, door.port, 20)

        session = _shell_session.ShellSession(connect, _shell_session.LoginSettings(timeout=30))
        session.open()

        def pull_server(path: str) -> Any:
            server = _http_push.OneShotServer(path, "127.0.0.1", http_port)
            server.url = server.url.replace(f"127.0.0.1:{http_port}", f"{GATEWAY}:{web.port}")
            return server

        remote = "/mnt/onboard/bench.bin" if args.profile == "kobo" else "/tmp/bench.bin"
        rows = []
        for method in ("http", "base64"):
            before = _wire(door, web)
            start = time.monotonic()
            used = session.put(str(payload), remote, method, pull_server)
            wall = time.monotonic() - start
            rows.append((f"put {used}", wall, _wire(door, web) - before))
        if args.fetch:
            before = _wire(door, web)
            start = time.monotonic()
            session.fetch(remote, str(workdir / "back.bin"))
            rows.append(("fetch base64", time.monotonic() - start, _wire(door, web) - before))
            assert (workdir / "back.bin").read_bytes() == payload.read_bytes()
        session.run(f"rm -f {remote}".encode())

        head = f"{'transfer':<14} {'wall s':>8} {'x limit':>8} {'wire bytes':>12} {'x payload':>10} {'x wire':>7}"
        print(head)
        for label, wall, wire in rows:
            on_wire = wire * 8 / (args.rate_kbit * 1000)
            print(f"{label:<14} {wall:8.1f} {wall / limit:8.2f} {wire:12d} {wire / size:10.3f} {wall / on_wire:7.2f}")

        rounds = 50
        start = time.monotonic()
        for _round in range(rounds):
            session.run(b"true")
        per = (time.monotonic() - start) / rounds
        rtt = 2 * args.latency_ms / 1000
        print(
            f"per-command round trip {per * 1000:.1f} ms; link RTT {rtt * 1000:.0f} ms; "
            f"overhead {(per - rtt) * 1000:.1f} ms"
        )
        session.close()

        logins, wall = _play_logins(door.port, 20)
        print(f"20-task ansible-playbook: {logins} login(s) on the device, {wall:.1f} s wall")
    finally:
        door_stop.set()
        web_stop.set()
        lab.down(NAME)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
