"""Set-up shared by the fault suite: one lab device, one provisioned "old version" snapshot, one fault per test.

The rig is a sysvinit box (amd64, native: the fastest real device the lab has) named `ft-sv`. At the start of the
session it is provisioned with the lab's older real release (OLD) by site.yml and powered off long enough to copy
its writable root (fleetlab.faults.snapshot). Every fault then starts from that copy (fleetlab.faults.restore: the
same node, key and files, booted again) and runs site.yml towards TARGET, which has a write in every step:

- binary: OLD -> NEW (the real release tarballs of the lab: two ~30 MB and ~20 MB binaries);
- iptables_shim: enabled (not installed in the old state);
- state_dir: /var/lib/tailscale -> /data/tailscale (the old state is copied over, compared, renamed into place);
- boot: new flags (--statedir, --config) in the boot files, so the init files are rewritten;
- login: login_mode config (tailscaled's declarative config file is written).

`play()` is provision_lab.run_site with two additions: a hook (the callback tests/faults/callback_plugins/
fault_hook.py pauses the play at a named task until the test's fault is in place) and the run's output kept in a
file. Outcomes are appended to `<work>/outcomes.jsonl`; test_reliability_doc.py checks docs/reliability.md against
the cases.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from provision_lab import BUNDLES, LOCAL_VARS, NEW, OLD, RECAP_RE, stop_sessions

from fleetlab import control, faults, inventory, lab
from fleetlab.inventory import host_vars
from repo_checkout import REPO, ansible_env

NAME = "ft-sv"
PROFILE = "sysvinit"
HERE = Path(__file__).resolve().parent
OLD_STATE = "/var/lib/tailscale/tailscaled.state"
NEW_STATE_DIR = "/data/tailscale"
NEW_STATE = f"{NEW_STATE_DIR}/tailscaled.state"
CONFIG_FILE = "/var/lib/tailscale/tailscaled.conf"
SOCKET = "/var/run/tailscale/tailscaled.sock"

BASE_VARS: dict[str, Any] = {"binary_version": OLD, "iptables_shim_enabled": False}
TARGET_VARS: dict[str, Any] = {
    "binary_version": NEW,
    "iptables_shim_enabled": True,
    "state_dir_path": NEW_STATE_DIR,
    "login_mode": "config",
}
# Names the collection gives its temp files on a device (install_files/_transfer, ip_forwarding,
# tailscale_prefs key dir and config file, the session's stderr file).
TEMP_RE = re.compile(r"\.fmtmp|\.fleetmesh-tmp$|^\.fleetmesh-ts\.|^\.fleetmesh-err-")


@dataclass
class Run:
    rc: int
    output: str
    changed: int
    failed: int
    unreachable: int
    seconds: float
    hook_reached: str = ""

    def error(self) -> str:
        """The failing task and its message (the lines after `fatal:` / `UNREACHABLE!`), for the outcome table."""
        lines = self.output.splitlines()
        picked: list[str] = []
        task = ""
        for i, line in enumerate(lines):
            if line.startswith("TASK ["):
                task = line.split("[", 1)[1].rsplit("]", 1)[0]
            if line.startswith("fatal:") or "UNREACHABLE!" in line:
                msg = next((m.strip() for m in lines[i : i + 60] if m.strip().startswith(("msg:", '"msg"'))), "")
                picked.append(f"{task}: {msg or line.strip()}")
        return " | ".join(picked)[-800:]


@dataclass
class Rig:
    device: Any
    work: Path
    mirror: str
    baseline: Path
    outcomes: Path
    runs: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    control_instance: str = ""

    @property
    def name(self) -> str:
        return NAME

    def refresh(self) -> Any:
        self.device = lab.get(NAME)
        return self.device

    # -- running site.yml

    def play(
        self,
        extra: dict[str, Any] | None = None,
        *,
        at: str | None = None,
        nth: int = 1,
        action: Callable[[], None] | None = None,
        background: Callable[[], None] | None = None,
        timeout: float = 400,
        inventory_overrides: dict[str, Any] | None = None,
    ) -> Run:
        """site.yml on the rig at -vvv. With `at`, the play stops when a task matching it starts, `action()` runs,
        and the play goes on. `background()` runs in a thread while the play does (a watcher that strikes)."""
        self.runs += 1
        tag = f"run{self.runs:03d}"
        run_dir = self.work / tag
        run_dir.mkdir()
        device = self.refresh()
        control.up()
        hv = host_vars(device)
        hv.update(
            binary_base_url=self.mirror,
            binary_cache_dir=str(self.work / "cache"),
            iptables_shim_bundles=BUNDLES,
            fleetmesh_telnet_control_path_dir=str(self.work / "cp"),
        )
        lab_inventory = inventory.build([device])
        group = lab_inventory["all"]["children"][device.profile]
        hv.update({k: v for k, v in lab_inventory["all"]["vars"].items() if k not in LOCAL_VARS})
        hv.update(group.get("vars", {}))
        hv.update(group["hosts"][device.name])
        hv["networking_mode"] = "userspace"  # as provision_lab.run_site: these boxes have no iptables of their own
        hv.update(extra or {})
        hv.update(inventory_overrides or {})
        inv = run_dir / "inventory.yml"
        inv.write_text(yaml.safe_dump({device.profile: {"hosts": {device.name: hv}}}))
        home = self.work / "home"
        home.mkdir(exist_ok=True)
        env = ansible_env(
            home,
            ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
            ANSIBLE_CALLBACK_PLUGINS=str(HERE / "callback_plugins"),
            ANSIBLE_CALLBACKS_ENABLED="fault_hook",
            FLEETMESH_FAULT_AT=at or "",
            FLEETMESH_FAULT_DIR=str(run_dir),
            FLEETMESH_FAULT_NTH=str(nth),
        )
        log = run_dir / "output.txt"
        start = time.monotonic()
        with open(log, "w") as out:
            proc = subprocess.Popen(
                ["ansible-playbook", "-vvv", "-i", str(inv), str(REPO / "playbooks/site.yml")],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
            threads = []
            if at is not None:
                threads.append(threading.Thread(target=_hook, args=(run_dir, proc, action), daemon=True))
            if background is not None:
                threads.append(threading.Thread(target=background, daemon=True))
            for thread in threads:
                thread.start()
            try:
                proc.wait(timeout=timeout)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                (run_dir / "go").touch()
                for thread in threads:
                    thread.join(timeout=60)
        output = log.read_text(errors="replace")
        recap = {m.group(1): m for m in RECAP_RE.finditer(output)}.get(NAME)
        reached = (run_dir / "reached").read_text().strip() if (run_dir / "reached").exists() else ""
        return Run(
            rc=proc.returncode,
            output=output,
            changed=int(recap.group(3)) if recap else -1,
            unreachable=int(recap.group(4)) if recap else -1,
            failed=int(recap.group(5)) if recap else -1,
            seconds=time.monotonic() - start,
            hook_reached=reached,
        )

    def end_sessions(self) -> None:
        """Stop the telnet plugin's background session (the next run logs in afresh, as a new ansible run would)."""
        stop_sessions(self.work / "cp")
        time.sleep(0.2)

    # -- the device, seen from the host (its root is a host mount)

    def path(self, device_path: str) -> Path:
        return Path(self.refresh().root) / device_path.lstrip("/")

    def state(self) -> tuple[str, bytes]:
        """(where, bytes) of the node state: the relocated file when it is there, else the old one."""
        for where in (NEW_STATE, OLD_STATE):
            if self.path(where).is_file():
                return where, self.path(where).read_bytes()
        return "", b""

    def temp_files(self) -> list[str]:
        root = self.path("/")
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            rel = "/" + os.path.relpath(dirpath, root)
            if rel in ("/proc", "/sys", "/dev"):
                dirnames[:] = []
                continue
            found += [f"{rel.rstrip('/')}/{n}" for n in filenames + dirnames if TEMP_RE.search(n)]
        return sorted(found)

    def exec(self, script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return lab.exec_(NAME, ["/bin/sh", "-c", script], timeout=timeout)

    def node(self) -> dict[str, Any]:
        """What the device's own CLI says: daemon version, BackendState, node key (empty when it cannot answer)."""
        proc = self.exec(f"tailscale --socket={SOCKET} status --json 2>/dev/null")
        try:
            status = json.loads(proc.stdout)
        except ValueError:
            return {"backend": "", "version": "", "node_key": ""}
        return {
            "backend": status.get("BackendState", ""),
            "version": str(status.get("Version", "")).split("-", maxsplit=1)[0],
            "node_key": (status.get("Self") or {}).get("PublicKey", ""),
        }

    def wait_running(self, timeout: float = 45) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        node = self.node()
        while node["backend"] != "Running" and time.monotonic() < deadline:
            time.sleep(0.5)
            node = self.node()
        return node

    def installed_version(self) -> str:
        """The version the `current` link points at."""
        with contextlib.suppress(OSError):
            return os.readlink(self.path("/opt/tailscale/current")).rstrip("/").rsplit("/", 1)[-1]
        return ""

    def provision_baseline(self) -> None:
        """From a factory-fresh device: site.yml with the old version, then the snapshot every case starts from."""
        run = self.play(BASE_VARS)
        assert run.rc == 0, run.output[-3000:]
        node = self.wait_running()
        assert node["backend"] == "Running" and node["version"] == OLD, node
        self.end_sessions()
        faults.snapshot(NAME, self.baseline)
        self.control_instance = inventory._control_instance()  # noqa: SLF001 - which tailnet the node is in

    def reset(self) -> None:
        """Back to the provisioned old version: the saved root layer, booted; its daemon up and Running.

        The lab's control plane is shared: when it was replaced since the snapshot (another session stopped and
        started it: a new, empty tailnet), the snapshot's node is unknown there, so the baseline is made again.
        """
        self.end_sessions()
        with contextlib.suppress(Exception):
            faults.uncut_pulls(NAME)
        lab.unshape(NAME)
        control.up()
        if inventory._control_instance() != self.control_instance:  # noqa: SLF001
            faults.firmware(NAME)
            self.provision_baseline()
        faults.restore(NAME, self.baseline)
        self.refresh()
        node = self.wait_running()
        assert node["backend"] == "Running" and node["version"] == OLD, node

    def record(self, case: str, outcome: dict[str, Any]) -> None:
        with open(self.outcomes, "a") as out:
            out.write(json.dumps({"case": case, **outcome}, sort_keys=True) + "\n")


def _hook(run_dir: Path, proc: subprocess.Popen[Any], action: Callable[[], None] | None) -> None:
    reached = run_dir / "reached"
    while not reached.exists() and proc.poll() is None:
        time.sleep(0.05)
    try:
        if reached.exists() and action is not None:
            action()
    finally:
        (run_dir / "go").touch()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
