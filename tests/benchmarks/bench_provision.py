"""Provisioning benchmark: commands sent to the device and wall time of site.yml (device, binary, iptables shim,
state dir) on one lab kobo, first run side by side with a no-op re-run (target: a no-op re-run sends <= 6 commands).

Run as root:  /work/main/.venv/bin/python tests/benchmarks/bench_provision.py
Commands and uploads are counted from the telnet plugin's -vvv log (EXEC and PUT lines). The device and the
loopback release mirror are made for the run and removed afterwards.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "integration"), str(Path(__file__).resolve().parents[1])]

from provision_lab import release_mirror, run_site, stop_sessions  # noqa: E402

from fleetlab import lab  # noqa: E402

NAME = "bp-kobo"


def main() -> int:
    if os.geteuid() != 0:
        print("bench_provision: needs root (the lab)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-provision-") as tmp:
        work = Path(tmp)
        lab.down(NAME)
        device = lab.up(NAME, "kobo")
        try:
            with release_mirror(work / "mirror") as mirror:
                print(f"{'run':<10} {'commands':>8} {'uploads':>8} {'changed':>8} {'wall s':>8}")
                for label in ("first", "no-op", "no-op"):
                    start = time.monotonic()
                    run = run_site(device, work, mirror)
                    wall = time.monotonic() - start
                    if run.rc != 0:
                        print(run.output[-3000:], file=sys.stderr)
                        return 1
                    print(f"{label:<10} {run.execs:>8} {run.puts:>8} {run.changed:>8} {wall:>8.1f}")
        finally:
            stop_sessions(work / "cp")
            lab.down(NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
