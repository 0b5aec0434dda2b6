"""`ansible-playbook playbooks/site.yml --check` on a lab device that was never provisioned: no tailscale binary and
no tailscaled to ask yet. The run succeeds, the login (and routing) steps say they would log in / apply prefs, and
nothing lands on the device."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from provision_lab import fresh_device, release_mirror, run_site

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
]

lab = pytest.importorskip("fleetlab.lab", reason="the fleetlab package (tests/lab) is not installed")

NAME = "fix-chk1"


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Any]:
    with fresh_device(NAME, "sysvinit", tmp_path / "cp") as device:
        yield device


def test_check_on_a_never_provisioned_device_says_it_would_log_in(fresh: Any, tmp_path: Path) -> None:
    listing = "ls /usr/bin/tailscale /usr/bin/tailscaled /etc/init.d 2>&1; ls /var/lib 2>&1"
    before = lab.exec_(NAME, ["sh", "-c", listing]).stdout
    with release_mirror(tmp_path / "mirror") as mirror:
        run = run_site(fresh, tmp_path, mirror, {"routing_routes": ["192.168.77.0/24"]}, check=True)
    assert run.rc == 0 and run.failed == 0, run.output[-4000:]
    # Both tailscale_prefs steps (login, then routing's advertise) say why they would change rather than fail.
    assert run.output.count("reason: /usr/bin/tailscale is not on the device yet") == 2, run.output[-4000:]
    assert lab.exec_(NAME, ["sh", "-c", listing]).stdout == before
