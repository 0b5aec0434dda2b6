"""The lab's field-device traits (issue 15): a FAT onboard (fusefat) with FAT's limits that survives reboot, a late
mount, no /var/run, a MOTD with a coloured prompt behind a password login, no base64 applet."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from fleetlab import lab
from fleetlab.rawtelnet import RawTelnet
from fleetlab.state import Device

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
]

NAME = "fd-traits"


def sh(script: str) -> str:
    proc = lab.exec_(NAME, ["sh", "-c", script])
    return proc.stdout + proc.stderr


@pytest.fixture
def kobo() -> Iterator[Device]:
    lab.down(NAME)
    try:
        yield lab.up(
            NAME, "kobo", arch="amd64", late_mount=3, no_var_run=True, motd=True, password="fd-pw-1", no_base64=True
        )
    finally:
        lab.down(NAME)


def test_fat_onboard_late_mount_and_the_other_traits(kobo: Device) -> None:
    # Late mount: right after boot /mnt/onboard is a bare directory, a few seconds later the FAT image.
    assert " /mnt/onboard " not in sh("cat /proc/mounts")
    deadline = time.monotonic() + 20
    while " /mnt/onboard " not in sh("cat /proc/mounts") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "fuse.fusefat" in sh("grep ' /mnt/onboard ' /proc/mounts")
    # FAT: no chmod, no symlinks, one mode for all, case-insensitive.
    proc = lab.exec_(
        NAME, ["sh", "-c", "cd /mnt/onboard && echo a > Keep; chmod 600 Keep; ln -s Keep l; stat -c %a Keep; cat KEEP"]
    )
    assert proc.stderr.count("Function not implemented") == 2, proc.stderr
    assert proc.stdout.split() == ["700", "a"], proc.stdout
    assert "No such file" in sh("ls -d /var/run 2>&1")
    assert sh("command -v base64 || echo none").strip() == "none"
    assert "begin-base64" in sh("echo hi | uuencode -m x")
    # The FAT image keeps what was written across a power cycle (fusefat writes back before the reboot).
    lab.reboot(NAME)
    deadline = time.monotonic() + 20
    while " /mnt/onboard " not in sh("cat /proc/mounts") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sh("cat /mnt/onboard/keep").strip() == "a"
    # Password login, MOTD, coloured prompt.
    with RawTelnet(kobo.address) as tn:
        tn.read_until(b"login: ")
        tn.send_line("root")
        tn.read_until(b"Password: ")
        tn.send_line("fd-pw-1")
        greeting = tn.read_until(b"\x1b[0m")
        assert b"Unauthorised access prohibited" in greeting and b"\x1b[1;32m" in greeting
