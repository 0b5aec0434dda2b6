"""A fake Linux device root for the tun_device tests (tests/unit/plugins/action/test_tun_device.py, the action;
tests/unit/plugins/plugin_utils/test_tun_plan.py, its planner's scripts): /proc/misc, /sys/class/misc and /dev/net
as files in a temp dir, the scripts run under a real shell, a fake insmod."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

IS_ROOT = os.geteuid() == 0


def need(shell: list[str]) -> None:
    if shutil.which(shell[0]) is None:
        pytest.skip(f"{shell[0]} is not installed (busybox: Debian busybox-static)")
    if not IS_ROOT:
        pytest.skip("mknod of a character device needs root")


def fake_root(tmp: Path, *, misc: bool = True, sysfs: bool = False) -> Path:
    root = tmp / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc/misc").write_text(" 237 loop-control\n" + (" 200 tun\n" if misc else "") + " 229 fuse\n")
    if sysfs:
        (root / "sys/class/misc/tun").mkdir(parents=True)
    return root


def sh(shell: list[str], script: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=path) if path else None
    return subprocess.run([*shell, "-c", script], capture_output=True, text=True, timeout=30, check=False, env=env)


def fake_insmod(tmp: Path, root: Path, *, ok: bool) -> str:
    """A PATH with an insmod that 'loads' tun by adding it to the fake /proc/misc (or fails like a bad module)."""
    bindir = tmp / "bin"
    bindir.mkdir()
    body = (
        f"echo \"$1\" >> {root}/insmod.log; echo ' 200 tun' >> {root}/proc/misc"
        if ok
        else ("echo \"insmod: can't insert '$1': invalid module format\" >&2; exit 1")
    )
    (bindir / "insmod").write_text(f"#!/bin/sh\n{body}\n")
    (bindir / "insmod").chmod(0o755)
    return f"{bindir}:{os.environ['PATH']}"
