"""_device_shell: the shared device snippets, run for real under busybox ash and dash on temp files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_script import sh_quote
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_shell import (
    RESTORE_RO,
    ROOT_IS_READ_ONLY,
    ROOT_OPTIONS,
    atomic_write,
    remount_rw,
    remount_rw_if_read_only,
    root_read_only,
)

SHELLS = [
    pytest.param(["dash"], id="dash"),
    pytest.param([shutil.which("busybox") or "busybox", "sh"], id="busybox"),
]


def sh(shell: list[str], script: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(shell[0]) is None:
        pytest.skip(f"{shell[0]} is not installed")
    return subprocess.run([*shell, "-c", script], capture_output=True, text=True, timeout=30, check=False)


def mounts(tmp: Path, root_opts: str) -> str:
    """A /proc/mounts where / was mounted twice (the last mount wins)."""
    table = tmp / "mounts"
    table.write_text(f"rootfs / rootfs rw 0 0\n/dev/root / ext4 {root_opts} 0 0\n/dev/sda1 /mnt vfat ro 0 0\n")
    return str(table)


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(("opts", "ro"), [("ro,relatime", True), ("rw,noatime", False), ("rw,errors=ro", False)])
def test_the_root_check_as_a_section_and_as_a_condition_agree(
    shell: list[str], tmp_path: Path, opts: str, ro: bool
) -> None:
    table = mounts(tmp_path, opts)
    printed = sh(shell, ROOT_OPTIONS.replace("/proc/mounts", table)).stdout
    assert printed == opts + "\n" and root_read_only(printed) is ro
    assert (sh(shell, ROOT_IS_READ_ONLY.replace("/proc/mounts", table)).returncode == 0) is ro


def test_remount_opens_root_until_the_script_exits() -> None:
    assert remount_rw() == ["mount -o remount,rw /", RESTORE_RO]
    assert remount_rw("exit 1") == ["mount -o remount,rw / || exit 1", RESTORE_RO]
    assert remount_rw_if_read_only() == f"if {ROOT_IS_READ_ONLY}; then mount -o remount,rw / && {RESTORE_RO}; fi"


@pytest.mark.parametrize("shell", SHELLS)
def test_remount_runs_only_on_a_read_only_root_and_the_trap_restores_it(shell: list[str], tmp_path: Path) -> None:
    log = tmp_path / "log"
    fake = f'mount() {{ echo "mount $*" >> {log}; }}; sync() {{ :; }}\n'
    for opts, expected in (("rw", ""), ("ro", "mount -o remount,rw /\nmount -o remount,ro /\n")):
        log.write_text("")
        script = fake + remount_rw_if_read_only().replace("/proc/mounts", mounts(tmp_path, opts)) + "\necho body\n"
        out = sh(shell, script)
        assert out.stdout == "body\n" and log.read_text() == expected


@pytest.mark.parametrize("shell", SHELLS)
def test_atomic_write_replaces_only_a_checked_copy(shell: list[str], tmp_path: Path) -> None:
    dest = tmp_path / "etc" / "init.d" / "fwd"
    q, tmp = sh_quote(str(dest)), sh_quote(f"{dest}.fleetmesh-tmp")

    def write(text: str) -> subprocess.CompletedProcess[str]:
        steps = atomic_write(
            q,
            tmp,
            f"printf %s {sh_quote(text)} > {tmp}",
            mkdir=f'"$(dirname {q})"',
            checks=[f"sh -n {tmp}"],
            mode="755",
        )
        return sh(shell, " && ".join(steps))

    assert write("#!/bin/sh\necho ok\n").returncode == 0
    assert dest.read_text() == "#!/bin/sh\necho ok\n" and dest.stat().st_mode & 0o777 == 0o755
    assert write("#!/bin/sh\nif then\n").returncode != 0  # fails `sh -n`: never renamed into place
    assert dest.read_text() == "#!/bin/sh\necho ok\n"


def test_atomic_write_orders_its_steps() -> None:
    assert atomic_write("D", "T") == ["mv -f T D"]
    assert atomic_write("D", "T", "cat S > T", mkdir="M", checks=["cmp -s S T"], mode="600") == [
        "mkdir -p M",
        "cat S > T",
        "cmp -s S T",
        "chmod 600 T",
        "mv -f T D",
    ]
