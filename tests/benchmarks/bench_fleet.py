"""Fleet benchmark: playbooks/site.yml over N lab devices (one kobo, one quecopen, one systemd, the rest sysvinit),
from scratch and then no-op re-runs, with per-device figures for the targets of issue 17.

Run as root:  /work/main/.venv/bin/python tests/benchmarks/bench_fleet.py [--devices N] [--forks F]
                  [--tree LABEL=DIR ...] [--rounds R] [--out FILE]
Per run it prints the wall time and wall per device, then per profile: device commands per device (the connection
plugins' EXEC lines of the -vvv log: telnet, adb: EXEC; ssh: SSH: EXEC), logins per device (the telnet session
process's "logged in" lines; adb and ssh log in no differently per command), tasks executed (ok) and skipped per
host (the recap), bytes on the wire per device (both directions of the device's veth, read from the kernel's
counters before and after the run: the provisioning connection and also the node's own control/DERP traffic during
the run) and for the first run the ratio of those bytes to the device's release tarball.

--tree LABEL=DIR measures another checkout the same way (its ansible.cfg, its .collections link, its site.yml):
the first tree provisions from scratch, then the trees' no-op re-runs alternate (--rounds each), on the same
devices, so "before" and "after" are side by side in one run on the same machine. Default: this checkout only.
-f F defaults to ansible.cfg's forks (pass --forks to override).

The devices (mol-bNN, mol-bk, mol-bq, mol-bd) and the loopback release mirror are made for the run and removed
after. The inventory is `fleetlab inventory`'s (fleetlab.inventory.build): the real Tailscale 1.98.10 (tarballs of
32-36 MB, from the loopback mirror of fleetlab.tailscale_release's builds), logged in to the lab's headscale with
its per-profile keys; kernel mode with the iptables shim on sysvinit, userspace on the ARM devices. The control
plane is started if needed and stopped after the run unless it was up before; this run's nodes are deleted from it
at the end.
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
from provision_lab import release_mirror, stop_sessions  # noqa: E402

from fleetlab import control, inventory, lab, tailscale_release  # noqa: E402
from fleetlab.tailscale_release import NEW_VERSION  # noqa: E402
from repo_checkout import REPO, ansible_env  # noqa: E402

OTHERS = {"mol-bk": "kobo", "mol-bq": "quecopen", "mol-bd": "systemd"}
ARCH_OF = {"kobo": "arm", "quecopen": "arm", "sysvinit": "amd64", "systemd": "amd64"}
ADB_PORT = 15238
FATAL_RE = re.compile(r"^fatal: \[([^\]]+)\]: FAILED!(?:(?!^fatal).)*?msg: (?:\|-\n)?\s*([^\n]*)", re.M | re.S)
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+skipped=(\d+)", re.M)


def veth_bytes(devices: dict[str, Any]) -> dict[str, int]:
    """rx + tx of each device's host-side veth (every byte the device sent or received)."""
    total = {}
    for name, device in devices.items():
        stats = Path("/sys/class/net") / device.veth_host / "statistics"
        total[name] = int((stats / "rx_bytes").read_text()) + int((stats / "tx_bytes").read_text())
    return total


def run(tree: Path, inv: Path, work: Path, forks: int | None) -> tuple[float, str, int]:
    start = time.monotonic()
    proc = subprocess.run(
        ["ansible-playbook", "-vvv", *(["-f", str(forks)] if forks else []), "-i", str(inv), "playbooks/site.yml"],
        env=ansible_env(work / "home", ANSIBLE_CONFIG=str(tree / "ansible.cfg")),
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
        cwd=tree,
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


def span(values: list[int] | list[float], fmt: str = "{}") -> str:
    low, high = min(values), max(values)
    return fmt.format(low) if low == high else f"{fmt.format(low)}-{fmt.format(high)}"


def table(label: str, wall: float, out: str, ctx: dict[str, Any], moved: dict[str, int]) -> list[str]:
    profiles, door_of, tarballs = ctx["profiles"], ctx["door_of"], ctx["tarballs"]
    execs, logins = per_host(out, door_of)
    recap = {m.group(1): [int(g) for g in m.groups()[1:]] for m in RECAP.finditer(out)}
    lines = [f"{label}: wall {wall:.1f} s, {wall / len(profiles):.2f} s per device"]
    head = ("profile", "hosts", "cmds/dev", "logins/dev", "tasks ok", "skipped", "MB/dev", "x tarball", "chg", "fail")
    lines.append("  {:<9} {:>5} {:>8} {:>10} {:>8} {:>7} {:>11} {:>9} {:>4} {:>4}".format(*head))
    for profile in sorted(set(profiles.values())):
        names = [n for n, p in profiles.items() if p == profile]
        cmds = [execs.get(n, 0) for n in names]
        logs = [logins.get(n, 0) for n in names] if profile in ("kobo", "sysvinit") else []
        ok = [recap.get(n, [0] * 5)[0] for n in names]
        skipped = [recap.get(n, [0] * 5)[4] for n in names]
        changed = sum(1 for n in names if n in recap and recap[n][1] > 0)
        failed = sum(1 for n in names if n not in recap or recap[n][3] > 0 or recap[n][2] > 0)
        mbytes = [moved[n] / 1e6 for n in names]
        ratio = [moved[n] / tarballs[ARCH_OF[profile]] for n in names]
        lines.append(
            f"  {profile:<9} {len(names):>5} {span(cmds):>8} {span(logs) if logs else 'n/a':>10} {span(ok):>8}"
            f" {span(skipped):>7} {span(mbytes, '{:.2f}'):>11} {span(ratio, '{:.3f}'):>9} {changed:>4} {failed:>4}"
        )
    per_device = wall / len(profiles)
    cmds_all = [execs.get(n, 0) for n in profiles]
    logins_all = [logins.get(n, 0) for n, p in profiles.items() if p in ("kobo", "sysvinit")]
    if label.startswith("from scratch"):
        worst = max(moved[n] / tarballs[ARCH_OF[p]] for n, p in profiles.items())
        lines.append(f"  target: bytes <= 1.05 x tarball per device: worst {worst:.3f} ({verdict(worst <= 1.05)})")
    else:
        lines.append(
            f"  targets: wall per device {per_device:.2f} s <= 0.5 s ({verdict(per_device <= 0.5)}); device commands"
            f" per device max {max(cmds_all)} <= 3 ({verdict(max(cmds_all) <= 3)}); logins per telnet device max"
            f" {max(logins_all, default=0)} <= 1 ({verdict(max(logins_all, default=0) <= 1)})"
        )
    return lines


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def measure(label: str, tree: Path, forks: int | None, ctx: dict[str, Any]) -> list[str]:
    work = ctx["work"]
    before = veth_bytes(ctx["devices"])
    wall, out, rc = run(tree, ctx["inventory"], work, forks)
    after = veth_bytes(ctx["devices"])
    moved = {name: after[name] - before[name] for name in before}
    lines = table(f"{label} (rc {rc})", wall, out, ctx, moved)
    if rc != 0:
        lines += [f"  failed: {h}: {m.strip()[:150]}" for h, m in FATAL_RE.findall(out)[:5]]
    # A later run starts afresh: the telnet/adb background sessions would otherwise be reused.
    stop_sessions(work / "cp")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=23, help="lab devices in all (at least 4)")
    parser.add_argument("--forks", type=int, help="ansible-playbook -f (default: ansible.cfg's forks)")
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=DIR")
    parser.add_argument("--rounds", type=int, default=1, help="no-op re-runs per tree")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_fleet: needs root (the lab)", file=sys.stderr)
        return 2
    if args.devices < 4:
        parser.error("--devices: at least 4 (one per profile)")
    trees = [(label, Path(d).resolve()) for label, d in (t.split("=", 1) for t in args.tree)] or [("this", REPO)]
    profiles = {f"mol-b{i:02d}": "sysvinit" for i in range(1, args.devices - len(OTHERS) + 1)} | OTHERS
    tarballs = {b.arch: b.path.stat().st_size for b in tailscale_release.build(versions=[NEW_VERSION])}
    report: list[str] = [
        f"{len(profiles)} devices, forks {args.forks or 'from ansible.cfg'}, trees "
        + ", ".join(f"{label}={tree}" for label, tree in trees)
        + ", tarballs "
        + ", ".join(f"{arch} {size / 1e6:.1f} MB" for arch, size in sorted(tarballs.items()))
    ]
    with control.borrowed():  # started for this run if it was not up, and stopped after it
        control.forget(set(profiles))
        with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
            work = Path(tmp)
            (work / "home").mkdir()
            devices: dict[str, Any] = {}
            try:
                start = time.monotonic()
                for name, profile in profiles.items():
                    lab.down(name)
                    devices[name] = lab.up(name, profile)
                report.append(f"bring-up of {len(devices)} lab devices: {time.monotonic() - start:.1f} s")
                with release_mirror(work / "mirror") as mirror:
                    data: dict[str, Any] = inventory.build(list(devices.values()))
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
                    ctx = {"profiles": profiles, "door_of": door_of, "tarballs": tarballs, "devices": devices}
                    ctx |= {"work": work, "inventory": inv}
                    report += measure(f"from scratch, {trees[0][0]}", trees[0][1], args.forks, ctx)
                    for rnd in range(1, args.rounds + 1):
                        for label, tree in trees:
                            report += measure(f"no-op re-run {rnd}, {label}", tree, args.forks, ctx)
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
