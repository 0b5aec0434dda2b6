"""tun_device action: its round trips, check mode and changed, with its scripts run for real under dash against a
fake root (its /proc/misc, /sys/class/misc and /dev/net are files in a temp dir; the planner is test_tun_plan.py's)."""

from __future__ import annotations

import shutil
import stat
import typing as t
from pathlib import Path

import action_harness
import pytest
from ansible.errors import AnsibleActionFail
from fake_tun_root import fake_insmod, fake_root, need, sh

# --- the action, its round trips, check mode and changed ----------------------------------------------------


class Device:
    """Runs the action's scripts under dash against a fake root; put_file copies into it."""

    def __init__(self, root: Path, path: str | None = None) -> None:
        self.root = root
        self.path = path
        self.scripts: list[str] = []
        self.uploads: list[str] = []

    def execute(self, cmd: str, sudoable: bool = False, executable: str | None = None) -> dict[str, t.Any]:
        del sudoable, executable
        self.scripts.append(cmd)
        cmd = cmd.replace("R=''", f"R='{self.root}'", 1)
        for dev_path in ("'/usrdata/", "'/mnt/"):
            cmd = cmd.replace(dev_path, f"'{self.root}/{dev_path[2:]}")
        out = sh(["dash"], cmd, self.path)
        return {"rc": out.returncode, "stdout": out.stdout, "stderr": out.stderr}

    def put_file(self, src: str, dest: str) -> None:
        self.uploads.append(dest)
        shutil.copy(src, f"{self.root}{dest}")  # fails like a real upload when the dir is missing


def run_action(device: Device, args: dict[str, t.Any], check: bool = False) -> dict[str, t.Any]:
    return action_harness.run_action("tun_device", device, args, check=check)


def test_action_check_mode_then_change_then_one_round_trip_no_op(tmp_path: Path) -> None:
    need(["dash"])
    device = Device(fake_root(tmp_path))
    checked = run_action(device, {}, check=True)
    assert checked["changed"] and checked["changes"] == ["mknod /dev/net/tun"]
    assert len(device.scripts) == 1 and not (device.root / "dev").exists()
    first = run_action(device, {})
    assert first["changed"] and first["ansible_facts"]["fleetmesh_networking"]["branch"] == "mknod"
    assert len(device.scripts) == 3
    second = run_action(device, {})
    facts = second["ansible_facts"]["fleetmesh_networking"]
    assert second["changed"] is False and len(device.scripts) == 4
    assert (facts["mode"], facts["branch"], facts["tailscaled_args"]) == ("kernel", "node", [])
    assert facts["boot_commands"] == first["ansible_facts"]["fleetmesh_networking"]["boot_commands"]


def test_action_module_upload_is_atomic_and_absent_removes_only_the_module(tmp_path: Path) -> None:
    need(["dash"])
    root = fake_root(tmp_path, misc=False)
    device = Device(root, fake_insmod(tmp_path, root, ok=True))
    ko = tmp_path / "tun.ko"
    ko.write_bytes(b"module bytes")
    args = {"mode": "kernel", "module_src": str(ko), "module_dest": "/usrdata/tailscale/tun.ko"}
    first = run_action(device, args)
    assert device.uploads == ["/usrdata/tailscale/tun.ko.fmtmp"]
    assert first["changes"][0] == "upload /usrdata/tailscale/tun.ko" and first["changed"]
    assert (root / "usrdata/tailscale/tun.ko").read_bytes() == b"module bytes"
    again = run_action(device, args)
    assert again["changed"] is False and device.uploads == ["/usrdata/tailscale/tun.ko.fmtmp"]
    gone = run_action(device, {"state": "absent", "module_dest": "/usrdata/tailscale/tun.ko"})
    assert gone["changed"] and not (root / "usrdata/tailscale/tun.ko").exists()
    assert stat.S_ISCHR((root / "dev/net/tun").stat().st_mode)  # /dev is left alone
    assert run_action(device, {"state": "absent", "module_dest": "/usrdata/tailscale/tun.ko"})["changed"] is False


def test_action_refuses_bad_input_before_touching_the_device(tmp_path: Path) -> None:
    device = Device(tmp_path)
    with pytest.raises(AnsibleActionFail, match="not a file on the controller"):
        run_action(device, {"module_src": str(tmp_path / "missing.ko"), "module_dest": "/x/tun.ko"})
    with pytest.raises(AnsibleActionFail, match="must be HOST:PORT"):
        run_action(device, {"mode": "userspace", "socks5_server": "1055"})
    assert device.scripts == []
