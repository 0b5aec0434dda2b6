"""Benchmark: the whole site.yml (with the boot role) per lab profile, first run vs no-op, and reboot to a running
tailscaled. Prints a table: wall time, device commands and uploads of each run, seconds from `fleetlab reboot` to a
node that answers `tailscale status` with its key and seconds until it is Running again (logged in to the lab's
headscale). Run as root:

    sudo .venv/bin/python tests/benchmarks/bench_boot.py [kobo quecopen sysvinit systemd]

The real Tailscale 1.98.10 (fleetlab.tailscale_release: tarballs of 32-36 MB from the loopback mirror) logs in to
the lab's control plane (started if needed and stopped after the run unless it was up before; this run's nodes are
deleted at the end). Networking as provision_lab.run_site gives it: userspace on kobo and quecopen (ARM under
qemu-user) and on sysvinit (no iptables), the profile's default on systemd. Commands are counted from the
connection's -vvv log (EXEC lines: telnet/adb; ssh logs differ and shows 0).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "integration")]

from provision_lab import release_mirror, run_site, stop_sessions  # noqa: E402

from fleetlab import control, lab  # noqa: E402

# Per profile: lab options and extra variables (quecopen with its read-only root; its fixed hostname would name
# the node mdm9607-perf).
PROFILES = {
    "kobo": ({}, {}),
    "quecopen": ({"readonly_root": True}, {"login_hostname": "boot-bquec"}),
    "sysvinit": ({}, {}),
    "systemd": ({}, {}),
}
REBOOT_TIMEOUT = 180.0  # ARM devices run tailscaled under qemu-user: a cold start takes a while on a loaded host


def _status(name: str) -> str:
    return lab.exec_(name, ["sh", "-c", "tailscale status --json"], timeout=120).stdout


def _name(profile: str) -> str:
    return f"boot-b{profile[:4]}"  # sysvinit and systemd differ in the fourth letter


def _forget_nodes(names: list[str]) -> None:
    """This run's nodes in the shared headscale, by the hostname they registered with (the device name)."""
    for node in control.nodes():
        if node.get("name") in names:
            control.delete_node(int(node["id"]))


def main(profiles: list[str]) -> None:
    rows = []
    with control.borrowed():  # started for this run if it was not up, and stopped after it
        names = [_name(profile) for profile in profiles]
        _forget_nodes(names)
        with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp_name:
            work = Path(tmp_name)
            with release_mirror(work / "mirror") as mirror:
                for profile in profiles:
                    opts, extra = PROFILES[profile]
                    name = _name(profile)
                    lab.down(name)
                    device = lab.up(name, profile, **opts)
                    try:
                        timings = []
                        for _run in ("first", "no-op"):
                            start = time.monotonic()
                            run = run_site(device, work, mirror, extra)
                            timings.append((time.monotonic() - start, run))
                            if run.rc != 0:
                                raise SystemExit(f"{profile}: site.yml failed:\n{run.output[-3000:]}")
                        stop_sessions(work / "cp")  # the door's session does not survive the power cycle
                        start = time.monotonic()
                        lab.reboot(name)
                        while '"PublicKey"' not in _status(name):
                            if time.monotonic() - start > REBOOT_TIMEOUT:
                                raise SystemExit(f"{profile}: tailscaled did not come back after reboot")
                            time.sleep(0.2)
                        answers = time.monotonic() - start
                        while '"BackendState": "Running"' not in _status(name):
                            if time.monotonic() - start > REBOOT_TIMEOUT:
                                raise SystemExit(f"{profile}: the node did not reach Running after reboot")
                            time.sleep(0.2)
                        rows.append((profile, timings, answers, time.monotonic() - start))
                    finally:
                        stop_sessions(work / "cp")
                        lab.down(name)
        _forget_nodes(names)
        print(
            f"{'profile':10} {'first s':>8} {'cmds':>5} {'puts':>5} {'changed':>7} {'no-op s':>8} {'cmds':>5} "
            f"{'changed':>7} {'reboot->up s':>12} {'->Running s':>11}"
        )
        for profile, ((t1, r1), (t2, r2)), answers, running in rows:
            print(
                f"{profile:10} {t1:8.1f} {r1.execs:5} {r1.puts:5} {r1.changed:7} {t2:8.1f} {r2.execs:5} "
                f"{r2.changed:7} {answers:12.1f} {running:11.1f}"
            )


if __name__ == "__main__":
    main(sys.argv[1:] or list(PROFILES))
