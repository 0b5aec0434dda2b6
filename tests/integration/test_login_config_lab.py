"""login_mode config on a fresh lab device through site.yml, with the lab's auth key: the node ends logged in
(tailscaled's config file carries the prefs but never the key: AuthKey there would have to outlive the task), the
key is in no file on the device afterwards, and a second run changes nothing."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from provision_lab import fresh_device, release_mirror, run_site

from fleetlab.inventory import lab_auth_key

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
]

lab = pytest.importorskip("fleetlab.lab", reason="the fleetlab package (tests/lab) is not installed")

NAME = "fix-cfg1"
CONF = "/var/lib/tailscale/tailscaled.conf"


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Any]:
    with fresh_device(NAME, "sysvinit", tmp_path / "cp") as device:
        yield device


def sh(script: str) -> str:
    proc = lab.exec_(NAME, ["sh", "-c", script])
    return proc.stdout + proc.stderr


def test_config_mode_logs_a_fresh_node_in_without_the_key_in_any_file(fresh: Any, tmp_path: Path) -> None:
    variables = {"login_mode": "config", "login_hostname": "cfg-login"}
    with release_mirror(tmp_path / "mirror") as mirror:
        first = run_site(fresh, tmp_path, mirror, variables)
        assert first.rc == 0 and first.failed == 0, first.output[-4000:]
        status = json.loads(sh("tailscale status --json"))
        assert status["BackendState"] == "Running", status
        assert status["Self"]["HostName"] == "cfg-login"
        assert "--config=" + CONF in sh("cat /proc/$(cat /var/run/tailscaled.pid)/cmdline | tr '\\0' ' '")
        conf = json.loads(sh(f"cat {CONF}"))
        assert conf["Hostname"] == "cfg-login" and "AuthKey" not in conf
        key = lab_auth_key()
        assert sh(f"grep -rlF -- '{key}' /etc /var /tmp /root /usr/bin 2>/dev/null") == ""
        again = run_site(fresh, tmp_path, mirror, variables)
        assert again.rc == 0 and again.changed == 0, again.output[-4000:]
