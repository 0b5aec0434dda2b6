"""_install_pipeline: the round trips of an install (check, upload, apply, remove) against busybox ash on a temp dir,
and how the device's answers become results and errors (install_files and boot both run this)."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import typing as t
from pathlib import Path
from types import SimpleNamespace

import pytest
from ansible.errors import AnsibleActionFail
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._install_pipeline import Install, apply, check, remove
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._install_plan import FileSpec, LinkSpec

BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="busybox (Debian busybox-static) is not installed")


class Action:
    """What the pipeline uses of an action: its connection (put_file), its task (check mode), its scripts."""

    def __init__(self, check_mode: bool = False) -> None:
        self.scripts: list[str] = []
        self.uploads: list[str] = []
        self._task = SimpleNamespace(check_mode=check_mode)
        self._connection = SimpleNamespace(put_file=self.put_file)

    def _low_level_execute_command(self, cmd: str, sudoable: bool = False, executable: str = "") -> dict[str, t.Any]:
        del sudoable, executable
        self.scripts.append(cmd)
        assert BUSYBOX is not None
        out = subprocess.run([BUSYBOX, "sh", "-c", cmd], capture_output=True, text=True, timeout=60, check=False)
        return {"rc": out.returncode, "stdout": out.stdout, "stderr": out.stderr}

    def put_file(self, src: str, dest: str) -> None:
        self.uploads.append(dest)
        shutil.copyfile(src, dest)


def layout(tmp: Path, text: str = "#!/bin/sh\necho 1.2.3\n") -> Install:
    src = tmp / "ctl" / "tailscaled"
    src.parent.mkdir(exist_ok=True)
    src.write_text(text)
    dev = tmp / "dev"
    spec = FileSpec(str(src), f"{dev}/opt/1/tailscaled", "0755", len(text), hashlib.sha256(text.encode()).hexdigest())
    link = LinkSpec(f"{dev}/bin/tailscaled", spec.dest)
    return Install("install_files", [spec], [link], [f"{dev}/opt"], f"{dev}/opt/.manifest")


def test_install_is_check_prepare_upload_apply_then_a_one_round_trip_no_op(tmp_path: Path) -> None:
    inst, action = layout(tmp_path), Action()
    plan, _sec = check(action, inst)
    assert plan.changed and [f.dest for f in plan.uploads] == [inst.files[0].dest]
    apply(action, inst, plan, remount_root=False)
    assert len(action.scripts) == 3  # check, prepare, apply
    assert action.uploads == [str(tmp_path / "dev/opt/1/.tailscaled.fmtmp")]
    assert Path(inst.links[0].path).resolve() == Path(inst.files[0].dest)
    again, _sec = check(action, inst)
    assert not again.changed and len(action.scripts) == 4


def test_extra_sections_join_the_check_and_after_runs_without_an_upload(tmp_path: Path) -> None:
    inst, action = layout(tmp_path), Action()
    apply(action, inst, check(action, inst)[0], remount_root=False)
    plan, sec = check(action, inst, "echo @@running; echo yes\n")
    assert sec["running"] == "yes" and action.scripts[-1].endswith("echo @@running; echo yes\necho @@end\n")
    sec = apply(action, inst, plan, remount_root=False, after="echo @@service; echo started\n")
    assert sec["service"] == "started" and len(action.scripts) == 5 and len(action.uploads) == 1


def test_failures_name_the_task_and_say_what_the_device_said(tmp_path: Path) -> None:
    inst, action = layout(tmp_path), Action()
    Path(inst.links[0].path).parent.mkdir(parents=True)
    Path(inst.links[0].path).write_text("someone else's")
    with pytest.raises(AnsibleActionFail, match=r"^install_files: .* exists and is not a symlink"):
        check(action, inst)
    Path(inst.links[0].path).unlink()
    plan, _sec = check(action, inst)
    with pytest.raises(AnsibleActionFail, match=r"^verification failed, said: rc=3"):
        apply(
            action, inst, plan, remount_root=False, verify="exit 3", fail_on={"verify": "verification failed, said: "}
        )
    assert not Path(inst.files[0].dest).exists()  # undone
    with pytest.raises(AnsibleActionFail, match=r"^boot install failed \(rc=7\)"):
        apply(action, inst, plan, remount_root=False, after="exit 7\n", failure="boot install failed")


def test_not_enough_space_fails_before_anything_is_written(tmp_path: Path) -> None:
    inst = layout(tmp_path)
    inst.files[0].size = 1 << 50
    with pytest.raises(AnsibleActionFail, match=r"^not enough space: needs .* MB free on .*; nothing was changed"):
        check(Action(), inst)
    assert not (tmp_path / "dev").exists()


def test_remove_takes_the_manifest_and_check_mode_only_says_so(tmp_path: Path) -> None:
    inst, action = layout(tmp_path), Action()
    apply(action, inst, check(action, inst)[0], remount_root=False)
    said = remove(Action(check_mode=True), inst.manifest, remount_root=False, root="", label="x")
    assert said["changed"] and inst.files[0].dest in said["removed"] and Path(inst.files[0].dest).exists()
    done = remove(action, inst.manifest, remount_root=False, root="", label="x")
    assert done["changed"] and not Path(inst.files[0].dest).exists() and not (tmp_path / "dev/opt").exists()
    assert remove(action, inst.manifest, remount_root=False, root="", label="x") == {"changed": False, "removed": []}


def packed_layout(tmp: Path, text: str = "#!/bin/sh\necho 1.2.3\n", packed_text: str | None = None) -> Install:
    """layout() with a gzip copy of the file (of other text when packed_text is given: a bad copy)."""
    inst = layout(tmp, text)
    gz = tmp / "ctl" / "tailscaled.gz"
    gz.write_bytes(gzip.compress((text if packed_text is None else packed_text).encode(), mtime=0))
    inst.files[0].packed, inst.files[0].packed_size = str(gz), gz.stat().st_size
    return inst


def test_a_gzip_copy_travels_and_is_unpacked_beside_the_destination(tmp_path: Path) -> None:
    inst, action = packed_layout(tmp_path, "#!/bin/sh\n" + "echo 1.2.3\n" * 2000), Action()
    plan, _sec = check(action, inst)
    assert plan.gunzip and plan.unpacks(inst.files[0])  # busybox unpacks gzip: the probe found a way
    apply(action, inst, plan, remount_root=False)
    assert action.uploads == [str(tmp_path / "dev/opt/1/.tailscaled.fmtmp.gz")]
    dest = Path(inst.files[0].dest)
    assert dest.read_bytes() == Path(inst.files[0].src).read_bytes() and dest.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in dest.parent.iterdir()) == ["tailscaled"]  # no temp file left
    assert not check(action, inst)[0].changed


def test_a_gzip_copy_of_other_content_fails_before_anything_moves(tmp_path: Path) -> None:
    inst, action = layout(tmp_path, "#!/bin/sh\necho 1.0.0\n"), Action()
    apply(action, inst, check(action, inst)[0], remount_root=False)
    old = Path(inst.files[0].dest).read_bytes()
    bad = packed_layout(tmp_path, "#!/bin/sh\necho 1.2.3\n", packed_text="#!/bin/sh\necho tampered\n")
    plan, _sec = check(action, bad)
    with pytest.raises(AnsibleActionFail, match=r"^unpack: .*/opt/1/tailscaled: sha256 [0-9a-f]{64}, wanted "):
        apply(action, bad, plan, remount_root=False, fail_on={"unpack": "unpack: "})
    assert Path(bad.files[0].dest).read_bytes() == old
    assert sorted(p.name for p in Path(bad.files[0].dest).parent.iterdir()) == ["tailscaled"]
    # Not gzip at all: the unpacker's own message.
    Path(bad.files[0].packed).write_bytes(b"not gzip")
    plan, _sec = check(action, bad)
    with pytest.raises(AnsibleActionFail, match=r"^unpack: .*/opt/1/tailscaled: .*"):
        apply(action, bad, plan, remount_root=False, fail_on={"unpack": "unpack: "})
    assert Path(bad.files[0].dest).read_bytes() == old


def version_layout(tmp: Path, version: str) -> Install:
    """Version ``version`` of a tailscaled at dev/opt/<version>/ with dev/bin/tailscaled linked to it."""
    text = f"#!/bin/sh\necho {version}\n"
    src = tmp / "ctl" / version / "tailscaled"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text(text)
    dev = tmp / "dev"
    dest = f"{dev}/opt/{version}/tailscaled"
    spec = FileSpec(str(src), dest, "0755", len(text), hashlib.sha256(text.encode()).hexdigest())
    return Install(
        "install_files",
        [spec],
        [LinkSpec(f"{dev}/bin/tailscaled", dest)],
        [f"{dev}/opt", f"{dev}/opt/{version}"],
        f"{dev}/opt/.manifest",
    )


def test_keep_stale_leaves_the_previous_version_listed_until_a_run_without_it(tmp_path: Path) -> None:
    action, dev = Action(), tmp_path / "dev"
    one = version_layout(tmp_path, "1")
    apply(action, one, check(action, one)[0], remount_root=False)
    two = version_layout(tmp_path, "2")
    two.keep_stale = True
    plan, _sec = check(action, two)
    assert plan.stale_items == [] and sorted(plan.kept) == [
        ("dir", f"{dev}/opt/1"),
        ("file", f"{dev}/opt/1/tailscaled"),
    ]
    assert plan.links == [(two.links[0], f"{dev}/opt/1/tailscaled")]  # what it pointed to before
    sec = apply(action, two, plan, remount_root=False, verify=f"{dev}/opt/2/tailscaled", verify_expect="2")
    assert sec["verified"] == "2"  # the check's output comes back
    assert Path(two.links[0].path).resolve() == Path(two.files[0].dest)
    assert (dev / "opt/1/tailscaled").exists()  # kept, and still listed: a removal would take it
    manifest = (dev / "opt/.manifest").read_text()
    assert f"file {dev}/opt/1/tailscaled\n" in manifest and f"file {dev}/opt/2/tailscaled\n" in manifest
    # Kept again on the next run: nothing to do; without keep_stale the previous version goes.
    assert not check(action, two)[0].changed
    two.keep_stale = False
    plan, _sec = check(action, two)
    assert plan.changed and not plan.uploads and not plan.links and plan.kept == []
    apply(action, two, plan, remount_root=False)
    assert not (dev / "opt/1").exists() and f"{dev}/opt/1" not in (dev / "opt/.manifest").read_text()
    assert not check(action, two)[0].changed
