"""Round trips of the telnet and adb doors on a cellular-like link (prints figures; not a test). Run as root:

    /work/main/.venv/bin/python tests/benchmarks/bench_latency.py [--latency-ms 100] [--rate-kbit 1000]
        [--commands 10] [--no-site] [--tree LABEL=DIR ...]

Per door, on lab devices behind the lab's link shaper (fleetlab.shaper; default 100 ms each way = 200 ms round
trip, 1000 kbit/s: an LTE link): a sysvinit box over telnet, a QuecOpen module over adb with a login prompt and a
read-only root (old adbd: no shell_v2, 4096-byte WRTEs, each acknowledged), and a QuecOpen module over adb without
login. Figures:

- round trips per command: the plugin's exec_command through a new connection object per command (what each
  Ansible task pays; the door's session already exists), median wall time / the link's round trip;
- round trips per transfer: put_file and fetch_file of a 2 KiB file (its bytes take ~1/50 of a round trip here);
- the no-op site.yml run (the play a fleet re-runs): wall time unshaped and shaped, measured side by side in the same
  run on the same device: a first run unshaped provisions it; a shaped no-op logs in through the shaper (shown
  apart); then unshaped and shaped no-op runs alternate (--site-runs each, medians), each side's session warm.

Round trips are counted as time / RTT, so device-side work (process starts under qemu-user on the ARM devices)
counts too: the figures are upper bounds. --tree LABEL=DIR runs the whole benchmark for each checkout DIR (e.g. one
with the doors' files as they were, for before/after figures from one run); each tree gets its own devices. The real
Tailscale 1.98.10 logs in to the lab's headscale (started if needed, stopped after the run unless it was up before);
this run's nodes are deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _load_plugins(repo: Path) -> Any:
    from ansible.utils.collection_loader._collection_finder import (  # noqa: PLC0415
        _AnsibleCollectionFinder,
    )

    _AnsibleCollectionFinder(paths=[str(repo / ".collections")], scan_sys_paths=False)._install()  # noqa: SLF001
    from ansible.playbook.play_context import PlayContext  # noqa: PLC0415
    from ansible.plugins.loader import connection_loader  # noqa: PLC0415

    return lambda name: connection_loader.get(f"fleetmesh.tailscale.{name}", PlayContext(), "/dev/null")


def _timed(action: Any) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _door_figures(  # noqa: PLR0913 - one door of one device, as the caller measures it
    args: argparse.Namespace, new: Any, *, device: Any, door: str, shaper: Any, port: int, work: Path, profile: str
) -> dict[str, float]:
    """Seconds: the first command (connect, log in), then medians per command, per put and per fetch."""

    def connection() -> Any:
        conn = new(door)
        cp = str(work / "cp")
        if door == "adb":
            options = {"remote_addr": f"198.18.0.1:{shaper.port}", "server_port": port, "control_path_dir": cp}
            if device.login_prompt:
                options["password"] = device.password
        else:
            options = {"remote_addr": "198.18.0.1", "port": shaper.port, "control_path_dir": cp}
            options["password"] = device.password or ""
        conn.set_options(direct=options)
        return conn

    first = _timed(lambda: connection().exec_command("true"))  # connect, log in
    per_cmd = []
    for _i in range(args.commands):
        conn = connection()  # a new connection object per command, as each task gets
        per_cmd.append(_timed(lambda conn=conn: conn.exec_command("echo out; echo err >&2; exit 3")))
    rc, out, err = connection().exec_command("echo out; echo err >&2; exit 3")
    assert (rc, out, err) == (3, b"out\n", b"err\n"), (rc, out, err)
    small = work / "small.bin"
    small.write_bytes(os.urandom(2048))
    remote = "/usrdata/rt-lat.bin" if profile == "quecopen" else "/tmp/rt-lat.bin"
    puts, fetches = [], []
    for _i in range(3):
        conn = connection()
        puts.append(_timed(lambda conn=conn, src=small, dst=remote: conn.put_file(str(src), dst)))
        back = work / "back.bin"
        fetches.append(_timed(lambda conn=conn, src=remote, dst=back: conn.fetch_file(src, str(dst))))
        assert back.read_bytes() == small.read_bytes()
        back.unlink()
    return {
        "first": first,
        "cmd": statistics.median(per_cmd),
        "put": statistics.median(puts),
        "fetch": statistics.median(fetches),
    }


def _micro(args: argparse.Namespace, tag: str, work: Path) -> dict[str, Any]:
    """Round trips per command and per transfer of each door through an in-process shaper."""
    from fleetlab import lab  # noqa: PLC0415
    from fleetlab.shaper import ShaperConfig, run_in_thread  # noqa: PLC0415

    new = _load_plugins(REPO)
    rtt = 2 * args.latency_ms / 1000
    port = _free_port()
    password = "rt-lat-Secret-1"  # a lab-only password for a throwaway device
    specs = [
        ("telnet (sysvinit)", f"rt-{tag}m1", "sysvinit", {}, "telnet", 23),
        ("adb, login prompt", f"rt-{tag}m2", "quecopen", {"password": password, "login_prompt": True}, "adb", 5555),
        ("adb, no login", f"rt-{tag}m3", "quecopen", {}, "adb", 5555),
    ]
    rows: dict[str, Any] = {}
    stops = []
    try:
        for label, name, profile, opts, door, door_port in specs:
            lab.down(name)
            device = lab.up(name, profile, **opts)
            figures: dict[str, dict[str, float]] = {}
            for link, latency in (("unshaped", 0), ("shaped", args.latency_ms)):
                # The same proxy both ways (latency 0 for the unshaped side): the difference is the link alone.
                shaper, stop = run_in_thread(
                    ShaperConfig(
                        "198.18.0.1", 0, device.address, door_port, latency_ms=latency, rate_kbit=args.rate_kbit
                    )
                )
                stops.append(stop)
                figures[link] = _door_figures(
                    args, new, device=device, door=door, shaper=shaper, port=port, work=work, profile=profile
                )
            shaped, unshaped = figures["shaped"], figures["unshaped"]
            rows[label] = {
                **{f"{key}_raw": value / rtt for key, value in shaped.items()},
                **{key: (shaped[key] - unshaped[key]) / rtt for key in shaped},
            }
    finally:
        for stop in stops:
            stop.set()
        for pidfile in (work / "cp").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):  # already gone
                os.kill(int(pidfile.read_text()), 15)
        subprocess.run(["adb", "-P", str(port), "kill-server"], capture_output=True, check=False)
        for _label, name, *_rest in specs:
            lab.down(name)
    return rows


def _site(args: argparse.Namespace, tag: str, work: Path) -> dict[str, Any]:
    """The no-op site.yml unshaped, then shaped (twice), on the same device, per door."""
    sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "integration")]
    from provision_lab import release_mirror, run_site, stop_sessions  # noqa: PLC0415

    from fleetlab import control, lab  # noqa: PLC0415

    specs = [
        ("telnet (sysvinit)", f"rt-{tag}s1", "sysvinit", {}, {}),
        (
            "adb, login prompt, read-only /",
            f"rt-{tag}s2",
            "quecopen",
            {"password": "rt-lat-Secret-2", "login_prompt": True, "readonly_root": True},
            {"login_hostname": f"rt-{tag}s2"},
        ),
    ]
    names = [spec[1] for spec in specs]
    with control.borrowed():  # started for this run if it was not up, and stopped after it
        control.forget(names)
        rows: dict[str, Any] = {}
        try:
            with release_mirror(work / "mirror") as mirror:
                for label, name, profile, opts, extra in specs:
                    lab.down(name)
                    device = lab.up(name, profile, **opts)
                    try:
                        first = run_site(device, work, mirror, extra)
                        if first.rc != 0:
                            raise SystemExit(f"{label}: site.yml failed:\n{first.output[-3000:]}")
                        lab.shape(name, latency_ms=args.latency_ms, rate_kbit=args.rate_kbit)
                        shaped = lab.get(name)
                        direct = dataclasses.replace(
                            shaped, extra={k: v for k, v in shaped.extra.items() if k != "shaper"}
                        )
                        times: dict[str, Any] = {}
                        runs: dict[str, list[float]] = {"unshaped": [], "shaped": []}
                        # The first shaped run logs in through the shaper; then unshaped and shaped alternate, each with
                        # its session warm (the doors' sessions are per address), so drift hits both sides alike.
                        for key in ("shaped, new login", *(["unshaped", "shaped"] * args.site_runs)):
                            start = time.monotonic()
                            run = run_site(direct if key == "unshaped" else shaped, work, mirror, extra)
                            took = time.monotonic() - start
                            if run.rc != 0 or run.changed != 0:
                                raise SystemExit(f"{label}: no-op site.yml: rc {run.rc}, changed {run.changed}")
                            if key in runs:
                                runs[key].append(took)
                            else:
                                times[key] = took
                            times["commands"] = run.execs
                        times |= {key: statistics.median(values) for key, values in runs.items()}
                        rows[label] = times
                    finally:
                        stop_sessions(work / "cp")
                        stop_sessions(work / "home" / ".ansible" / "cp")
                        lab.down(name)
        finally:
            control.forget(names)
        return rows


def _worker(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    try:
        result = {"micro": _micro(args, args.tag, work)}
        if args.site:
            result["site"] = _site(args, args.tag, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ms", type=int, default=100, help="one-way delay each direction")
    parser.add_argument("--rate-kbit", type=int, default=1000)
    parser.add_argument("--commands", type=int, default=10)
    parser.add_argument("--no-site", dest="site", action="store_false", help="skip the site.yml runs")
    parser.add_argument("--site-runs", type=int, default=3, help="no-op runs each side (medians)")
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=DIR", help="checkouts to measure")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="l0", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("ANSIBLE_CONFIG", str(REPO / "ansible.cfg"))
    if args.worker:
        return _worker(args)
    trees = [tree.split("=", 1) for tree in args.tree] or [["this checkout", str(REPO)]]
    results = {}
    for index, (label, directory) in enumerate(trees):
        script = Path(directory) / "tests" / "benchmarks" / HERE.name
        if not script.exists():
            shutil.copy2(HERE, script)  # an older checkout: measured by this same benchmark
        argv = [sys.executable, str(script), "--worker", "--tag", f"l{index}", "--latency-ms", str(args.latency_ms)]
        argv += ["--rate-kbit", str(args.rate_kbit), "--commands", str(args.commands)]
        argv += ["--site-runs", str(args.site_runs)] + ([] if args.site else ["--no-site"])
        env = {**os.environ, "ANSIBLE_CONFIG": str(Path(directory) / "ansible.cfg")}
        proc = subprocess.run(argv, cwd=directory, env=env, capture_output=True, text=True, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"{label}: the benchmark failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            return 1
        results[label] = json.loads(lines[-1][7:])
    rtt = 2 * args.latency_ms
    print(f"link: {args.latency_ms} ms each way (RTT {rtt} ms), {args.rate_kbit} kbit/s; round trips = time / RTT")
    print("round trips = (time shaped - time unshaped) / RTT, each side measured in this run through the same proxy;")
    print("in brackets time shaped / RTT (device-side work included: an upper bound)")
    print(f"{'tree':16} {'door':22} {'RT/command':>14} {'RT/put':>14} {'RT/fetch':>14} {'RT/first cmd':>14}")
    for label, result in results.items():
        for door, row in result["micro"].items():
            cells = " ".join(f"{row[key]:5.2f} ({row[key + '_raw']:5.2f})" for key in ("cmd", "put", "fetch", "first"))
            print(f"{label:16} {door:22} {cells}")
    if args.site:
        print(f"no-op site.yml (wall s; medians of {args.site_runs}, alternating; device commands per run):")
        print("RT/command = (shaped - unshaped) / RTT / commands: what the link adds to each of the play's commands")
        heads = f"{'unshaped':>9} {'shaped':>7} {'shaped+login':>12} {'cmds':>5} {'RT/command':>10}"
        print(f"{'tree':16} {'door':32} {heads}")
        for label, result in results.items():
            for door, row in result["site"].items():
                per = (row["shaped"] - row["unshaped"]) / (rtt / 1000) / max(1, row["commands"])
                print(
                    f"{label:16} {door:32} {row['unshaped']:9.1f} {row['shaped']:7.1f} "
                    f"{row['shaped, new login']:12.1f} {row['commands']:5} {per:10.2f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
