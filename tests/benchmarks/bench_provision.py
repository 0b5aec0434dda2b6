"""Provisioning benchmark: commands sent to the device and wall time of the provisioning core (device, binary,
iptables shim, state dir: the first roles of site.yml) on one lab kobo, first run side by side with a no-op re-run
(target: a no-op re-run sends <= 6 commands).

Run as root:  /work/main/.venv/bin/python tests/benchmarks/bench_provision.py
The payload is the real Tailscale 1.98.10 arm release (fleetlab.tailscale_release: a 32.6 MB tarball whose
tailscale and tailscaled, 64 MB together, are uploaded to the device) from the loopback release mirror, plus the
lab's armhf iptables bundle. Only those four roles run: nothing starts tailscaled or logs in (bench_boot.py times
the whole site.yml). Commands and uploads are counted from the telnet plugin's -vvv log (EXEC and PUT lines). The
device and the mirror are made for the run and removed afterwards.
"""

from __future__ import annotations

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
from provision_lab import BUNDLES, RECAP_RE, release_mirror, stop_sessions  # noqa: E402

from fleetlab import lab  # noqa: E402
from fleetlab.inventory import host_vars  # noqa: E402
from repo_checkout import REPO, ansible_env  # noqa: E402

NAME = "bp-kobo"
CORE_ROLES = ("device", "binary", "iptables_shim", "state_dir")


def run_core(device: Any, work: Path, mirror: str) -> tuple[int, int, int, int, str]:
    """The four roles on the device at -vvv: (rc, commands, uploads, changed, output)."""
    hv = host_vars(device)
    hv.update(
        binary_base_url=mirror,
        binary_cache_dir=str(work / "cache"),
        iptables_shim_bundles=BUNDLES,
        fleetmesh_telnet_control_path_dir=str(work / "cp"),
    )
    (work / "inventory.yml").write_text(yaml.safe_dump({device.profile: {"hosts": {device.name: hv}}}))
    play = [
        {
            "name": "Provisioning core",
            "hosts": "all",
            "gather_facts": False,
            "roles": [{"role": f"fleetmesh.tailscale.{role}"} for role in CORE_ROLES],
        }
    ]
    (work / "core.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    (work / "home").mkdir(exist_ok=True)
    proc = subprocess.run(
        ["ansible-playbook", "-vvv", "-i", str(work / "inventory.yml"), str(work / "core.yml")],
        env=ansible_env(work / "home", ANSIBLE_CONFIG=str(REPO / "ansible.cfg")),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=REPO,
    )
    out = proc.stdout + proc.stderr
    recap = {m.group(1): m for m in RECAP_RE.finditer(out)}.get(device.name)
    execs = len(re.findall(r"^<[^>]+> EXEC ", out, re.MULTILINE))
    puts = len(re.findall(r"^<[^>]+> PUT ", out, re.MULTILINE))
    return proc.returncode, execs, puts, int(recap.group(3)) if recap else -1, out


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
                    rc, execs, puts, changed, out = run_core(device, work, mirror)
                    wall = time.monotonic() - start
                    if rc != 0:
                        print(out[-3000:], file=sys.stderr)
                        return 1
                    print(f"{label:<10} {execs:>8} {puts:>8} {changed:>8} {wall:>8.1f}")
        finally:
            stop_sessions(work / "cp")
            lab.down(NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
