"""Fleet benchmark: playbooks/site.yml over 20 sysvinit lab devices plus one kobo, one quecopen and one systemd,
from scratch and then re-run (targets: <= 12 commands per device and 1 login per device on the no-op run).

Run as root:  /work/main/.venv/bin/python tests/benchmarks/bench_fleet.py [--sysvinit N] [--forks F]
Prints a table per run (wall time, per-profile commands and logins per device, changed/failed hosts) and writes it
to --out (default: print only). Commands are the connection plugins' EXEC lines of the -vvv log (telnet, adb: EXEC;
ssh: SSH: EXEC), logins the telnet session process's "logged in" lines (adb and ssh have no login step here). The
devices (mol-bNN, mol-bk, mol-bq, mol-bd) and the loopback release mirror are made for the run and removed after.

The inventory is `fleetlab inventory`'s (fleetlab.inventory.build): the real Tailscale 1.98.10 (tarballs of
32-36 MB, from the loopback mirror of fleetlab.tailscale_release's builds), logged in to the lab's headscale with
its per-profile keys; kernel mode with the iptables shim on sysvinit, userspace on the ARM devices. The control
plane is started if needed and left running; this run's nodes are deleted from it at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "integration"), str(Path(__file__).resolve().parents[1])]

import yaml  # noqa: E402
from provision_lab import RECAP_RE, release_mirror, stop_sessions  # noqa: E402

from fleetlab import control, inventory, lab  # noqa: E402
from repo_checkout import REPO, ansible_env  # noqa: E402

OTHERS = {"mol-bk": "kobo", "mol-bq": "quecopen", "mol-bd": "systemd"}
ADB_PORT = 15238
FATAL_RE = re.compile(r"^fatal: \[([^\]]+)\]: FAILED!(?:(?!^fatal).)*?msg: (?:\|-\n)?\s*([^\n]*)", re.M | re.S)


def run(inv: Path, work: Path, forks: int) -> tuple[float, str, int]:
    start = time.monotonic()
    proc = subprocess.run(
        ["ansible-playbook", "-vvv", "-f", str(forks), "-i", str(inv), str(REPO / "playbooks/site.yml")],
        env=ansible_env(work / "home", ANSIBLE_CONFIG=str(REPO / "ansible.cfg")),
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
        cwd=REPO,
    )
    return time.monotonic() - start, proc.stdout + proc.stderr, proc.returncode


def per_host(out: str, door_of: dict[str, str]) -> tuple[dict[str, int], dict[str, int]]:
    """EXEC and login lines per inventory host (the log names hosts by their address or adb serial)."""
    execs: dict[str, int] = defaultdict(int)
    logins: dict[str, int] = defaultdict(int)
    for m in re.finditer(r"^<([^>]+)> (SSH: EXEC|EXEC|telnet: background session \d+ logged in)", out, re.M):
        name = door_of.get(m.group(1))
        if name is None:
            continue
        if "logged in" in m.group(2):
            logins[name] += 1
        else:
            execs[name] += 1
    return execs, logins


def table(label: str, wall: float, out: str, profiles: dict[str, str], door_of: dict[str, str]) -> list[str]:
    execs, logins = per_host(out, door_of)
    recap = {m.group(1): m for m in RECAP_RE.finditer(out)}
    lines = [f"{label}: wall {wall:.1f} s"]
    head = ("profile", "hosts", "cmds/dev min-max", "logins/dev", "changed", "failed")
    lines.append("  {:<9} {:>5} {:>17} {:>11} {:>8} {:>7}".format(*head))
    for profile in sorted(set(profiles.values())):
        names = [n for n, p in profiles.items() if p == profile]
        cmds = [execs.get(n, 0) for n in names]
        logs = sorted({logins.get(n, 0) for n in names}) if profile in ("kobo", "sysvinit") else []
        changed = sum(1 for n in names if n in recap and int(recap[n].group(3)) > 0)
        failed = sum(1 for n in names if n not in recap or int(recap[n].group(5)) > 0)
        login_text = ",".join(map(str, logs)) if logs else "n/a"
        lines.append(
            f"  {profile:<9} {len(names):>5} {f'{min(cmds)}-{max(cmds)}':>17} {login_text:>11} {changed:>8} {failed:>7}"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sysvinit", type=int, default=20)
    parser.add_argument("--forks", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_fleet: needs root (the lab)", file=sys.stderr)
        return 2
    profiles = {f"mol-b{i:02d}": "sysvinit" for i in range(1, args.sysvinit + 1)} | OTHERS
    report: list[str] = []
    control.up()  # idempotent; a shared control plane is left running
    control.forget(set(profiles))
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        work = Path(tmp)
        (work / "home").mkdir()
        try:
            start = time.monotonic()
            devices = []
            for name, profile in profiles.items():
                lab.down(name)
                devices.append(lab.up(name, profile))
            report.append(f"bring-up of {len(devices)} lab devices: {time.monotonic() - start:.1f} s")
            with release_mirror(work / "mirror") as mirror:
                data: dict[str, Any] = inventory.build(devices)
                data["all"]["vars"].update(
                    binary_base_url=mirror,
                    binary_cache_dir=str(work / "cache"),
                    fleetmesh_telnet_control_path_dir=str(work / "cp"),
                    fleetmesh_adb_control_path_dir=str(work / "cp"),
                    fleetmesh_adb_server_port=ADB_PORT,
                )
                # quecopen's fixed hostname (mdm9607-perf) would name its node: name it after the device.
                for name, hv in data["all"]["children"].get("quecopen", {}).get("hosts", {}).items():
                    hv["login_hostname"] = name
                inv = work / "inventory.yml"
                inv.write_text(yaml.safe_dump(data))
                door_of = {}
                for group in data["all"]["children"].values():
                    for name, hv in group["hosts"].items():
                        door_of[str(hv["ansible_host"])] = name
                for label in ("from scratch", "no-op re-run"):
                    wall, out, rc = run(inv, work, args.forks)
                    report += table(f"{label} (rc {rc}, forks {args.forks})", wall, out, profiles, door_of)
                    if rc != 0:
                        failed = FATAL_RE.findall(out)
                        report += [f"  failed: {h}: {m.strip()[:150]}" for h, m in failed[:5]]
                    # A later run starts afresh: the telnet/adb background sessions would otherwise be reused.
                    stop_sessions(work / "cp")
        finally:
            stop_sessions(work / "cp")
            subprocess.run(["adb", "-P", str(ADB_PORT), "kill-server"], capture_output=True, check=False)
            for name in profiles:
                lab.down(name)
            (work / "inventory.yml").unlink(missing_ok=True)  # it holds the lab's pre-auth keys
            control.forget(set(profiles))
    print("\n".join(report))
    if args.out:
        args.out.write_text("\n".join(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
