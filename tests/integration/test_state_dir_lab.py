"""state_dir on a lab kobo through the real telnet plugin, with the real tailscaled and the lab's headscale: the
seed's /tailscaled.state moves once and the daemon started on the new dir is the same node; a newer state is never
overwritten; check mode moves nothing."""

from __future__ import annotations

import contextlib
import json
import os
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

from provision_lab import run_site, wait_for  # noqa: E402

from fleetlab import control  # noqa: E402

KOBO = "pcs-kobo"
# On the root filesystem: tailscaled cannot keep its state on the FAT onboard (docs/profiles.md).
STATE = "/usr/local/fleetmesh-tailscale/state"
KOBO_BOOT = "/usr/local/fleetmesh-tailscale"  # the boot role's scripts on a kobo (udev profile)
NODES: set[int] = set()  # headscale nodes this module's kobo was, deleted in teardown


@pytest.fixture(scope="module")
def kobo() -> Iterator[Any]:
    lab.down(KOBO)
    try:
        yield lab.up(KOBO, "kobo")
    finally:
        for node_id in NODES:
            with contextlib.suppress(Exception):
                control.delete_node(node_id)
        lab.down(KOBO)


def sh_name(name: str, script: str) -> str:
    proc = lab.exec_(name, ["sh", "-c", script], timeout=120)
    return proc.stdout + proc.stderr


def sh(device: Any, script: str) -> str:
    return sh_name(device.name, script)


def status(device: Any) -> dict[str, Any]:
    return json.loads(sh(device, "tailscale status --json"))


def identity(device: Any) -> tuple[Any, str, str]:
    """(headscale node id, node key, machine key) of the running node."""
    assert wait_for(lambda: status(device)["BackendState"] == "Running"), sh(device, "tailscale status")
    key = status(device)["Self"]["PublicKey"]
    node = next((n for n in control.nodes() if n.get("node_key") == key), None)
    assert node is not None, f"headscale has no node with {key}"
    NODES.add(int(node["id"]))
    return node["id"], key, node["machine_key"]


def state(device: Any, path: str) -> dict[str, Any]:
    """tailscaled's state file: a JSON object of base64 values (_machinekey, _profiles, profile-XXXX, ...)."""
    return json.loads(sh(device, f"cat {path}"))


def test_seed_state_moves_once_and_keeps_the_node(kobo: Any, work: Path, mirror: str) -> None:
    first = run_site(kobo, work, mirror)
    assert first.rc == 0, first.output[-3000:]
    before = identity(kobo)
    # The blog's way of running it: state in a file at the root directory. site.yml started tailscaled (boot
    # role): stop it and put its state where the blog kept it.
    sh(kobo, f"{KOBO_BOOT}/tailscaled.ctl stop; mv {STATE}/tailscaled.state /tailscaled.state")
    old = state(kobo, "/tailscaled.state")
    assert "_machinekey" in old and "_current-profile" in old
    run = run_site(kobo, work, mirror)
    # The state moved once (state_dir) and the daemon started on it (boot).
    assert run.rc == 0 and run.changed == 2, run.output[-3000:]
    assert "move /tailscaled.state" in run.output
    assert sh(kobo, f"stat -c %a {STATE} {STATE}/tailscaled.state").split() == ["700", "600"]
    assert sh(kobo, "ls /tailscaled.state /tailscaled.state.migrated 2>&1").splitlines() == [
        "ls: /tailscaled.state: No such file or directory",
        "/tailscaled.state.migrated",
    ]
    # The daemon started on the new dir is the same node: same machine key in the state, same headscale node,
    # same node key, no new login.
    assert state(kobo, f"{STATE}/tailscaled.state")["_machinekey"] == old["_machinekey"]
    assert identity(kobo) == before
    again = run_site(kobo, work, mirror)
    assert again.rc == 0 and again.changed == 0, again.output[-3000:]


def test_newer_state_is_never_overwritten(kobo: Any, work: Path, mirror: str) -> None:
    current = state(kobo, f"{STATE}/tailscaled.state")
    before = identity(kobo)
    sh(kobo, "mkdir -p /var/lib/tailscale && echo other-node > /var/lib/tailscale/tailscaled.state")
    run = run_site(kobo, work, mirror)
    assert run.rc == 0 and run.changed == 0, run.output[-3000:]
    assert "state exists both at /var/lib/tailscale/tailscaled.state and in" in " ".join(run.output.split())
    assert state(kobo, f"{STATE}/tailscaled.state") == current
    assert sh(kobo, "cat /var/lib/tailscale/tailscaled.state").strip() == "other-node"
    assert identity(kobo) == before


def test_check_mode_moves_nothing(kobo: Any, work: Path, mirror: str) -> None:
    sh(kobo, f"{KOBO_BOOT}/tailscaled.ctl stop; mv {STATE}/tailscaled.state /tmp/keep.state")
    sh(kobo, "echo seed > /tailscaled.state")
    try:
        run = run_site(kobo, work, mirror, check=True)
        assert run.rc == 0 and run.changed >= 1, run.output[-3000:]
        assert "move /tailscaled.state" in run.output
        assert sh(kobo, "cat /tailscaled.state").strip() == "seed"
        assert "No such file" in sh(kobo, f"ls {STATE}/tailscaled.state 2>&1")
        assert "is running" not in sh(kobo, f"{KOBO_BOOT}/tailscaled.ctl status")  # nor started the daemon
    finally:
        sh(kobo, f"rm -f /tailscaled.state; mv /tmp/keep.state {STATE}/tailscaled.state")
        sh(kobo, f"{KOBO_BOOT}/boot.sh start </dev/null >/dev/null 2>&1")
