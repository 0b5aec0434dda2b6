"""Shared by the provisioning-core lab tests: a loopback release mirror and site.yml runs that count commands.

The release action runs on the controller, so the mirror only needs to be reachable from the controller: it
listens on 127.0.0.1 (a free port), serves the lab's real Tailscale builds (fleetlab.tailscale_release: the two
pinned versions, amd64 and arm) and counts requests. site.yml logs nodes in to the lab's headscale (the
`lab_control` fixture of tests/conftest.py starts it). Device commands and uploads are counted from the connection
plugin's -vvv log (`EXEC` and `PUT` lines).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fleetlab import control, inventory, lab, tailscale_release
from fleetlab.inventory import host_vars
from repo_checkout import REPO, ansible_env

OLD = tailscale_release.OLD_VERSION
NEW = tailscale_release.NEW_VERSION
VERSIONS = (OLD, NEW)
ARCHES = list(tailscale_release.ARCHES)
BUNDLES = {"arm": "/var/cache/fleetlab/bundles/armhf", "amd64": "/var/cache/fleetlab/bundles/amd64"}
RECAP_RE = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def release_mirror(root: Path) -> Iterator[str]:
    """The real releases (stable; unstable: the newer one with a corrupted .sha256) on http://127.0.0.1:PORT."""
    built = tailscale_release.build(versions=list(VERSIONS), arches=ARCHES)  # cached: built once per machine
    (root / "stable").mkdir(parents=True, exist_ok=True)
    (root / "unstable").mkdir(parents=True, exist_ok=True)
    for item in built:
        for track in ("stable", "unstable"):
            link = root / track / item.path.name
            if not link.is_symlink():
                link.symlink_to(item.path)  # the cached tarball itself: nothing copied
        sha = f"{item.sha256}\n" if item.version != NEW else "0" * 64 + "\n"
        (root / "stable" / f"{item.path.name}.sha256").write_text(f"{item.sha256}\n")
        (root / "unstable" / f"{item.path.name}.sha256").write_text(sha)
    index = json.dumps(tailscale_release.index_json(list(VERSIONS), ARCHES))
    for track in ("stable", "unstable"):
        (root / track / "index.json").write_text(index)
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


def wait_for(check: Any, timeout: float = 60) -> bool:
    """Poll check() until it is true (a ValueError/KeyError, e.g. half-written JSON, counts as not yet)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(ValueError, KeyError):
            if check():
                return True
        time.sleep(0.5)
    return bool(check())


# Set above for loopback runs; the inventory's own values (the mirror on the bridge) do not apply here.
LOCAL_VARS = ("binary_base_url", "iptables_shim_bundles")


def site_host_vars(device: Any, tmp: Path, mirror: str, extra_vars: dict[str, Any] | None = None) -> dict[str, Any]:
    """One lab device's inventory vars for a loopback run (the mirror, the lab's login settings, extra_vars)."""
    hv = host_vars(device)
    hv.update(
        binary_base_url=mirror,
        binary_cache_dir=str(tmp / "cache"),
        iptables_shim_bundles=BUNDLES,
        fleetmesh_telnet_control_path_dir=str(tmp / "cp"),
    )
    # The lab's login server, key and nothing-leaves-the-lab tailscaled settings, as `fleetlab inventory` gives them.
    lab_inventory = inventory.build([device])
    group = lab_inventory["all"]["children"][device.profile]
    hv.update({k: v for k, v in lab_inventory["all"]["vars"].items() if k not in LOCAL_VARS})
    hv.update(group.get("vars", {}))
    hv.update(group["hosts"][device.name])
    if device.profile in ("sysvinit", "quecopen"):
        # These lab boxes have no iptables (kobo gets the shim): site.yml starts tailscaled (boot role), which in
        # kernel mode needs it. Tests that want kernel mode there set networking_mode (and the shim) themselves.
        hv["networking_mode"] = "userspace"
    hv.update(extra_vars or {})
    return hv


def _ansible_playbook(tmp: Path, inv: Path, args: list[str], *, timeout: int) -> tuple[int, str]:
    """ansible-playbook -i INV ARGS with this checkout's ansible.cfg and a home under tmp; (rc, stdout + stderr)."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    proc = subprocess.run(
        ["ansible-playbook", "-i", str(inv), *args],
        env=ansible_env(home, ANSIBLE_CONFIG=str(REPO / "ansible.cfg")),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )
    return proc.returncode, proc.stdout + proc.stderr


def run_playbook(
    groups: dict[str, list[Any]],
    tmp: Path,
    mirror: str,
    extra_vars: dict[str, Any] | None = None,
    *,
    playbook: str = "site.yml",
    cli_vars: dict[str, Any] | None = None,
) -> tuple[int, str, dict[str, dict[str, int]]]:
    """ansible-playbook PLAYBOOK on lab devices in inventory groups (extra_vars per host, cli_vars as -e);
    (rc, output, {host: recap counts})."""
    control.up()
    inv = tmp / "inventory.yml"
    # Each device in its profile's group (the device role reads the profile from it) and in the named groups.
    tree: dict[str, Any] = {}
    for ds in groups.values():
        for d in ds:
            tree.setdefault(d.profile, {"hosts": {}})["hosts"][d.name] = site_host_vars(d, tmp, mirror, extra_vars)
    tree.update({g: {"hosts": {d.name: None for d in ds}} for g, ds in groups.items()})
    inv.write_text(yaml.safe_dump(tree))
    args = [str(REPO / "playbooks" / playbook), *(["-e", json.dumps(cli_vars)] if cli_vars else [])]
    rc, out = _ansible_playbook(tmp, inv, args, timeout=900)
    recaps = {
        m.group(1): {"ok": int(m.group(2)), "changed": int(m.group(3)), "failed": int(m.group(5))}
        for m in RECAP_RE.finditer(out)
    }
    return rc, out, recaps


def run_site(
    device: Any, tmp: Path, mirror: str, extra_vars: dict[str, Any] | None = None, *, check: bool = False
) -> Run:
    """ansible-playbook site.yml on one lab device at -vvv; counts EXEC/PUT lines of that host."""
    control.up()  # idempotent; the session's lab_control_plane fixture stops it at the end
    hv = site_host_vars(device, tmp, mirror, extra_vars)
    inv = tmp / "inventory.yml"
    inv.write_text(yaml.safe_dump({device.profile: {"hosts": {device.name: hv}}}))
    args = ["-vvv", str(REPO / "playbooks/site.yml"), *(["--check"] if check else [])]
    rc, out = _ansible_playbook(tmp, inv, args, timeout=600)
    recap = {m.group(1): m for m in RECAP_RE.finditer(out)}.get(device.name)
    return Run(
        rc=rc,
        output=out,
        changed=int(recap.group(3)) if recap else -1,
        failed=int(recap.group(5)) if recap else -1,
        execs=len(re.findall(r"^<[^>]+> EXEC ", out, re.MULTILINE)),
        puts=len(re.findall(r"^<[^>]+> PUT ", out, re.MULTILINE)),
    )


def broken_release(mirror_root: Path, version: str, arch: str, tailscaled: bytes | None = None) -> Path:
    """tailscale_<version>_<arch>.tgz made from the newer release: tailscale intact, tailscaled cut after 64 KiB
    (it fails `--version` on the device) or replaced by ``tailscaled``, with its published .sha256 (the
    controller's checks all pass)."""
    src = mirror_root / "stable" / f"tailscale_{NEW}_{arch}.tgz"
    dest = mirror_root / "stable" / f"tailscale_{version}_{arch}.tgz"
    with tarfile.open(src) as tar_in, tarfile.open(dest, "w:gz") as tar_out:
        for member in tar_in.getmembers():
            data = tar_in.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            member.name = member.name.replace(f"tailscale_{NEW}_{arch}", f"tailscale_{version}_{arch}", 1)
            if data is not None and member.name.endswith("/tailscaled"):
                data = data[:65536] if tailscaled is None else tailscaled
                member.size = len(data)
            tar_out.addfile(member, io.BytesIO(data) if data is not None else None)
    dest.with_name(dest.name + ".sha256").write_text(hashlib.sha256(dest.read_bytes()).hexdigest() + "\n")
    return dest


def tailscaled_wrapper(version: str, body: str) -> bytes:
    """A tailscaled that answers `--version` as ``version`` (so it passes the check before the switch) and runs
    ``body`` for anything else."""
    return f'#!/bin/sh\ncase "$1" in --version) echo {version}; exit 0;; esac\n{body}\n'.encode()
