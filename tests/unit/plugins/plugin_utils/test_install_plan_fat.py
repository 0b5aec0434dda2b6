"""install_files' planner on a FAT storage (issue 15): no chmod, no mode comparison, no links, no case twins."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_script import (
    mount_wait_script,
    under_mount,
)
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._install_plan import (
    FileSpec,
    LinkSpec,
    Plan,
    apply_script,
    plan_from_output,
    space_errors,
)

DIGEST = "a" * 64
BIN = FileSpec("/c/tailscaled", "/mnt/onboard/.tailscale/1.98.10/tailscaled", "0755", 4096, DIGEST)


def output(fstype: str, file_lines: str = "-\n-", df: str = "fusefat 0 0 0 - /mnt/onboard", links: str = "") -> str:
    return (
        f"@@f0\n{file_lines}\n{links}"
        f"@@d0\n/mnt/onboard/.tailscale/1.98.10\t{df}\n"
        f"@@root\nrw\n@@fstypes\n/\toverlay\n/mnt/onboard\t{fstype}\n@@end\n"
    )


@pytest.mark.parametrize("fstype", ["vfat", "fuse.fusefat", "msdos"])
def test_fat_files_are_never_chmod_ed(fstype: str) -> None:
    plan = plan_from_output(output(fstype), [BIN], [], [], "")
    assert plan.uploads == [BIN] and plan.no_mode == {BIN.dest}
    script = apply_script(
        plan, [], verify="", verify_expect="", verify_stage="files", remount_root=False, manifest="", manifest_body=""
    )
    assert "chmod" not in script


def test_ext4_files_keep_their_mode() -> None:
    plan = plan_from_output(output("ext4", df="/dev/sda1 100 10 90 10% /mnt/onboard"), [BIN], [], [], "")
    assert plan.no_mode == set()
    script = apply_script(
        plan, [], verify="", verify_expect="", verify_stage="files", remount_root=False, manifest="", manifest_body=""
    )
    assert "chmod 0755" in script


def test_fat_mode_is_not_compared() -> None:
    # Same content; FAT reports 700 for every file: no perpetual mode fix.
    plan = plan_from_output(output("vfat", f"{DIGEST}\n700"), [BIN], [], [], "")
    assert not plan.changed
    plan = plan_from_output(
        output("ext4", f"{DIGEST}\n700", df="/dev/sda1 100 10 90 10% /mnt/onboard"), [BIN], [], [], ""
    )
    assert plan.mode_fixes == [BIN]


def test_link_on_fat_is_refused() -> None:
    link = LinkSpec("/mnt/onboard/.tailscale/current", "/mnt/onboard/.tailscale/1.98.10")
    text = output("vfat").replace("@@d0", "@@l0\n-\n@@d1\n/mnt/onboard/.tailscale\tfusefat 0 0 0 - /mnt/onboard\n@@d0")
    with pytest.raises(ValueError, match="has no symlinks"):
        plan_from_output(text, [BIN], [link], [], "")


def test_case_twins_on_fat_are_refused() -> None:
    a = FileSpec("/c/a", "/mnt/onboard/x/libxt_MARK.so", "0644", 10, DIGEST)
    b = FileSpec("/c/b", "/mnt/onboard/x/libxt_mark.so", "0644", 10, DIGEST)
    text = "@@f0\n-\n-\n@@f1\n-\n-\n@@d0\n/mnt/onboard/x\tfusefat 0 0 0 - /mnt/onboard\n"
    text += "@@root\nrw\n@@fstypes\n/mnt/onboard\tvfat\n@@end\n"
    with pytest.raises(ValueError, match="differ only in case"):
        plan_from_output(text, [a, b], [], [], "")


def test_a_filesystem_reporting_no_blocks_has_no_space_verdict() -> None:
    assert space_errors(plan_from_output(output("fuse.fusefat"), [BIN], [], [], "")) == []
    full = output("vfat", df="/dev/mmcblk0p3 1000 1000 0 100% /mnt/onboard")
    assert space_errors(plan_from_output(full, [BIN], [], [], "")) != []


def test_mount_check_is_only_for_paths_below_the_mount() -> None:
    assert under_mount("/mnt/onboard", ["/mnt/onboard/.tailscale/x"])
    assert not under_mount("/mnt/onboard", ["/usr/local/fleetmesh-tailscale/x"])
    assert not under_mount("/", ["/anything"]) and not under_mount("", ["/x"])
    assert "/proc/mounts" in mount_wait_script("/mnt/onboard", 3)


def test_a_stale_dir_still_in_use_stays_in_the_manifest(tmp_path: Path) -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox (Debian busybox-static) is not installed")
    busy, gone = tmp_path / "1.96.5", tmp_path / "1.90.0"
    busy.mkdir()
    (busy / ".fuse_hidden0001").write_text("a running tailscaled")
    gone.mkdir()
    plan = Plan(stale_items=[("dir", str(busy)), ("dir", str(gone))], manifest_stale=True)
    manifest = tmp_path / "m"
    script = apply_script(
        plan,
        [],
        verify="",
        verify_expect="",
        verify_stage="files",
        remount_root=False,
        manifest=str(manifest),
        manifest_body="file /x\n",
    )
    proc = subprocess.run([busybox, "sh", "-c", script], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert manifest.read_text() == f"file /x\ndir {busy}\n"
    assert not gone.exists() and busy.exists()
