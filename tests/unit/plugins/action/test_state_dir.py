"""state_dir's device script, run for real under busybox ash: move once, never overwrite, modes, check mode, and
under a rootfs staging dir."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ansible.errors import AnsibleActionFail
from ansible_collections.fleetmesh.tailscale.plugins.action.state_dir import interpret, render

BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="busybox (Debian busybox-static) is not installed")
NODE_STATE = '{"_machinekey": "privkey:abc", "_current-profile": "cHJvZmlsZS0x"}\n'


def run(tmp: Path, *, dry: bool = False) -> dict[str, Any]:
    assert BUSYBOX is not None
    sd, logs = str(tmp / "new/state"), str(tmp / "new/state/logs")
    script = render(sd, logs, [str(tmp / "var/lib/tailscale/tailscaled.state"), str(tmp / "tailscaled.state")], dry)
    proc = subprocess.run([BUSYBOX, "sh", "-c", script], capture_output=True, text=True, timeout=30, check=False)
    return interpret(proc.stdout, sd, logs)


def test_move_once_keeps_the_node_identity(tmp_path: Path) -> None:
    old = tmp_path / "tailscaled.state"
    old.write_text(NODE_STATE)
    first = run(tmp_path)
    assert first["facts"]["moved_from"] == str(old)
    new = tmp_path / "new/state/tailscaled.state"
    assert new.read_text() == NODE_STATE
    assert new.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "new/state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "new/state/logs").stat().st_mode & 0o777 == 0o700
    assert not old.exists() and (tmp_path / "tailscaled.state.migrated").read_text() == NODE_STATE
    assert first["facts"]["tailscaled_args"] == [f"--statedir={tmp_path}/new/state", f"--state={new}"]
    assert first["facts"]["environment"] == {"TS_LOGS_DIR": f"{tmp_path}/new/state/logs"}
    second = run(tmp_path)
    assert second["changes"] == [] and second["facts"]["state_present"]


def test_newer_state_is_never_overwritten(tmp_path: Path) -> None:
    old = tmp_path / "var/lib/tailscale/tailscaled.state"
    old.parent.mkdir(parents=True)
    old.write_text("old node")
    new = tmp_path / "new/state/tailscaled.state"
    new.parent.mkdir(parents=True, mode=0o700)
    new.write_text("newer node")
    new.chmod(0o600)
    (tmp_path / "new/state/logs").mkdir(mode=0o700)
    out = run(tmp_path)
    assert out["both_exist"] == [str(old)]
    assert out["changes"] == []
    assert new.read_text() == "newer node" and old.read_text() == "old node"


def test_check_mode_reports_and_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "tailscaled.state").write_text(NODE_STATE)
    out = run(tmp_path, dry=True)
    assert f"move {tmp_path}/tailscaled.state" in out["changes"]
    assert f"mkdir {tmp_path}/new/state" in out["changes"]
    assert not (tmp_path / "new").exists() and (tmp_path / "tailscaled.state").exists()


def test_loose_modes_are_tightened(tmp_path: Path) -> None:
    run(tmp_path)
    (tmp_path / "new/state").chmod(0o755)
    out = run(tmp_path)
    assert out["changes"] == [f"chmod 0700 {tmp_path}/new/state"]
    assert (tmp_path / "new/state").stat().st_mode & 0o777 == 0o700


def test_error_and_cut_short_outputs_fail() -> None:
    with pytest.raises(AnsibleActionFail, match="cannot move /a to /b"):
        interpret("@@changes\nmove /a\n@@error\ncannot move /a to /b\n", "/s", "/s/logs")
    with pytest.raises(AnsibleActionFail, match="cut short"):
        interpret("@@changes\n", "/s", "/s/logs")


def run_backup(tmp: Path, backup: Path, *, dry: bool = False) -> tuple[dict[str, Any], str]:
    assert BUSYBOX is not None
    sd, logs = str(tmp / "new/state"), str(tmp / "new/state/logs")
    script = render(sd, logs, [], dry, backup=str(backup))
    proc = subprocess.run([BUSYBOX, "sh", "-c", script], capture_output=True, text=True, timeout=30, check=False)
    return interpret(proc.stdout, sd, logs), proc.stdout


def test_backup_is_restored_when_the_state_is_gone_then_kept_up_to_date(tmp_path: Path) -> None:
    # A firmware update wiped the root filesystem's state dir; the copy on the storage survived.
    backup = tmp_path / "onboard/state-backup/tailscaled.state"
    backup.parent.mkdir(parents=True)
    backup.write_text(NODE_STATE)
    dry, _log = run_backup(tmp_path, backup, dry=True)
    assert f"restore {backup}" in dry["changes"] and not (tmp_path / "new/state/tailscaled.state").exists()
    first, _log = run_backup(tmp_path, backup)
    new = tmp_path / "new/state/tailscaled.state"
    assert first["facts"]["restored_from"] == str(backup)
    assert new.read_text() == NODE_STATE and new.stat().st_mode & 0o777 == 0o600
    assert backup.read_text() == NODE_STATE
    # tailscaled changed its state: the copy follows, and that is no change of the device's configuration.
    new.write_text(NODE_STATE.replace("abc", "xyz"))
    second, _log = run_backup(tmp_path, backup)
    assert second["changes"] == [] and second["facts"]["backup_refreshed"]
    assert backup.read_text() == new.read_text()
    third, _log = run_backup(tmp_path, backup)
    assert third["changes"] == [] and not third["facts"]["backup_refreshed"]


def test_a_state_dir_on_fat_is_refused() -> None:
    with pytest.raises(AnsibleActionFail, match="in-memory store"):
        interpret("@@nomode\nvfat\n@@end\n", "/mnt/onboard/.tailscale/state", "/mnt/onboard/.tailscale/state/logs")


def sh(script: str) -> subprocess.CompletedProcess[str]:
    assert BUSYBOX is not None
    return subprocess.run([BUSYBOX, "sh", "-c", script], capture_output=True, text=True, timeout=60, check=False)


def test_state_dir_under_a_rootfs_staging_dir(tmp_path: Path) -> None:
    image = tmp_path / "image"
    (tmp_path / "tailscaled.state").write_text("not the image's")
    script = render(
        "/usrdata/tailscale/state",
        "/usrdata/tailscale/state/logs",
        [str(tmp_path / "tailscaled.state")],
        False,
        str(image),
    )
    info = interpret(sh(script).stdout, "/usrdata/tailscale/state", "/usrdata/tailscale/state/logs")
    assert (image / "usrdata/tailscale/state/logs").is_dir()
    assert (image / "usrdata/tailscale/state").stat().st_mode & 0o777 == 0o700
    # Nothing moves into an image, and the facts keep in-image paths.
    assert (tmp_path / "tailscaled.state").read_text() == "not the image's"
    assert info["facts"]["tailscaled_args"] == [
        "--statedir=/usrdata/tailscale/state",
        "--state=/usrdata/tailscale/state/tailscaled.state",
    ]
    assert info["changes"][0].startswith(f"mkdir {image}/usrdata")
