"""Upgrade benchmark: playbooks/site.yml from one Tailscale release to the next on one lab device (prints figures;
not a test). Run as root on a machine with the lab:

    /work/main/.venv/bin/python tests/benchmarks/bench_upgrade.py [--profile sysvinit] [--segment] [--logs DIR]
        [--out FILE]

Issue 17's target: "upgrade of one version to the next: bytes on the wire <= 1.05 x the new tarball; nothing
re-sent that the device already has (the shim bundle, unchanged boot files)". A sysvinit lab device (telnet, amd64,
kernel mode with the iptables shim, as `fleetlab inventory` sets it up; or --profile quecopen: adb, arm, userspace)
is provisioned with site.yml at the lab's older release (fleetlab.tailscale_release.OLD_VERSION), then site.yml runs
again with binary_version set to the newer one (NEW_VERSION), as an owner upgrading the fleet would. Figures:

- bytes on the wire of each run: both directions of the device's veth, from the kernel's counters before and after
  the run (the provisioning connection, and also the node's own control-plane traffic during the run), and the
  upgrade's as a ratio to the new release tarball (the file the release action downloads on the controller). The
  kernel counts a GSO aggregate (up to 64 KiB of one TCP stream) with one set of headers, so bulk TCP shows almost no
  header bytes; --segment makes the host-side veth segment to its MTU first, so the count includes the headers of
  every segment, as on a real link;
- the files each run sent (the connection plugin's `PUT <src> TO <dest>` lines of the -vvv log) with their sizes,
  and the files the first run sent that the upgrade did not send again.

The device and the loopback release mirror are made for the run and removed after; the control plane (the lab's
headscale) is started if needed and stopped after the run unless it was up before; this run's node is deleted from
it at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "integration"), str(Path(__file__).resolve().parents[1])]

import yaml  # noqa: E402
from provision_lab import release_mirror, stop_sessions  # noqa: E402

from fleetlab import control, inventory, lab, tailscale_release  # noqa: E402
from fleetlab.tailscale_release import NEW_VERSION, OLD_VERSION  # noqa: E402
from repo_checkout import REPO, ansible_env  # noqa: E402

NAMES = {"sysvinit": "mol-bu", "quecopen": "mol-buq"}
ARCH_OF = {"sysvinit": "amd64", "quecopen": "arm"}
ADB_PORT = 15239
PUT_RE = re.compile(r"^<[^>]+> PUT (\S+) TO (\S+)", re.M)
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


class Report(list[str]):
    """Lines printed as they are added (a failed run still shows what came before), and kept in --out."""

    def __init__(self, out: Path | None) -> None:
        super().__init__()
        self.out = out

    def __iadd__(self, lines: Any) -> Report:
        for line in lines:
            self.append(line)
            print(line, flush=True)
            if self.out is not None:
                with self.out.open("a") as fh:
                    fh.write(line + "\n")
        return self


def veth_counts(device: Any) -> tuple[int, int]:
    """(bytes, packets), rx + tx, of the device's host-side veth (everything the device sent or received)."""
    stats = Path("/sys/class/net") / device.veth_host / "statistics"
    return tuple(  # type: ignore[return-value]
        int((stats / f"rx_{what}").read_text()) + int((stats / f"tx_{what}").read_text())
        for what in ("bytes", "packets")
    )


def site(device: Any, inv: Path, work: Path, version: str, logs: Path | None) -> dict[str, Any]:
    """site.yml -vvv with -e binary_version=VERSION: wall, rc, recap, veth bytes and the PUT lines of the log."""
    before = veth_counts(device)
    start = time.monotonic()
    proc = subprocess.run(
        ["ansible-playbook", "-vvv", "-i", str(inv), "playbooks/site.yml", "-e", f"binary_version={version}"],
        env=ansible_env(work / "home", ANSIBLE_CONFIG=str(REPO / "ansible.cfg")),
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
        cwd=REPO,
    )
    wall = time.monotonic() - start
    after = veth_counts(device)
    moved, packets = after[0] - before[0], after[1] - before[1]
    out = proc.stdout + proc.stderr
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
        (logs / f"site-{version}.log").write_text(out)
    # Files uploaded by this run: the controller-side source still exists for the release's programs and bundles;
    # ansible's own temp files are gone (size unknown, -1).
    puts = []
    for src, dest in PUT_RE.findall(out):
        try:
            size = Path(src).stat().st_size
        except OSError:
            size = -1
        puts.append((src, dest, size))
    recap = {m.group(1): [int(g) for g in m.groups()[1:]] for m in RECAP.finditer(out)}
    stop_sessions(work / "cp")  # the next run starts afresh, as a later ansible-playbook would
    return {
        "wall": wall,
        "rc": proc.returncode,
        "bytes": moved,
        "packets": packets,
        "puts": puts,
        "recap": recap,
        "out": out,
    }


def _short(dest: str) -> str:
    """A PUT's destination without what differs between runs anyway: the temp name (.NAME.fmtmp), random temp dir
    names, and the release version in a path (the new release's programs are the old ones' successors)."""
    dest = re.sub(r"/\.([^/]+?)\.fmtmp[0-9a-f]*(\.gz)?$", r"/\1\2", dest)  # .NAME.fmtmpXXXX[.gz] -> NAME[.gz]
    dest = re.sub(r"(/\.fleetmesh-[a-z]+\.)\w+", r"\1*", dest)
    return dest.replace(f"/{OLD_VERSION}/", "/<version>/").replace(f"/{NEW_VERSION}/", "/<version>/")


def report_run(label: str, run: dict[str, Any], name: str) -> list[str]:
    ok, changed, unreachable, failed = run["recap"].get(name, [0, 0, 1, 1])
    lines = [
        f"{label}: rc {run['rc']}, wall {run['wall']:.1f} s, ok {ok} changed {changed} unreachable {unreachable} "
        f"failed {failed}; {run['bytes']} bytes in {run['packets']} packets on the device's veth "
        f"({run['bytes'] / 1e6:.2f} MB)",
        f"  files sent (PUT lines of the -vvv log): {len(run['puts'])}",
    ]
    lines += [f"    {size:>10} B  {src} -> {_short(dest)}" for src, dest, size in run["puts"]]
    if run["rc"] != 0:
        lines.append("  output tail:\n" + run["out"][-3000:])
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="sysvinit", choices=sorted(NAMES))
    parser.add_argument("--out", type=Path, help="also write the report here")
    parser.add_argument("--logs", type=Path, help="keep the runs' -vvv logs in this directory")
    parser.add_argument(
        "--segment",
        action="store_true",
        help="count per MTU-sized segment: no GSO on the host-side veth (gso_max_segs 1), so the counters see "
        "every TCP/IP header a real link carries instead of one per 64 KiB aggregate",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_upgrade: needs root (the lab)", file=sys.stderr)
        return 2
    name, arch = NAMES[args.profile], ARCH_OF[args.profile]
    tarballs = {b.version: b.path for b in tailscale_release.build(versions=[OLD_VERSION, NEW_VERSION], arches=[arch])}
    new_size = tarballs[NEW_VERSION].stat().st_size
    report = Report(args.out)
    report += [
        f"{args.profile} device {name} ({arch}); upgrade {OLD_VERSION} -> {NEW_VERSION}; release tarballs: "
        + ", ".join(f"{v} {p.stat().st_size} B" for v, p in sorted(tarballs.items()))
    ]
    with control.borrowed():  # started for this run if it was not up, and stopped after it
        control.forget({name})
        with tempfile.TemporaryDirectory(prefix="bench-upgrade-") as tmp:
            work = Path(tmp)
            (work / "home").mkdir()
            inv = work / "inventory.yml"
            lab.down(name)
            try:
                device = lab.up(name, args.profile)
                if args.segment:  # this run's own veth, removed with the device
                    subprocess.run(["ip", "link", "set", "dev", device.veth_host, "gso_max_segs", "1"], check=True)
                    report += [f"  {device.veth_host}: gso_max_segs 1 (every segment counted with its headers)"]
                with release_mirror(work / "mirror") as mirror:
                    data: dict[str, Any] = inventory.build([device])
                    data["all"]["vars"].update(
                        binary_base_url=mirror,
                        binary_cache_dir=str(work / "cache"),
                        fleetmesh_telnet_control_path_dir=str(work / "cp"),
                        fleetmesh_adb_control_path_dir=str(work / "cp"),
                        fleetmesh_adb_server_port=ADB_PORT,
                    )
                    if args.profile == "quecopen":  # its fixed hostname would name the node: name it after the device
                        data["all"]["children"]["quecopen"]["hosts"][name]["login_hostname"] = name
                    inv.write_text(yaml.safe_dump(data))
                    first = site(device, inv, work, OLD_VERSION, args.logs)
                    report += report_run(f"first provisioning at {OLD_VERSION}", first, name)
                    if first["rc"] != 0:
                        return 1
                    running = lab.exec_(name, ["tailscale", "version"], timeout=60).stdout.split("\n", 1)[0]
                    report += [f"  device runs tailscale {running}"]
                    upgrade = site(device, inv, work, NEW_VERSION, args.logs)
                    report += report_run(f"upgrade to {NEW_VERSION}", upgrade, name)
                    running = lab.exec_(name, ["tailscale", "version"], timeout=60).stdout.split("\n", 1)[0]
                    report += [f"  device runs tailscale {running}"]
                again = {_short(dest) for _src, dest, _size in upgrade["puts"]}
                kept = sorted({_short(dest) for _src, dest, _size in first["puts"]} - again)
                report += [f"  sent by the first provisioning, not sent again by the upgrade: {len(kept)}"]
                report += [f"    {dest}" for dest in kept]
                both = sorted(again & {_short(dest) for _src, dest, _size in first["puts"]})
                report += [f"  sent by both runs: {len(both)}"] + [f"    {dest}" for dest in both]
                sent = sum(size for _src, _dest, size in upgrade["puts"] if size > 0)
                ratio = upgrade["bytes"] / new_size
                report += [
                    f"upgrade: {upgrade['bytes']} bytes on the wire; new tarball tailscale_{NEW_VERSION}_{arch}.tgz "
                    f"{new_size} bytes; ratio {ratio:.3f} (target <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'})",
                    f"  of which files sent: {sent} bytes ({sent / new_size:.3f} x the tarball)",
                ]
            finally:
                stop_sessions(work / "cp")
                subprocess.run(["adb", "-P", str(ADB_PORT), "kill-server"], capture_output=True, check=False)
                lab.down(name)
                inv.unlink(missing_ok=True)  # it holds the lab's pre-auth key
                control.forget({name})
        return 0


if __name__ == "__main__":
    sys.exit(main())
