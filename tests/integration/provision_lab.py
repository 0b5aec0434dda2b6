"""Shared by the provisioning-core lab tests: a loopback release mirror and site.yml runs that count commands.

The release action runs on the controller, so the mirror only needs to be reachable from the controller: it
listens on 127.0.0.1 (a free port), serves stand-in releases built into a temp dir, and counts requests. Device
commands and uploads are counted from the connection plugin's -vvv log (`EXEC` and `PUT` lines).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fleetlab import lab
from fleetlab.inventory import host_vars, lab_auth_key
from fleetlab.standin.release import build
from repo_checkout import REPO, ansible_env

VERSIONS = ("1.80.3", "1.82.0")
ARCHES = ["arm", "amd64"]
BUNDLES = {"arm": "/var/cache/fleetlab/bundles/armhf", "amd64": "/var/cache/fleetlab/bundles/amd64"}
RECAP_RE = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def release_mirror(root: Path) -> Iterator[str]:
    """Stand-in releases (stable; unstable with a corrupted .sha256 for 1.82.0) on http://127.0.0.1:PORT."""
    for track in ("stable", "unstable"):
        build(root, list(VERSIONS), ARCHES, track)
    for arch in ARCHES:
        (root / "unstable" / f"tailscale_1.82.0_{arch}.tgz.sha256").write_text("0" * 64 + "\n")
    port = _free_port()
    proc = subprocess.Popen(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "fleetlab.mirror", "--dir", str(root), "--listen", f"127.0.0.1:{port}", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _attempt in range(100):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{url}/_fleetlab/stats", timeout=1).close()  # noqa: S310 - loopback
                break
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def mirror_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/_fleetlab/stats", timeout=5) as resp:  # noqa: S310 - loopback
        return dict(json.loads(resp.read()))


def stop_sessions(control_dir: Path) -> None:
    """Stop the telnet plugin's background sessions started under control_dir (by the pid they recorded)."""
    for pidfile in control_dir.glob("*.pid"):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGTERM)


@contextlib.contextmanager
def fresh_device(name: str, profile: str, control_dir: Path) -> Iterator[Any]:
    """A new lab device for one test; its telnet/adb sessions in control_dir and the device go at the end."""
    lab.down(name)
    try:
        yield lab.up(name, profile)
    finally:
        stop_sessions(control_dir)
        lab.down(name)


@dataclass
class Run:
    rc: int
    output: str
    changed: int
    failed: int
    execs: int
    puts: int


def run_site(
    device: Any, tmp: Path, mirror: str, extra_vars: dict[str, Any] | None = None, *, check: bool = False
) -> Run:
    """ansible-playbook site.yml on one lab device at -vvv; counts EXEC/PUT lines of that host."""
    hv = host_vars(device)
    hv.update(
        binary_base_url=mirror,
        binary_cache_dir=str(tmp / "cache"),
        iptables_shim_bundles=BUNDLES,
        fleetmesh_telnet_control_path_dir=str(tmp / "cp"),
        # site.yml logs the node in (login role): the lab's stand-in key, as `fleetlab inventory` gives it.
        login_auth_key=lab_auth_key(),
    )
    if device.profile in ("sysvinit", "quecopen"):
        # These lab boxes have no iptables (kobo gets the shim): site.yml starts tailscaled (boot role), which in
        # kernel mode needs it. Tests that want kernel mode there set networking_mode (and the shim) themselves.
        hv["networking_mode"] = "userspace"
    hv.update(extra_vars or {})
    inv = tmp / "inventory.yml"
    inv.write_text(yaml.safe_dump({device.profile: {"hosts": {device.name: hv}}}))
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    proc = subprocess.run(
        ["ansible-playbook", "-vvv", "-i", str(inv), str(REPO / "playbooks/site.yml"), *(["--check"] if check else [])],
        env=ansible_env(home, ANSIBLE_CONFIG=str(REPO / "ansible.cfg")),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=REPO,
    )
    out = proc.stdout + proc.stderr
    recap = {m.group(1): m for m in RECAP_RE.finditer(out)}.get(device.name)
    return Run(
        rc=proc.returncode,
        output=out,
        changed=int(recap.group(3)) if recap else -1,
        failed=int(recap.group(5)) if recap else -1,
        execs=len(re.findall(r"^<[^>]+> EXEC ", out, re.MULTILINE)),
        puts=len(re.findall(r"^<[^>]+> PUT ", out, re.MULTILINE)),
    )
