"""Devices as they are in the field (issue 15), with the real tailscaled 1.98.10 and headscale: a Kobo whose
/mnt/onboard is FAT (the lab's default: a FAT32 image under fusefat), storage that is mounted late, no /var/run, a
tailscaled that dies with nothing but our watchdog to restart it.

What the real tailscaled does with its state on FAT (seen in the lab, fusefat; the kernel's vfat refuses the same
chmod with EPERM): `store.New failed: chmod .../tailscaled.state.tmpNNN: function not implemented; starting with
in-memory store with a health warning`: it runs, but as a new node at every start. So the kobo profile keeps the
state on the root filesystem and a copy on FAT (state_backup), and the state_dir role refuses a state dir on FAT.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
]

lab = pytest.importorskip("fleetlab.lab", reason="the fleetlab package (tests/lab) is not installed")

from provision_lab import run_site, stop_sessions, wait_for  # noqa: E402

from fleetlab import control  # noqa: E402

KOBO = "fd-kobo"
STORE = "/mnt/onboard/.tailscale"
ROOT_DIR = "/usr/local/fleetmesh-tailscale"
STATE = f"{ROOT_DIR}/state/tailscaled.state"
BACKUP = f"{STORE}/state-backup/tailscaled.state"
CTL = f"{ROOT_DIR}/tailscaled.ctl"
LOG = f"{ROOT_DIR}/state/logs/boot.log"
FAST = {"boot_watchdog_fast_seconds": 90, "boot_watchdog_max_fast_deaths": 3}


def sh(name: str, script: str) -> str:
    proc = lab.exec_(name, ["sh", "-c", script], timeout=120)
    return proc.stdout + proc.stderr


def daemons(name: str) -> list[str]:
    """pids of live tailscaled daemons on the device: comm tailscaled, not a zombie, our --socket flag (so not the
    `tailscaled --cleanup` that tailscaled.run runs first). Shell builtins where it can: qemu forks are slow."""
    script = (
        'for d in /proc/[0-9]*; do c=; { read -r c < $d/comm; } 2>/dev/null; [ "$c" = tailscaled ] || continue; '
        's=; while read -r k v _; do [ "$k" = State: ] && s=$v && break; done < $d/status; [ "$s" = Z ] && continue; '
        'tr "\\0" " " < $d/cmdline | grep -q -- " --socket=" && echo ${d#/proc/}; done'
    )
    return sh(name, script).split()


def node_key(name: str) -> str:
    return str(json.loads(sh(name, "tailscale status --json"))["Self"]["PublicKey"])


@pytest.fixture
def kobo(work: Path) -> Iterator[Any]:
    lab.down(KOBO)
    try:
        yield lab.up(KOBO, "kobo", no_var_run=True)
    finally:
        with contextlib.suppress(Exception):
            control.forget([KOBO])
        stop_sessions(work / "cp")
        lab.down(KOBO)


def test_fat_onboard_no_var_run_converges_and_watchdog(kobo: Any, work: Path, mirror: str) -> None:
    mounts = sh(KOBO, "grep ' /mnt/onboard ' /proc/mounts; ls -d /var/run 2>&1")
    assert "fuse.fusefat" in mounts and "No such file" in mounts, mounts
    first = run_site(kobo, work, mirror, FAST)
    assert first.rc == 0, first.output[-4000:]
    # Nothing on FAT needed a symlink or a mode: the links are on the root filesystem.
    assert sh(KOBO, f"readlink {ROOT_DIR}/current; readlink /usr/bin/tailscaled").split() == [
        f"{STORE}/1.98.10",
        f"{ROOT_DIR}/current/tailscaled",
    ]
    assert sh(KOBO, f"find {STORE} -type l | wc -l").strip() == "0"
    assert wait_for(lambda: json.loads(sh(KOBO, "tailscale status --json"))["BackendState"] == "Running")
    assert len(daemons(KOBO)) == 1
    # The state lives on the root filesystem (modes kept); the watchdog keeps its copy on FAT.
    assert sh(KOBO, f"stat -c %a {STATE}").strip() == "600"
    assert wait_for(lambda: sh(KOBO, f"cmp {STATE} {BACKUP} && echo same").strip() == "same", 60)
    # A stale pid file (a pid that is not tailscaled) fools nobody: the daemon is found by its command line.
    sh(KOBO, "echo 1 > /var/run/tailscaled.pid")
    assert "is running" in sh(KOBO, f"{CTL} status")
    again = run_site(kobo, work, mirror, FAST)
    assert again.rc == 0 and again.changed == 0, again.output[-4000:]
    assert len(daemons(KOBO)) == 1
    key = node_key(KOBO)

    # A tailscaled that dies is restarted by the watchdog, as the same node.
    old = daemons(KOBO)[0]
    sh(KOBO, f"kill -9 {old}")
    assert wait_for(lambda: daemons(KOBO) and daemons(KOBO)[0] != old, 30), sh(KOBO, f"tail -5 {LOG}")
    assert "tailscaled died" in sh(KOBO, f"cat {LOG}")
    assert wait_for(lambda: node_key(KOBO) == key)
    # A stop through tailscaled.ctl is not fought.
    sh(KOBO, f"{CTL} stop")
    time.sleep(5)
    assert daemons(KOBO) == [], sh(KOBO, f"tail -5 {LOG}")
    assert "not restarted" in sh(KOBO, f"cat {LOG}")
    # Repeated fast deaths: the watchdog gives up and says why.
    sh(KOBO, f"{CTL} start")
    killed: set[str] = set()
    for _round in range(3):
        assert wait_for(lambda: bool(set(daemons(KOBO)) - killed), 30), sh(KOBO, f"tail -5 {LOG}")
        pid = sorted(set(daemons(KOBO)) - killed)[0]
        sh(KOBO, f"kill -9 {pid}")
        killed.add(pid)
    gave_up = "gave up: tailscaled died 3 times within 90s"
    assert wait_for(lambda: gave_up in sh(KOBO, f"cat {LOG}"), 30), sh(KOBO, f"grep ctl {LOG}")
    time.sleep(3)
    assert daemons(KOBO) == []
    # The next run starts it again and converges.
    third = run_site(kobo, work, mirror, FAST)
    assert third.rc == 0, third.output[-4000:]
    assert len(daemons(KOBO)) == 1 and node_key(KOBO) == key


@pytest.fixture
def late_kobo(work: Path) -> Iterator[Any]:
    """A kobo whose FAT onboard is mounted 25 s after boot, with a password login, a MOTD and a coloured prompt,
    and no base64 applet (the telnet door must cope with all three)."""
    lab.down(KOBO)
    try:
        yield lab.up(KOBO, "kobo", late_mount=25, password="fd-Secret1", motd=True, no_base64=True)
    finally:
        with contextlib.suppress(Exception):
            control.forget([KOBO])
        stop_sessions(work / "cp")
        lab.down(KOBO)


def test_storage_not_mounted_writes_nothing_then_late_mount_is_waited_for(
    late_kobo: Any, work: Path, mirror: str
) -> None:
    assert "/mnt/onboard" not in sh(KOBO, "cat /proc/mounts")
    assert sh(KOBO, "command -v base64 || echo none").strip() == "none"
    early = run_site(late_kobo, work, mirror, {"device_storage_mount_timeout": 2})
    assert early.rc != 0
    assert "not mounted: is it in USB storage mode" in early.output, early.output[-3000:]
    # Nothing written: not under the bare mount point (the root filesystem), not the links or boot files.
    if "/mnt/onboard" not in sh(KOBO, "cat /proc/mounts"):
        assert sh(KOBO, "ls -A /mnt/onboard").strip() == ""
    assert "No such file" in sh(KOBO, f"ls {ROOT_DIR} /usr/bin/tailscaled 2>&1")
    # The default timeout (30 s) covers the late mount: the run waits for it and provisions onto FAT.
    late = run_site(late_kobo, work, mirror)
    assert late.rc == 0, late.output[-4000:]
    assert "fuse.fusefat" in sh(KOBO, "grep ' /mnt/onboard ' /proc/mounts")
    assert sh(KOBO, f"ls {STORE}/1.98.10").split() == ["tailscale", "tailscaled"]
    assert wait_for(lambda: json.loads(sh(KOBO, "tailscale status --json"))["BackendState"] == "Running")

    # What the real tailscaled does with a state dir on FAT: it cannot chmod its state file and runs on an
    # in-memory store (a new node at every start). This is why the kobo's state is on the root filesystem.
    probe = (
        f"mkdir -p /tmp/p; timeout 15 {STORE}/1.98.10/tailscaled --statedir=/mnt/onboard/fd-probe "
        "--state=/mnt/onboard/fd-probe/tailscaled.state --socket=/tmp/p/s.sock --tun=userspace-networking "
        "--no-logs-no-support --port=0 > /tmp/p/log 2>&1; grep store.New /tmp/p/log; rm -rf /mnt/onboard/fd-probe"
    )
    out = sh(KOBO, probe)
    assert "chmod" in out and "function not implemented" in out and "in-memory store" in out, out
    # And the collection refuses such a state dir before anything changes, the node's state untouched.
    before = sh(KOBO, f"sha256sum {STATE}")
    refused = run_site(late_kobo, work, mirror, {"state_dir_path": f"{STORE}/state"})
    assert refused.rc != 0 and "keeps no Unix modes" in refused.output, refused.output[-3000:]
    assert "No such file" in sh(KOBO, f"ls {STORE}/state 2>&1")
    assert sh(KOBO, f"sha256sum {STATE}") == before


SV = "fd-sv"


@pytest.fixture
def sysvinit(work: Path) -> Iterator[Any]:
    lab.down(SV)
    try:
        yield lab.up(SV, "sysvinit", no_var_run=True)
    finally:
        with contextlib.suppress(Exception):
            control.forget([SV])
        stop_sessions(work / "cp")
        lab.down(SV)


def test_sysvinit_without_var_run_converges_and_its_watchdog_restarts(sysvinit: Any, work: Path, mirror: str) -> None:
    first = run_site(sysvinit, work, mirror)
    assert first.rc == 0, first.output[-4000:]
    assert wait_for(lambda: len(daemons(SV)) == 1, 30)
    again = run_site(sysvinit, work, mirror)
    assert again.rc == 0 and again.changed == 0, again.output[-4000:]
    assert len(daemons(SV)) == 1
    old = daemons(SV)[0]
    sh(SV, f"kill -9 {old}")
    assert wait_for(lambda: bool(daemons(SV)) and daemons(SV)[0] != old, 30), sh(
        SV, "tail -5 /var/lib/tailscale/logs/boot.log"
    )
    assert "tailscaled died" in sh(SV, "cat /var/lib/tailscale/logs/boot.log")
    sh(SV, "/etc/init.d/tailscaled stop")
    time.sleep(4)
    assert daemons(SV) == []
    assert "not restarted" in sh(SV, "cat /var/lib/tailscale/logs/boot.log")
