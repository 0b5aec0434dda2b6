"""Lab adbd throughput (prints figures; not a test). Run as root with Debian's adb and busybox-static installed:

    /work/main/.venv/bin/python tests/benchmarks/bench_adbd.py [--payload FILE] [--runs 3]

Starts fleetlab.adbd on 127.0.0.1 (a port it picks) over a temporary busybox rootfs, drives it with the stock adb
client on a private server port, and prints the best of N runs for `adb push` and `adb pull` of the payload
(default: the real tailscaled 1.98.10 arm binary, about 33 MiB, built by fleetlab.tailscale_release) next to a
local `cp` of the same file (the floor: same disk, no protocol). Old adbd's 4096-byte payload limit makes each
WRTE small, so this is the figure the adb plugin's own push benchmark stands on.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fleetlab import tailscale_release

LAB_DIR = Path(__file__).resolve().parents[1] / "lab"


def _rootfs(root: Path) -> None:
    for sub in ("bin", "etc", "tmp"):
        (root / sub).mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    (root / "bin/sh").symlink_to("busybox")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=600)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payload", type=Path, help="file to push and pull (default: the real tailscaled, arm)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_adbd: run as root (adbd chroots into the rootfs)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-adbd-") as tmp:
        work = Path(tmp)
        root = work / "root"
        _rootfs(root)
        payload = args.payload or tailscale_release.binaries(tailscale_release.NEW_VERSION, "arm")["tailscaled"]
        log = work / "adbd.log"
        env = {**os.environ, "PYTHONPATH": str(LAB_DIR)}
        cmd = [sys.executable, "-m", "fleetlab.adbd", "--listen", "127.0.0.1:0", "--root", str(root)]
        with open(log, "wb") as out:
            adbd = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
        adb_env = {**os.environ, "ANDROID_ADB_SERVER_PORT": str(_free_port())}
        try:
            while "listening on" not in log.read_text():
                if adbd.poll() is not None:
                    raise SystemExit(f"adbd did not start: {log.read_text()}")
                time.sleep(0.05)
            serial = log.read_text().split("listening on ")[1].split()[0]
            subprocess.run(["adb", "connect", serial], check=True, capture_output=True, env=adb_env, timeout=60)
            push = min(
                _timed(["adb", "-s", serial, "push", str(payload), "/tmp/payload.bin"], adb_env)
                for _run in range(args.runs)
            )
            pull = min(
                _timed(["adb", "-s", serial, "pull", "/tmp/payload.bin", str(work / "back.bin")], adb_env)
                for _run in range(args.runs)
            )
            copy = min(_timed(["cp", str(payload), str(work / "copy.bin")], adb_env) for _run in range(args.runs))
        finally:
            subprocess.run(["adb", "kill-server"], check=False, capture_output=True, env=adb_env, timeout=30)
            adbd.terminate()
            adbd.wait(10)
    mib = payload.stat().st_size / 1024 / 1024
    print(f"payload: {payload} ({payload.stat().st_size} bytes)")
    print(f"adbd push {mib:.1f} MiB: {push:.2f} s ({mib / push:.1f} MiB/s, best of {args.runs})")
    print(f"adbd pull {mib:.1f} MiB: {pull:.2f} s ({mib / pull:.1f} MiB/s)")
    print(f"local cp  {mib:.1f} MiB: {copy:.3f} s ({mib / copy:.0f} MiB/s); push/cp = {push / copy:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
