"""state_dir on a lab kobo through the real telnet plugin: the seed's /tailscaled.state moves once, keeping the node."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
]

lab = pytest.importorskip("fleetlab.lab", reason="the fleetlab package (tests/lab) is not installed")

from provision_lab import release_mirror, run_site, stop_sessions  # noqa: E402

KOBO = "pcs-kobo"
STATE = "/mnt/onboard/.tailscale/state"
# Userspace networking: this test is about state, not the firewall.


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("state-lab")
    yield path
    stop_sessions(path / "cp")


@pytest.fixture(scope="module")
def mirror(work: Path) -> Iterator[str]:
    with release_mirror(work / "mirror") as url:
        yield url


@pytest.fixture(scope="module")
def kobo() -> Iterator[Any]:
    lab.down(KOBO)
    yield lab.up(KOBO, "kobo")
    lab.down(KOBO)


def sh(device: Any, script: str) -> str:
    proc = lab.exec_(device.name, ["sh", "-c", script])
    return proc.stdout + proc.stderr


def test_seed_state_moves_once_and_keeps_the_node_key(kobo: Any, work: Path, mirror: str) -> None:
    first = run_site(kobo, work, mirror)
    assert first.rc == 0, first.output[-3000:]
    # The blog's way of running it: state in a file at the root directory. site.yml started tailscaled (boot
    # role): stop it and put its state where the blog kept it.
    sh(kobo, f"/usr/local/fleetmesh-tailscale/tailscaled.ctl stop; mv {STATE}/tailscaled.state /tailscaled.state")
    old = sh(kobo, "cat /tailscaled.state")
    assert "nodekey" in old
    run = run_site(kobo, work, mirror)
    # The state moved once (state_dir) and the daemon started on it (boot).
    assert run.rc == 0 and run.changed == 2, run.output[-3000:]
    assert sh(kobo, f"cat {STATE}/tailscaled.state") == old
    assert sh(kobo, f"stat -c %a {STATE} {STATE}/tailscaled.state").split() == ["700", "600"]
    assert sh(kobo, "ls /tailscaled.state /tailscaled.state.migrated 2>&1").splitlines() == [
        "ls: /tailscaled.state: No such file or directory",
        "/tailscaled.state.migrated",
    ]
    # The daemon started on the new dir is the same node.
    keys = [line for line in sh(kobo, f"cat {STATE}/tailscaled.state").splitlines() if "key" in line]
    assert keys and all(line in old for line in keys)
    again = run_site(kobo, work, mirror)
    assert again.rc == 0 and again.changed == 0


def test_newer_state_is_never_overwritten(kobo: Any, work: Path, mirror: str) -> None:
    current = sh(kobo, f"cat {STATE}/tailscaled.state")
    sh(kobo, "mkdir -p /var/lib/tailscale && echo other-node > /var/lib/tailscale/tailscaled.state")
    run = run_site(kobo, work, mirror)
    assert run.rc == 0 and run.changed == 0, run.output[-3000:]
    assert "state exists both at /var/lib/tailscale/tailscaled.state and in" in " ".join(run.output.split())
    assert sh(kobo, f"cat {STATE}/tailscaled.state") == current
    assert sh(kobo, "cat /var/lib/tailscale/tailscaled.state").strip() == "other-node"


def test_check_mode_moves_nothing(kobo: Any, work: Path, mirror: str) -> None:
    sh(kobo, f"mv {STATE}/tailscaled.state /tmp/keep.state; echo seed > /tailscaled.state")
    try:
        run = run_site(kobo, work, mirror, check=True)
        assert run.rc == 0 and run.changed >= 1, run.output[-3000:]
        assert sh(kobo, f"cat /tailscaled.state; ls {STATE}").split() == ["seed", "logs"]
    finally:
        sh(kobo, f"rm -f /tailscaled.state; mv /tmp/keep.state {STATE}/tailscaled.state")
