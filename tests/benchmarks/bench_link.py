"""adb upload on a shaped link (prints figures; not a test). Run as root on a machine with the lab:

    /work/main/.venv/bin/python tests/benchmarks/bench_link.py [--rate-kbit 1000] [--latency-ms 100]
        [--mib 2] [--no-bare] [--pull]

The adb half of issue 17's "first provisioning wall time on a shaped 1 Mbit/s, 100 ms link <= 1.15 x
bytes/bandwidth" (the telnet half: bench_telnet.py --gzip). A QuecOpen lab device sits behind the lab's link shaper
(fleetlab.shaper: one-way latency and a rate cap per direction, in this process); the adb connection plugin's
put_file with put_method=sync (adb sync push to a temp name, sha256 on the device, rename) sends the first --mib MiB
of what the binary role really sends (the gzip copy of the arm tailscaled that the release action makes, see
bench_telnet.py), and a bare `adb push` of the same file through the same shaper (unless --no-bare) shows what the
protocol alone costs.

Figures: wall time; as a ratio to payload/bandwidth and to the bytes the shaper passed (both directions) /
bandwidth; and as a ratio to the protocol bound. The lab's quecopen adbd is an old adbd (adb protocol v1, 4096-byte
payloads, each WRTE acknowledged with an OKAY before the next is sent): at most 4 KiB per round trip whatever the
bandwidth, so ceil(size / 4096) x RTT (about 20 KB/s at a 200 ms RTT) is a floor that the bandwidth ratio cannot
beat: a truncated payload keeps the run to a few minutes (the whole 17 MB would take about 15 minutes).

--pull times put_method=pull (what the default, auto, does for files of 16 KiB or more) instead of the sync push:
the device fetches the file with wget from the plugin's one-shot HTTP server, which sits behind a second shaper with
the same settings (as in bench_telnet.py), so the fetch crosses the same kind of link; pull_host/pull_port are that
shaper's listen address. Wire bytes are both shapers' (both directions); "x payload" is wire bytes / payload.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

from fleetlab import lab, tailscale_release
from fleetlab.shaper import ShaperConfig, run_in_thread

REPO = Path(__file__).resolve().parents[2]
NAME = "bench-lk"
GATEWAY = "198.18.0.1"
ADB_PAYLOAD = 4096  # the old adbd's max payload per WRTE (adb protocol v1)
REMOTE = "/usrdata/bench-link.bin"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _load() -> tuple[Any, Any]:
    """(a factory of the collection's adb connection plugin, the collection's _release module)."""
    from ansible.utils.collection_loader._collection_finder import (  # noqa: PLC0415
        _AnsibleCollectionFinder,
    )

    _AnsibleCollectionFinder(paths=[str(REPO / ".collections")], scan_sys_paths=False)._install()  # noqa: SLF001
    from ansible.playbook.play_context import PlayContext  # noqa: PLC0415
    from ansible.plugins.loader import connection_loader  # noqa: PLC0415
    from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _release  # noqa: PLC0415

    return lambda: connection_loader.get("fleetmesh.tailscale.adb", PlayContext(), "/dev/null"), _release


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate-kbit", type=int, default=1000)
    parser.add_argument("--latency-ms", type=int, default=100, help="one-way delay each direction")
    parser.add_argument("--mib", type=float, default=2.0, help="MiB of the real gzip payload to send")
    parser.add_argument("--no-bare", dest="bare", action="store_false", help="skip the bare adb push")
    parser.add_argument("--pull", action="store_true", help="time put_method=pull (device fetch) instead of sync")
    parser.add_argument(
        "--unreachable",
        action="store_true",
        help="time put_method=auto where the device's fetch lands nothing (the fallback's cost), next to sync",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_link: needs root (the lab)", file=sys.stderr)
        return 2
    os.environ.setdefault("ANSIBLE_CONFIG", str(REPO / "ansible.cfg"))
    new_connection, release = _load()
    work = Path(tempfile.mkdtemp(prefix="bench-link-"))
    port = _free_port()
    stop = None
    web_stop = None
    lab.down(NAME)
    try:
        (built,) = tailscale_release.build(versions=[tailscale_release.NEW_VERSION], arches=["arm"])
        full = release.packed(release.extract(built.path, work / "release"))["tailscaled"]
        payload = work / "tailscaled.gz.head"
        with open(full, "rb") as src:
            payload.write_bytes(src.read(int(args.mib * 1024 * 1024)))
        size = payload.stat().st_size
        device = lab.up(NAME, "quecopen")
        config = ShaperConfig(GATEWAY, 0, device.address, 5555, latency_ms=args.latency_ms, rate_kbit=args.rate_kbit)
        shaper, stop = run_in_thread(config)
        rtt = 2 * args.latency_ms / 1000
        limit = size * 8 / (args.rate_kbit * 1000)
        bound = math.ceil(size / ADB_PAYLOAD) * rtt
        print(
            f"device {NAME} (quecopen, old adbd: adb v1, {ADB_PAYLOAD}-byte WRTEs each acknowledged) behind the "
            f"shaper: {args.rate_kbit} kbit/s, {args.latency_ms} ms one way (RTT {rtt * 1000:.0f} ms)"
        )
        print(
            f"payload: the first {size} bytes of {full.name} ({full.stat().st_size} bytes, the release action's "
            f"gzip copy of the arm tailscaled {tailscale_release.NEW_VERSION})"
        )
        print(
            f"bandwidth limit size/bandwidth {limit:.1f} s; protocol bound ceil(size/{ADB_PAYLOAD}) x RTT "
            f"{bound:.1f} s ({ADB_PAYLOAD / rtt / 1000:.1f} KB/s)"
        )

        options: dict[str, Any] = {"put_method": "sync"}
        shapers = [shaper]
        conn = new_connection()
        if args.pull:
            # The plugin's one-shot server listens on the loopback behind a second shaper; the device is told the
            # shaper's address (pull_host/pull_port), as a NAT or port forward would.
            http_port = _free_port()
            web_config = ShaperConfig(
                GATEWAY, 0, "127.0.0.1", http_port, latency_ms=args.latency_ms, rate_kbit=args.rate_kbit
            )
            web, web_stop = run_in_thread(web_config)
            shapers.append(web)
            options = {"put_method": "pull", "pull_host": GATEWAY, "pull_port": web.port}
            plugin = sys.modules[type(conn).__module__]
            one_shot = plugin._http_push.OneShotServer  # noqa: SLF001

            def behind_shaper(path: str, address: str, listen: int) -> Any:
                server = one_shot(path, "127.0.0.1", http_port)
                server.url = server.url.replace(f"127.0.0.1:{http_port}", f"{address}:{listen}")
                return server

            plugin._http_push = types.SimpleNamespace(  # noqa: SLF001
                OneShotServer=behind_shaper,
                fetch_command=plugin._http_push.fetch_command,  # noqa: SLF001
            )
        elif args.unreachable:
            # The device is sent to a controller socket that accepts and never answers (as when a firewall drops
            # the answers): put_method=auto stops wget after its deadline and pushes by sync.
            mute = socket.socket()
            mute.bind((GATEWAY, 0))
            mute.listen(8)
            options = {"put_method": "auto", "pull_host": GATEWAY}
            plugin = sys.modules[type(conn).__module__]
            one_shot = plugin._http_push.OneShotServer  # noqa: SLF001

            def muted(path: str, address: str, listen: int) -> Any:
                server = one_shot(path, address, listen)
                server.url = f"http://{GATEWAY}:{mute.getsockname()[1]}/nothing-answers"
                return server

            plugin._http_push = types.SimpleNamespace(  # noqa: SLF001
                OneShotServer=muted,
                fetch_command=plugin._http_push.fetch_command,  # noqa: SLF001
            )
        conn.set_options(
            direct={
                "remote_addr": f"{GATEWAY}:{shaper.port}",
                "server_port": port,
                "control_path_dir": str(work / "cp"),
                **options,
            }
        )
        conn.exec_command("true")  # connected, adb server warm: the put alone is timed
        rows = []

        def wire() -> int:
            return int(sum(s.stats.bytes_up + s.stats.bytes_down for s in shapers))

        puts = [(conn, f"put_file {'pull' if args.pull else 'sync'}")]
        if args.unreachable:
            reference = new_connection()
            reference.set_options(direct={**conn._options, "put_method": "sync"})  # noqa: SLF001
            puts = [(conn, "auto, no fetch"), (conn, "auto, next put"), (reference, "put_file sync")]
        for via, label in puts:
            before, start = wire(), time.monotonic()
            via.put_file(str(payload), REMOTE)
            rows.append((label, time.monotonic() - start, wire() - before))
            conn.exec_command(f"rm -f {REMOTE}")
        if args.bare:
            serial = f"{GATEWAY}:{shaper.port}"
            before, start = wire(), time.monotonic()
            subprocess.run(
                ["adb", "-P", str(port), "-s", serial, "push", str(payload), REMOTE], check=True, capture_output=True
            )
            rows.append(("bare adb push", time.monotonic() - start, wire() - before))
            conn.exec_command(f"rm -f {REMOTE}")

        head = f"{'transfer':<16} {'wall s':>7} {'KB/s':>6} {'wire bytes':>11} {'x payload':>9} {'x limit':>8}"
        print(f"{head} {'x wire':>7} {'x protocol bound':>17}")
        for label, wall, moved in rows:
            on_wire = moved * 8 / (args.rate_kbit * 1000)
            print(
                f"{label:<16} {wall:7.1f} {size / wall / 1000:6.1f} {moved:11d} {moved / size:9.3f} "
                f"{wall / limit:8.2f} {wall / on_wire:7.2f} {wall / bound:17.2f}"
            )
        if args.unreachable:
            print(
                f"fallback cost: {rows[0][1] - rows[2][1]:.1f} s on the first put of a connection whose device cannot "
                f"fetch (wget stopped after {plugin._http_push.fetch_command.__defaults__[0]} s with nothing landed), "  # noqa: SLF001
                f"{rows[1][1] - rows[2][1]:+.1f} s on its next put (sync at once)"
            )
            return 0
        if args.pull:
            wall, moved = rows[0][1], rows[0][2]
            print(
                f"put_method pull: wall {wall / limit:.2f} x bytes/bandwidth (target <= 1.15), wire bytes "
                f"{moved / size:.3f} x payload (target <= 1.05); the device's wget is not bound by adbd's "
                f"{ADB_PAYLOAD}-byte round trips"
            )
            return 0
        print(
            f"target wall <= 1.15 x bytes/bandwidth: not reachable with this adbd: {ADB_PAYLOAD} bytes per "
            f"{rtt * 1000:.0f} ms round trip is {ADB_PAYLOAD * 8 / rtt / 1000:.0f} kbit/s of a {args.rate_kbit} kbit/s "
            f"link, so the floor is {bound / limit:.2f} x bytes/bandwidth (protocol-bound, not bandwidth-bound)"
        )
    finally:
        if stop is not None:
            stop.set()
        if web_stop is not None:
            web_stop.set()
        for pidfile in (work / "cp").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):  # already gone
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
        subprocess.run(["adb", "-P", str(port), "kill-server"], capture_output=True, check=False)
        lab.down(NAME)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
