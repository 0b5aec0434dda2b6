"""install_files' device scripts, run for real under busybox ash on a temp dir (the same shell as the devices)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._install_plan import (
    FileSpec,
    LinkSpec,
    Plan,
    apply_script,
    check_script,
    manifest_text,
    plan_from_output,
    prepare_script,
    remove_script,
    space_errors,
    tmp_name,
    upload_name,
)

BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="busybox (Debian busybox-static) is not installed")


def sh(script: str) -> subprocess.CompletedProcess[str]:
    assert BUSYBOX is not None
    return subprocess.run([BUSYBOX, "sh", "-c", script], capture_output=True, text=True, timeout=60, check=False)


def spec(src: Path, dest: Path, mode: str = "0755") -> FileSpec:
    data = src.read_bytes()
    return FileSpec(str(src), str(dest), mode, len(data), hashlib.sha256(data).hexdigest())


def install(
    files: list[FileSpec],
    links: list[LinkSpec],
    dirs: list[str],
    manifest: str,
    *,
    verify: str = "",
    stage: str = "links",
    syntax: tuple[str, ...] = (),
    root: str = "",
) -> tuple[Plan, subprocess.CompletedProcess[str] | None]:
    """The action's flow: check, plan, prepare, upload (a copy), apply. Returns the plan and the apply result."""
    out = sh(check_script(files, links, manifest, dirs)).stdout
    plan = plan_from_output(out, files, links, dirs, manifest, root=root)
    if not plan.changed:
        return plan, None
    if plan.uploads:
        assert sh(prepare_script(plan, dirs)).returncode == 0
        for f in plan.uploads:
            shutil.copyfile(f.src, tmp_name(f.dest))
    body = manifest_text(files, links, plan.manifest_dirs or dirs, root)
    script = apply_script(
        plan,
        dirs,
        verify=verify,
        verify_expect="",
        verify_stage=stage,
        remount_root=False,
        manifest=manifest,
        manifest_body=body,
        syntax_check=syntax,
    )
    return plan, sh(script)


@pytest.fixture
def release(tmp_path: Path) -> dict[str, Path]:
    ctl = tmp_path / "controller"
    ctl.mkdir()
    good = ctl / "good"
    good.write_text("#!/bin/sh\necho 1.2.3\n")
    bad = ctl / "bad"
    bad.write_text("#!/bin/sh\necho 'cannot execute binary file: Exec format error' >&2; exit 126\n")
    return {"good": good, "bad": bad, "dev": tmp_path / "dev"}


def layout(dev: Path, src: Path, version: str) -> tuple[list[FileSpec], list[LinkSpec], list[str]]:
    vdir = dev / "opt" / version
    files = [spec(src, vdir / "tailscaled")]
    links = [
        LinkSpec(str(dev / "opt" / "current"), str(vdir)),
        LinkSpec(str(dev / "bin" / "tailscaled"), str(dev / "opt/current/tailscaled")),
    ]
    return files, links, [str(dev / "opt"), str(dev / "bin"), str(vdir)]


def test_fresh_install_then_noop(release: dict[str, Path]) -> None:
    dev = release["dev"]
    manifest = str(dev / "opt/.manifest")
    files, links, dirs = layout(dev, release["good"], "1.2.3")
    plan, done = install(files, links, dirs, manifest, verify=f"{dev}/opt/1.2.3/tailscaled --version", stage="files")
    assert [f.dest for f in plan.uploads] == [str(dev / "opt/1.2.3/tailscaled")]
    assert done is not None and done.returncode == 0, done.stdout + done.stderr
    assert (dev / "bin/tailscaled").resolve() == (dev / "opt/1.2.3/tailscaled")
    assert oct((dev / "opt/1.2.3/tailscaled").stat().st_mode & 0o777) == "0o755"
    again, done = install(files, links, dirs, manifest)
    assert not again.changed and done is None
    assert not list(dev.rglob("*.fmtmp")) and not list(dev.rglob("*.fmbak"))


def test_failed_verify_keeps_previous_version(release: dict[str, Path]) -> None:
    dev = release["dev"]
    manifest = str(dev / "opt/.manifest")
    install(*layout(dev, release["good"], "1.2.3"), manifest)
    files, links, dirs = layout(dev, release["bad"], "1.3.0")
    _plan, done = install(files, links, dirs, manifest, verify=f"{dev}/opt/1.3.0/tailscaled --version", stage="files")
    assert done is not None and done.returncode == 3
    assert "@@verify\nrc=126\ncannot execute binary file: Exec format error" in done.stdout
    assert Path(dev / "opt/current").resolve() == dev / "opt/1.2.3"
    assert not (dev / "opt/1.3.0").exists()
    assert "1.2.3/tailscaled" in (dev / "opt/.manifest").read_text()


def test_upgrade_removes_the_old_version_listed_in_the_manifest(release: dict[str, Path]) -> None:
    dev = release["dev"]
    manifest = str(dev / "opt/.manifest")
    install(*layout(dev, release["good"], "1.2.3"), manifest)
    (dev / "opt/mine.txt").write_text("user file")
    _plan, done = install(*layout(dev, release["good"], "1.4.0"), manifest)
    assert done is not None and done.returncode == 0, done.stdout
    assert not (dev / "opt/1.2.3").exists()
    assert (dev / "opt/mine.txt").exists()
    assert Path(dev / "bin/tailscaled").resolve() == dev / "opt/1.4.0/tailscaled"


def test_wrong_link_and_mode_are_repaired(release: dict[str, Path]) -> None:
    dev = release["dev"]
    manifest = str(dev / "opt/.manifest")
    files, links, dirs = layout(dev, release["good"], "1.2.3")
    install(files, links, dirs, manifest)
    (dev / "bin/tailscaled").unlink()
    (dev / "opt/1.2.3/tailscaled").chmod(0o600)
    plan, done = install(files, links, dirs, manifest)
    assert plan.uploads == [] and [lk.path for lk, _cur in plan.links] == [str(dev / "bin/tailscaled")]
    assert [f.dest for f in plan.mode_fixes] == [str(dev / "opt/1.2.3/tailscaled")]
    assert done is not None and done.returncode == 0
    assert (dev / "bin/tailscaled").is_symlink() and (dev / "opt/1.2.3/tailscaled").stat().st_mode & 0o777 == 0o755


def test_a_regular_file_where_a_link_belongs_is_refused(release: dict[str, Path]) -> None:
    dev = release["dev"]
    files, links, dirs = layout(dev, release["good"], "1.2.3")
    (dev / "bin").mkdir(parents=True)
    (dev / "bin/tailscaled").write_text("someone else's")
    with pytest.raises(ValueError, match="exists and is not a symlink"):
        plan_from_output(sh(check_script(files, links, "")).stdout, files, links, dirs, "")


def test_remove_takes_exactly_the_manifest(release: dict[str, Path]) -> None:
    dev = release["dev"]
    manifest = str(dev / "opt/.manifest")
    install(*layout(dev, release["good"], "1.2.3"), manifest)
    (dev / "bin/other").write_text("not ours")
    done = sh(remove_script(manifest, remount_root=False, check_only=False))
    assert "@@manifest" in done.stdout and done.returncode == 0
    assert sorted(p.name for p in dev.rglob("*")) == ["bin", "other"]
    assert "@@absent" in sh(remove_script(manifest, remount_root=False, check_only=False)).stdout


def test_space_check_reports_numbers() -> None:
    f = FileSpec("/c/tailscaled", "/mnt/onboard/.tailscale/1.2.3/tailscaled", "0755", 30 * 1024 * 1024, "0" * 64)
    out = (
        "@@f0\n-\n-\n@@d0\n/mnt/onboard/.tailscale/1.2.3\t/dev/mmcblk0p3 65536 55296 10240 85% /mnt/onboard\n"
        "@@root\nrw,relatime\n@@end\n"
    )
    plan = plan_from_output(out, [f], [], [], "")
    assert space_errors(plan) == ["needs 30.0 MB, 10.0 MB free on /mnt/onboard"]


def test_a_compressed_upload_counts_both_copies_and_needs_a_gunzip_the_probe_found() -> None:
    f = FileSpec("/c/tailscaled", "/mnt/onboard/.tailscale/1.2.3/tailscaled", "0755", 30 << 20, "0" * 64)
    f.packed, f.packed_size = "/c/tailscaled.gz", 15 << 20
    df = "@@d0\n/mnt/onboard/.tailscale/1.2.3\t/dev/mmcblk0p3 65536 55296 10240 85% /mnt/onboard\n@@root\nrw\n"
    assert "@@gunzip" in check_script([f], [], "")
    plain = plan_from_output(f"@@f0\n-\n-\n{df}@@end\n", [f], [], [], "")
    assert not plain.unpacks(f) and space_errors(plain) == ["needs 30.0 MB, 10.0 MB free on /mnt/onboard"]
    assert upload_name(plain, f) == ("/c/tailscaled", "/mnt/onboard/.tailscale/1.2.3/.tailscaled.fmtmp")
    packed = plan_from_output(f"@@f0\n-\n-\n{df}@@gunzip\nbusybox gunzip -c\n@@end\n", [f], [], [], "")
    assert packed.unpacks(f) and space_errors(packed) == ["needs 45.0 MB, 10.0 MB free on /mnt/onboard"]
    assert upload_name(packed, f) == ("/c/tailscaled.gz", "/mnt/onboard/.tailscale/1.2.3/.tailscaled.fmtmp.gz")
    # Only the commands the probe tries are taken from the device's answer; under a staging root none is.
    odd = plan_from_output(f"@@f0\n-\n-\n{df}@@gunzip\ngunzip -c; reboot\n@@end\n", [f], [], [], "")
    assert not odd.unpacks(f)
    staged = plan_from_output(f"@@f0\n-\n-\n{df}@@gunzip\ngunzip -c\n@@end\n", [f], [], [], "", root="/img")
    assert not staged.unpacks(f)
    # No gzip copy: no probe.
    assert "@@gunzip" not in check_script([FileSpec("/c/x", "/d/x", "0644", 1, "0" * 64)], [], "")


def test_cut_short_output_is_an_error() -> None:
    with pytest.raises(ValueError, match="cut short"):
        plan_from_output("@@f0\n-\n", [], [], [], "")


def test_a_script_failing_sh_n_never_replaces_the_working_one(tmp_path: Path) -> None:
    ctl, dev = tmp_path / "ctl", tmp_path / "dev"
    ctl.mkdir()
    dest = dev / "boot" / "tailscaled.init"
    good, broken = ctl / "good", ctl / "broken"
    good.write_text("#!/bin/sh\necho ok\n")
    broken.write_text("#!/bin/sh\nif then\n")
    manifest = str(dev / "boot" / ".manifest")
    _plan, done = install([spec(good, dest)], [], [str(dev / "boot")], manifest, syntax=(str(dest),))
    assert done is not None and done.returncode == 0
    _plan, done = install([spec(broken, dest)], [], [str(dev / "boot")], manifest, syntax=(str(dest),))
    assert done is not None and done.returncode == 4
    assert "@@syntax" in done.stdout and str(dest) in done.stdout
    assert dest.read_text() == good.read_text()
    assert sorted(p.name for p in dest.parent.iterdir()) == [".manifest", "tailscaled.init"]


def test_removal_takes_the_parent_dirs_the_install_made(tmp_path: Path) -> None:
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    src = ctl / "f"
    src.write_text("x")
    (tmp_path / "etc").mkdir()
    deep = tmp_path / "new" / "a" / "b"
    files = [spec(src, deep / "f")]
    links = [LinkSpec(str(tmp_path / "etc" / "rc5.d" / "S99x"), "../init.d/x")]
    manifest = str(deep / ".manifest")
    plan, done = install(files, links, [str(deep)], manifest)
    assert done is not None and done.returncode == 0
    assert {str(tmp_path / "new"), str(tmp_path / "new" / "a"), str(tmp_path / "etc" / "rc5.d")} <= set(
        plan.manifest_dirs
    )
    # The second run keeps those dirs in the manifest (they exist now): nothing to change.
    again, _done = install(files, links, [str(deep)], manifest)
    assert not again.changed
    assert sh(remove_script(manifest, False, False)).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctl", "etc"]
    assert list((tmp_path / "etc").iterdir()) == []


def test_rootfs_staging_root_prefixes_writes_and_keeps_in_image_paths(tmp_path: Path) -> None:
    ctl, image = tmp_path / "ctl", tmp_path / "image"
    ctl.mkdir()
    src = ctl / "tailscaled"
    src.write_text("#!/bin/sh\n")
    root = str(image)
    files = [spec(src, image / "usr/lib/tailscale/tailscaled")]
    links = [LinkSpec(root + "/usr/bin/tailscaled", "/usr/lib/tailscale/tailscaled")]
    manifest = root + "/usr/lib/tailscale/.manifest"
    _plan, done = install(files, links, [root + "/usr/lib/tailscale"], manifest, root=root)
    assert done is not None and done.returncode == 0
    assert (image / "usr/bin/tailscaled").readlink() == Path("/usr/lib/tailscale/tailscaled")
    text = Path(manifest).read_text()
    assert "file /usr/lib/tailscale/tailscaled" in text and str(tmp_path) not in text
    assert sh(remove_script(manifest, False, False, root)).returncode == 0
    assert not image.exists() or not any(image.rglob("*"))
