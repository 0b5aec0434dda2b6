"""The systemd profile against real systemd-nspawn, systemd and sshd: boot state, ssh by the lab key, units, reboot
keeping /var/lib, and a `down` that leaves no process, mount, cgroup, netns or veth behind."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetlab import lab, netns, systemd_device
from fleetlab.state import DEVICES_DIR, Device, ProcRef

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths, cgroups)"),
    pytest.mark.skipif(
        shutil.which("systemd-nspawn") is None or shutil.which("debootstrap") is None,
        reason="needs Debian packages systemd-container and debootstrap",
    ),
]

NAME = "lt-sd"
OTHER = "lt-sd2"
GONE = "lt-sd3"


@pytest.fixture(scope="module")
def device() -> Iterator[Device]:
    systemd_device.prepare()  # debootstrap once (about a minute), cached afterwards
    lab.down(NAME)
    dev = lab.up(NAME, "systemd")
    yield dev
    lab.down(NAME)


def _ssh(dev: Device, command: str, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = systemd_device.ssh_cmd(dev)
    return subprocess.run(
        [*cmd[:-1], *extra, cmd[-1], command], check=False, capture_output=True, text=True, timeout=30
    )


def _sh(name: str, script: str) -> str:
    proc = lab.exec_(name, ["sh", "-c", script])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_boots_to_running(device: Device) -> None:
    state = _sh(NAME, "systemctl is-system-running || true")
    failed = _sh(NAME, "systemctl --failed --no-legend --plain")
    assert state == "running", f"system state {state}; failed units:\n{failed}"
    assert _sh(NAME, "cat /proc/1/comm") == "systemd"
    assert _sh(NAME, "stat -fc %T /sys/fs/cgroup") == "cgroup2fs"  # unified, like a real bookworm machine
    assert _sh(NAME, "hostname") == NAME
    assert f"inet {device.address}/15" in _sh(NAME, "ip -o -4 addr show eth0")


def test_ssh_with_lab_key_and_python3(device: Device) -> None:
    proc = _ssh(device, "hostname; python3 -c 'import sys; print(sys.version_info[0])'; id -u")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [NAME, "3", "0"]
    # The inventory drives Ansible over exactly this: key, port, pinned host key, python.
    assert device.extra["ansible_ssh_private_key_file"] == str(systemd_device.KEY)
    assert device.extra["ansible_python_interpreter"] == "/usr/bin/python3"


def test_root_login_without_key_is_refused(device: Device) -> None:
    proc = _ssh(device, "true", "-o", "PubkeyAuthentication=no", "-o", "PasswordAuthentication=yes")
    assert proc.returncode == 255
    assert "Permission denied" in proc.stderr


def test_systemctl_starts_a_unit(device: Device) -> None:
    unit = "[Service]\nExecStart=/bin/sleep 1000\n"
    lab.exec_(NAME, ["sh", "-c", "cat > /etc/systemd/system/lt-demo.service"], input=unit)
    _sh(NAME, "systemctl daemon-reload && systemctl start lt-demo.service")
    assert _sh(NAME, "systemctl is-active lt-demo.service") == "active"
    pid = int(_sh(NAME, "systemctl show -P MainPID lt-demo.service"))
    assert _sh(NAME, f"cat /proc/{pid}/comm") == "sleep"
    _sh(NAME, "systemctl stop lt-demo.service")
    assert lab.exec_(NAME, ["systemctl", "is-active", "lt-demo.service"]).stdout.strip() == "inactive"


def test_reboot_keeps_var_lib(device: Device) -> None:
    _sh(NAME, "mkdir -p /var/lib/lt && echo kept > /var/lib/lt/file && echo gone > /run/lt-volatile")
    before = Device.load(NAME)
    after = lab.reboot(NAME)
    assert before.init is not None and after.init is not None
    assert not before.init.alive() and after.init.alive()
    assert _sh(NAME, "cat /var/lib/lt/file") == "kept"
    assert _sh(NAME, "test -e /run/lt-volatile && echo there || echo absent") == "absent"
    assert after.extra["systemd"]["system_state"] == "running"
    assert _ssh(after, "cat /var/lib/lt/file").stdout.strip() == "kept"  # same host key: known_hosts still fits


def test_devices_are_independent(device: Device) -> None:
    lab.down(OTHER)
    try:
        other = lab.up(OTHER, "systemd")
        _sh(OTHER, "echo mine > /var/lib/lt-other")
        assert _sh(NAME, "test -e /var/lib/lt-other && echo there || echo absent") == "absent"
        assert _sh(OTHER, "hostname") == OTHER
        assert other.address != device.address
        assert other.init is not None and device.init is not None and other.init.pid != device.init.pid
    finally:
        lab.down(OTHER)
    assert _sh(NAME, "systemctl is-system-running") == "running"  # the other's down did not touch this one


def _mounts() -> str:
    return Path("/proc/self/mounts").read_text()


def test_down_leaves_nothing_behind() -> None:
    systemd_device.prepare()
    lab.down(GONE)
    dev = lab.up(GONE, "systemd")
    info = dev.extra["systemd"]
    refs = [ProcRef(**info["nspawn"]), ProcRef(**info["leader"])]
    assert all(ref.alive() for ref in refs)
    assert systemd_device._cgroup_pids(GONE)  # pylint: disable=protected-access
    lab.down(GONE)
    assert not any(ref.alive() for ref in refs)
    assert f"{DEVICES_DIR / GONE}" not in _mounts()
    assert not (DEVICES_DIR / GONE).exists()
    assert not netns.netns_exists(f"fleetlab-{GONE}")
    assert not netns.link_exists(f"flv-{GONE}")
    assert not any(p.exists() for p in systemd_device._cgroup_dirs(GONE))  # pylint: disable=protected-access
    lab.down(GONE)  # idempotent
