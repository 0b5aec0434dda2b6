"""Lab bring-up benchmark: prints how long `up` takes per profile (targets: kobo <= 10 s, 20 sysvinit <= 60 s).

Run as root:  /work/main/.venv/bin/python tests/benchmarks/bench_lab.py [--fleet 20]
Each figure is wall time from `lab.up()` to a device that answers on its door (for telnet devices also a root
login and one command). Preparation (downloads, templates) is done first and timed separately.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

from fleetlab import lab
from fleetlab.rawtelnet import RawTelnet
from fleetlab.state import LabError, device_names

PREFIX = "bl-"


def _timed(label: str, func: Callable[[], object]) -> float | None:
    start = time.monotonic()
    try:
        func()
    except LabError as err:
        print(f"{label:<38} unavailable: {err}")
        return None
    elapsed = time.monotonic() - start
    print(f"{label:<38} {elapsed:7.2f} s")
    return elapsed


def _telnet_check(name: str, expect: str) -> None:
    device = lab.get(name)
    with RawTelnet(device.address) as tn:
        tn.login("root", device.password)
        out, _unused = tn.run("uname -m")
        if out != expect:
            raise LabError(f"{name}: uname -m said {out!r}")


def _up_telnet(name: str, profile: str, expect: str) -> None:
    lab.up(name, profile)
    _telnet_check(name, expect)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", type=int, default=20, help="number of sysvinit devices (default 20)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_lab: needs root", file=sys.stderr)
        return 2
    clash = [n for n in device_names() if n.startswith(PREFIX)]
    for name in clash:
        lab.down(name)
    _timed("prepare (cached after the first run)", lab.prepare)
    try:
        _timed("up kobo (+ telnet login, uname)", lambda: _up_telnet(f"{PREFIX}kobo", "kobo", "armv7l"))
        _timed("up quecopen (adb door listening)", lambda: lab.up(f"{PREFIX}quec", "quecopen"))
        _timed("up systemd (nspawn)", lambda: lab.up(f"{PREFIX}sysd", "systemd"))
        names = [f"{PREFIX}sv{i:02d}" for i in range(1, args.fleet + 1)]

        def fleet() -> None:
            for name in names:
                lab.up(name, "sysvinit")
            for name in names:
                _telnet_check(name, "x86_64")

        total = _timed(f"up {args.fleet} sysvinit (+ login on each)", fleet)
        if total is not None:
            print(f"{'  per sysvinit device':<38} {total / args.fleet:7.2f} s")
        _timed("reboot kobo", lambda: lab.reboot(f"{PREFIX}kobo"))
    finally:
        start = time.monotonic()
        for name in device_names():
            if name.startswith(PREFIX):
                lab.down(name)
        print(f"{'down (all benchmark devices)':<38} {time.monotonic() - start:7.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
