"""Benchmark: the whole site.yml (with the boot role) per lab profile, first run vs no-op, and reboot to a running
tailscaled. Prints a table: wall time, device commands and uploads of each run, seconds from `fleetlab reboot` to a
node that answers `tailscale status` with its key. Run as root:

    sudo .venv/bin/python tests/benchmarks/bench_boot.py [kobo quecopen sysvinit systemd]

Commands are counted from the connection's -vvv log (EXEC lines: telnet/adb; ssh logs differ and shows 0).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "integration")]

from provision_lab import release_mirror, run_site, stop_sessions  # noqa: E402

from fleetlab import lab  # noqa: E402
from fleetlab.inventory import lab_auth_key  # noqa: E402

# Per profile: lab options and the variables the lab needs (an iptables shim where the box has no iptables).
PROFILES = {
    "kobo": ({}, {}),
    "quecopen": (
        {"readonly_root": True},
        {"device_profile_overrides": {"iptables_shim": True}, "networking_mode": "auto"},
    ),
    "sysvinit": ({}, {"networking_mode": "userspace"}),
    "systemd": ({}, {}),
}


def main(profiles: list[str]) -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp_name:
        work = Path(tmp_name)
        with release_mirror(work / "mirror") as mirror:
            for profile in profiles:
                opts, extra = PROFILES[profile]
                name = f"boot-b{profile[:3]}"
                lab.down(name)
                device = lab.up(name, profile, **opts)
                try:
                    extra = {"login_auth_key": lab_auth_key(), **extra}
                    timings = []
                    for _run in ("first", "no-op"):
                        start = time.monotonic()
                        run = run_site(device, work, mirror, extra)
                        timings.append((time.monotonic() - start, run))
                        if run.rc != 0:
                            raise SystemExit(f"{profile}: site.yml failed:\n{run.output[-3000:]}")
                    start = time.monotonic()
                    lab.reboot(name)
                    while '"PublicKey"' not in lab.exec_(name, ["sh", "-c", "tailscale status --json"]).stdout:
                        if time.monotonic() - start > 60:
                            raise SystemExit(f"{profile}: tailscaled did not come back after reboot")
                        time.sleep(0.2)
                    reboot = time.monotonic() - start
                    rows.append((profile, timings, reboot))
                finally:
                    lab.down(name)
            stop_sessions(work / "cp")
    print(
        f"{'profile':10} {'first s':>8} {'cmds':>5} {'puts':>5} {'changed':>7} {'no-op s':>8} {'cmds':>5} "
        f"{'changed':>7} {'reboot->up s':>12}"
    )
    for profile, ((t1, r1), (t2, r2)), reboot in rows:
        print(
            f"{profile:10} {t1:8.1f} {r1.execs:5} {r1.puts:5} {r1.changed:7} {t2:8.1f} {r2.execs:5} "
            f"{r2.changed:7} {reboot:12.1f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:] or list(PROFILES))
