"""ip_forwarding action: read before write, only the families asked for, persisted files that parse."""

from __future__ import annotations

import shutil
import subprocess
import typing as t
from pathlib import Path

import action_harness
import pytest
from ansible.errors import AnsibleActionFail
from ansible_collections.fleetmesh.tailscale.plugins.action.ip_forwarding import rc_script_text, sysctl_file_text


class Device:
    def __init__(self, v4: str, v6: str, file_text: str = "", rootopts: str = "rw,relatime") -> None:
        self.values = {4: v4, 6: v6}
        self.rootopts = rootopts
        self.file_text = file_text
        self.scripts: list[str] = []

    def execute(self, cmd: str, sudoable: bool = False, executable: str | None = None) -> dict[str, t.Any]:
        del sudoable, executable
        self.scripts.append(cmd)
        if cmd.startswith("set -e"):
            return {"rc": 0, "stdout": "", "stderr": ""}
        out = ""
        for fam in (4, 6):
            if f"@@v{fam}" in cmd:
                out += f"@@v{fam}\n{self.values[fam]}\n"
        if "@@rootopts" in cmd:
            out += f"@@rootopts\n{self.rootopts}\n"
        if "@@file" in cmd:
            out += f"@@file\n{self.file_text}"
        return {"rc": 0, "stdout": out + "@@end\n", "stderr": ""}


def run(device: Device, args: dict[str, t.Any], check: bool = False) -> dict:
    return action_harness.run_action("ip_forwarding", device, args, check=check)


def test_only_the_family_that_is_off_gets_written() -> None:
    device = Device("0", "1")
    result = run(device, {"families": [4, 6]})
    assert result["changed"] and result["enabled"] == ["net.ipv4.ip_forward"]
    write = device.scripts[-1]
    assert "echo 1 > /proc/sys/net/ipv4/ip_forward" in write
    assert "ipv6" not in write


def test_already_on_and_persisted_is_one_read_and_no_change() -> None:
    device = Device("1", "0", sysctl_file_text([4]))
    result = run(device, {"families": [4], "persist": "sysctl_file"})
    assert result["changed"] is False and len(device.scripts) == 1
    assert "ipv6" not in device.scripts[0]  # the v6 sysctl is not even read when no v6 route exists


def test_check_mode_reads_only() -> None:
    device = Device("0", "0")
    assert run(device, {"families": [4, 6], "persist": "rc_script"}, check=True)["changed"]
    assert len(device.scripts) == 1


def test_rc_script_is_checked_with_sh_n_before_it_goes_live() -> None:
    device = Device("1", "1")
    run(device, {"families": [6], "persist": "rc_script", "rc_links": ["/etc/rc5.d/S01fleetmesh-ipforward"]})
    write = device.scripts[-1]
    assert write.index("sh -n") < write.index("mv -f")
    assert "ln -sf '../init.d/fleetmesh-ipforward' '/etc/rc5.d/S01fleetmesh-ipforward'" in write


def test_unreadable_sysctl_and_bad_family_fail_clearly() -> None:
    with pytest.raises(AnsibleActionFail, match="cannot read /proc/sys/net/ipv6/conf/all/forwarding"):
        run(Device("1", "cat: can't open: No such file"), {"families": [6]})
    with pytest.raises(AnsibleActionFail, match="not IP versions"):
        run(Device("1", "1"), {"families": [5]})


@pytest.mark.parametrize("shell", ["dash", "busybox"])
def test_rendered_rc_script_parses_and_sets_only_its_families(shell: str, tmp_path: Path) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} not installed")
    script = tmp_path / "fwd"
    script.write_text(rc_script_text([4, 6]))
    argv = [shell, "sh"] if shell == "busybox" else [shell]
    assert subprocess.run([*argv, "-n", str(script)], check=False).returncode == 0
    assert "ipv4/ip_forward" in script.read_text() and "ipv6/conf/all/forwarding" in script.read_text()
    assert "ipv6" not in rc_script_text([4])


def test_read_only_root_is_remounted_for_the_write_only_when_allowed() -> None:
    device = Device("0", "0", rootopts="ro,relatime")
    args = {"families": [4], "persist": "rc_script", "rc_links": ["/etc/rc5.d/S01fleetmesh-ipforward"]}
    with pytest.raises(AnsibleActionFail, match="/ is mounted read-only"):
        run(device, args)
    assert len(device.scripts) == 1  # refused before any write, the sysctl included
    run(device, {**args, "remount_rw": True})
    write = device.scripts[-1]
    assert write.index("mount -o remount,rw /") < write.index("mv -f")
    assert "trap 'sync; mount -o remount,ro /' EXIT" in write
