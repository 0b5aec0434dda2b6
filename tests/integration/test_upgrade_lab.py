"""playbooks/upgrade.yml on two lab boxes (sysvinit, amd64, the real Tailscale and the lab's headscale): the canary
goes first and, when its upgrade fails the health gate, is rolled back and the playbook stops before the batch; a
good release then goes through both, the canary first, each keeping its node.

The failing release is the newer one with a tailscaled that answers `--version` and exits at start
(provision_lab.broken_release). Headscale nodes made here are deleted in teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
]

lab = pytest.importorskip("fleetlab.lab", reason="the fleetlab package (tests/lab) is not installed")

from provision_lab import (  # noqa: E402
    NEW,
    OLD,
    broken_release,
    release_mirror,
    run_playbook,
    stop_sessions,
    tailscaled_wrapper,
    wait_for,
)

from fleetlab import control  # noqa: E402

CANARY, OTHER = "up-canary", "up-other"
STORE = "/opt/tailscale"
BAD = "1.99.3"


@pytest.fixture(scope="module")
def boxes() -> Iterator[dict[str, Any]]:
    for name in (CANARY, OTHER):
        lab.down(name)
    devices = {name: lab.up(name, "sysvinit") for name in (CANARY, OTHER)}
    try:
        yield devices
    finally:
        for name in devices:
            with contextlib.suppress(Exception):
                control.delete_node(int(status(name)["Self"]["ID"]))
            lab.down(name)


def sh(name: str, script: str) -> str:
    proc = lab.exec_(name, ["sh", "-c", script], timeout=120)
    return proc.stdout + proc.stderr


def status(name: str) -> dict[str, Any]:
    return json.loads(sh(name, "tailscale status --json"))


def node(name: str) -> tuple[str, str]:
    """(the daemon's version, its node key) once it is Running."""
    assert wait_for(lambda: status(name)["BackendState"] == "Running"), sh(name, "tailscale status")
    st = status(name)
    return st["Version"].split("-")[0], st["Self"]["PublicKey"]


def upgrade(boxes: dict[str, Any], work: Path, mirror: str, **extra: Any) -> tuple[int, str, dict, float]:
    """upgrade.yml with extra as -e (the play keywords serial and max_fail_percentage see no host vars)."""
    groups = {"canary": [boxes[CANARY]], "fleet": [boxes[OTHER]]}
    started = time.monotonic()
    rc, out, recaps = run_playbook(groups, work, mirror, playbook="upgrade.yml", cli_vars=extra)
    seconds = time.monotonic() - started
    stop_sessions(work / "cp")
    print(f"upgrade.yml {extra}: rc {rc}, {seconds:.1f} s, {recaps}")
    return rc, out, recaps, seconds


def test_a_failing_canary_stops_the_fleet_then_a_good_release_goes_through(
    boxes: dict[str, Any], work: Path, mirror: str
) -> None:
    rc, out, recaps = run_playbook(
        {"canary": [boxes[CANARY]], "fleet": [boxes[OTHER]]}, work, mirror, {"binary_version": OLD}
    )
    stop_sessions(work / "cp")
    assert rc == 0 and all(r["failed"] == 0 for r in recaps.values()), out[-3000:]
    before = {name: node(name) for name in (CANARY, OTHER)}
    assert {v for v, _key in before.values()} == {OLD}
    other_pid = sh(OTHER, "cat /var/run/tailscaled.pid").strip()

    with release_mirror(work / "bad-mirror") as bad_mirror:
        broken_release(work / "bad-mirror", BAD, "amd64", tailscaled_wrapper(BAD, "echo 'fails at start' >&2; exit 1"))
        rc, out, recaps, _s = upgrade(boxes, work, bad_mirror, binary_version=BAD, binary_health_timeout=20)
    assert rc != 0, out[-3000:]
    assert recaps[CANARY]["failed"] == 1 and f"rolled back to tailscale {OLD} (from {BAD}" in out, out[-3000:]
    # The batch never started: the other box was not contacted, its daemon is the same process on the old version.
    assert OTHER not in recaps and f"[{OTHER}]" not in out, out[-3000:]
    assert sh(OTHER, "cat /var/run/tailscaled.pid").strip() == other_pid
    assert node(CANARY) == before[CANARY] and node(OTHER) == before[OTHER]
    assert sh(CANARY, f"readlink {STORE}/current").strip() == f"{STORE}/{OLD}"

    rc, out, recaps, seconds = upgrade(boxes, work, mirror, binary_version=NEW, upgrade_batch=1)
    assert rc == 0 and all(r["failed"] == 0 for r in recaps.values()), out[-3000:]
    # The canary's wave (up to its health gate) came before anything ran on the other box.
    gate = out.index("Wait for tailscaled to be back as the node it was")
    assert out.index(f"[{CANARY}]") < gate < out.index(f"[{OTHER}]"), out[-3000:]
    for name in (CANARY, OTHER):
        assert node(name) == (NEW, before[name][1])
        assert sh(name, f"ls {STORE}").split().count(OLD) == 0  # removed once the new one passed
        assert BAD not in sh(name, f"ls {STORE}").split()  # the failed one too, on the canary
    print(f"canary run figures: good upgrade of 1 canary + 1 batch of 1 in {seconds:.1f} s")
    rc, out, recaps, _s = upgrade(boxes, work, mirror, binary_version=NEW, upgrade_batch=1)
    assert rc == 0 and all(r["changed"] == 0 for r in recaps.values()), out[-3000:]
