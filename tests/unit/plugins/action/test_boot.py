"""boot's service step, run for real under busybox ash: start and wait for the socket, restart once, fail fast
with the log's tail when the daemon dies."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from ansible_collections.fleetmesh.tailscale.plugins.action.boot import service_script
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_script import parse_sections

BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="busybox (Debian busybox-static) is not installed")


def sh(script: str) -> subprocess.CompletedProcess[str]:
    assert BUSYBOX is not None
    return subprocess.run([BUSYBOX, "sh", "-c", script], capture_output=True, text=True, timeout=60, check=False)


def service(tmp: Path, daemon: str) -> dict[str, str]:
    """A pid-file daemon like the init scripts': `daemon` runs in the background, the socket is a file it makes."""
    pf, sock, log = tmp / "pid", tmp / "sock", tmp / "log"
    return {
        "running": f'[ -s {pf} ] && kill -0 "$(cat {pf})" 2>/dev/null',
        # Detached like start-stop-daemon -b or setsid: not a child of the checking shell.
        "start": f"( ( {daemon} ) >>{log} 2>&1 </dev/null & echo $! > {pf} )",
        "stop": f'kill "$(cat {pf})"; rm -f {pf} {sock}',
        "wait_path": str(sock),
        "log": str(log),
    }


def test_start_waits_for_the_socket_then_a_restart_gives_a_new_daemon(tmp_path: Path) -> None:
    svc = service(tmp_path, f"sleep 0.5; touch {tmp_path}/sock; exec sleep 30")
    done = sh(service_script(svc, restart=False, wait_timeout=10) + "echo @@end\n")
    sec = parse_sections(done.stdout)
    assert "failed" not in sec and "started" in sec["service"]
    assert (tmp_path / "sock").exists()
    first = (tmp_path / "pid").read_text()
    done = sh(service_script(svc, restart=True, wait_timeout=10) + "echo @@end\n")
    sec = parse_sections(done.stdout)
    assert "failed" not in sec and sec["service"].split() == ["stopped", "started"]
    assert (tmp_path / "pid").read_text() != first
    sh(svc["stop"])


def test_a_daemon_that_dies_fails_fast_with_its_log(tmp_path: Path) -> None:
    svc = service(tmp_path, 'echo "getLocalBackend error: createEngine: no iptables"; exit 1')
    start = time.monotonic()
    done = sh(service_script(svc, restart=False, wait_timeout=30) + "echo @@end\n")
    sec = parse_sections(done.stdout)
    assert time.monotonic() - start < 15  # not the 30 s timeout
    assert sec["failed"] == "not running after its start"
    assert "createEngine: no iptables" in sec["log"]
