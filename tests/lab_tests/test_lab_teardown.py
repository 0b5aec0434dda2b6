"""`fleetlab down --all` leaves no namespace, veth, mount, file or process (devices, mirror) of the lab behind."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

from fleetlab import control, lab, netns
from fleetlab.state import BRIDGE, DEVICES_DIR, RUN_DIR, device_names

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
]


def _lab_mounts() -> list[str]:
    with open("/proc/mounts") as fh:
        return [line for line in fh if "fleetlab" in line]


def foreign_control(session_owns_control: bool) -> bool:
    """The control plane is up and is not this test session's (someone's `fleetlab control up` before it)."""
    return (RUN_DIR / "control-headscale.json").exists() and not session_owns_control


def test_down_all_removes_everything(lab_control_plane: bool) -> None:
    foreign = [n for n in device_names() if not n.startswith("lt-")]
    if foreign:
        pytest.skip(f"other lab devices are running ({', '.join(foreign)}): down --all would destroy them")
    if (RUN_DIR / "mirror.json").exists():
        pytest.skip("a lab mirror is running for someone else: down --all would stop it")
    if foreign_control(lab_control_plane):
        pytest.skip("the lab's control plane is running for someone else: down --all would stop it")
    # One this session started goes with down --all; the next module that needs it starts it again.
    mirror_pids = []
    if importlib.util.find_spec("fleetlab.mirror") is not None:
        lab.mirror("start")
        mirror_pids.append(json.loads((RUN_DIR / "mirror.json").read_text())["pid"])
    a = lab.up("lt-td1", "sysvinit")
    b = lab.up("lt-td2", "sysvinit")
    # A process started inside the device (not by init) must die too.
    stray = subprocess.Popen(["fleetlab", "exec", "lt-td2", "--", "sleep", "1000"], start_new_session=True)
    for _attempt in range(100):
        if "sleep 1000" in lab.exec_("lt-td2", ["ps"]).stdout:
            break
    assert "sleep 1000" in lab.exec_("lt-td2", ["ps"]).stdout
    pids = [ref.pid for d in (a, b) for ref in (d.init, d.launcher) if ref is not None] + mirror_pids
    assert all(Path(f"/proc/{p}").exists() for p in pids)
    assert _lab_mounts() and netns.lab_netns() and BRIDGE in netns.lab_links()

    lab.down_all()
    lab.down_all()  # idempotent

    lab.wait_gone(pids)
    assert stray.wait(timeout=5) != 0  # killed with its device
    assert [p for p in pids if Path(f"/proc/{p}").exists()] == []
    assert netns.lab_netns() == []
    assert netns.lab_links() == []
    assert "fleetlab" not in subprocess.run(["ip", "netns", "list"], check=False, capture_output=True, text=True).stdout
    assert "flv-" not in subprocess.run(["ip", "-o", "link"], check=False, capture_output=True, text=True).stdout
    assert _lab_mounts() == []
    assert list(DEVICES_DIR.glob("*")) == []


def test_down_is_idempotent_for_unknown_device() -> None:
    lab.down("lt-never")
    assert not (DEVICES_DIR / "lt-never").exists()


def test_last_down_removes_the_bridge_and_mirror_status_reads_records(lab_control_plane: bool) -> None:
    """The bridge (and 198.18.0.1 with it) goes when the last thing the lab recorded goes; the mirror's status is
    read from its record (a dead recorded pid is "not running"), never by connecting to its address."""
    if device_names() or (RUN_DIR / "mirror.json").exists() or foreign_control(lab_control_plane):
        pytest.skip("other lab devices, a mirror or someone else's control plane are running: the bridge is theirs too")
    control.down()  # this session's own, if an earlier module started it: it holds the bridge too
    lab.up("lt-br1", "sysvinit")
    lab.up("lt-br2", "sysvinit")
    assert BRIDGE in netns.lab_links()
    lab.down("lt-br1")
    assert BRIDGE in netns.lab_links()  # lt-br2 still uses it
    lab.down("lt-br2")
    assert BRIDGE not in netns.lab_links()

    assert lab.mirror_status() is None
    lab.mirror("start")
    try:
        assert lab.mirror_status() == "http://198.18.0.1:8080"
        assert BRIDGE in netns.lab_links()
        record = json.loads((RUN_DIR / "mirror.json").read_text())
        stale = dict(record, starttime=record["starttime"] + 1)  # same pid, another process: not the mirror
        (RUN_DIR / "mirror.json").write_text(json.dumps(stale))
        assert lab.mirror_status() is None
        (RUN_DIR / "mirror.json").write_text(json.dumps(record))
    finally:
        lab.mirror("stop")
    assert lab.mirror_status() is None
    assert BRIDGE not in netns.lab_links()
    cli = subprocess.run(["fleetlab", "mirror", "status"], check=False, capture_output=True, text=True)
    assert (cli.returncode, cli.stdout.strip()) == (3, "not running")
