"""A firmware update (fleetlab.faults.firmware: root back to the image, user storage kept) on a provisioned Kobo and
QuecOpen module, with the real Tailscale and the lab's headscale.

Until the next site.yml run the device has no Tailscale of ours on its root (links, boot hook, init script went with
the old root) and says nothing misleading: no boot hook runs and fails, no tailscaled starts from a half-present
install, `tailscale` is not on PATH. The next run restores everything with the same node (the same headscale node
id and node key, from the tailscaled.state the storage kept), and the run after it changes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from provision_lab import NEW, release_mirror, run_site, stop_sessions, wait_for

from fleetlab import control, faults, lab

pytestmark = [pytest.mark.lab, pytest.mark.slow]

CASES = {
    # profile: (device name, its storage mount: what a firmware update keeps, the live tailscaled.state)
    "kobo": ("ft-fwk", "/mnt/onboard", "/usr/local/fleetmesh-tailscale/state/tailscaled.state"),
    "quecopen": ("ft-fwq", "/usrdata", "/usrdata/tailscale/state/tailscaled.state"),
}


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    work = tmp_path_factory.mktemp("firmware")
    with release_mirror(work / "mirror") as url:
        yield url, work


def sh(name: str, script: str) -> subprocess.CompletedProcess[str]:
    return lab.exec_(name, ["sh", "-c", script], timeout=120)


def status(name: str) -> dict[str, Any]:
    proc = sh(name, "tailscale status --json 2>/dev/null")
    try:
        return dict(json.loads(proc.stdout))
    except ValueError:
        return {}


def wait_running(name: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    state = status(name)
    while state.get("BackendState") != "Running" and time.monotonic() < deadline:
        time.sleep(1)
        state = status(name)
    return state


def stored_states(name: str, storage: str) -> dict[str, str]:
    """sha256 of every tailscaled.state (or a copy of it) on the storage mount, read on the device itself."""
    proc = sh(name, f"find {storage} -name 'tailscaled.state*' -type f -exec sha256sum {{}} +")
    return {line.split()[1]: line.split()[0] for line in proc.stdout.splitlines() if line.strip()}


def node_ids(hostname: str) -> list[int]:
    return sorted(int(n["id"]) for n in control.nodes() if n.get("name") == hostname)


@pytest.mark.parametrize(
    "profile",
    [
        "kobo",
        "quecopen",
    ],
)
def test_firmware_update_then_site_restores_the_same_node(profile: str, mirror: tuple[str, Path]) -> None:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (namespaces, mounts, veths)")
    url, work = mirror
    name, storage, live = CASES[profile]
    tmp = work / profile
    tmp.mkdir()
    lab.down(name)
    control.up()
    try:
        device = lab.up(name, profile, hostname=name)  # a hostname of ours: the nodes we forget are our own
        hostname = device.hostname
        control.forget([hostname])
        first = run_site(device, tmp, url)
        assert first.rc == 0, first.output[-3000:]
        before = wait_running(name)
        assert before.get("BackendState") == "Running", before
        key = before["Self"]["PublicKey"]
        ids = node_ids(hostname)
        assert len(ids) == 1, ids
        stop_sessions(tmp / "cp")

        # The kobo's state lives on / (FAT refuses tailscaled's chmod); its watchdog copies it to the FAT storage
        # within a 2 s tick of a change. quecopen keeps the state itself on /usrdata. Either way the storage must
        # hold the live state as it is now (the login's node key), not an earlier one.
        def kept_live() -> bool:
            digest = sh(name, f"sha256sum {live}").stdout.split()[:1]
            return bool(digest) and digest[0] in stored_states(name, storage).values()

        assert wait_for(kept_live, 20), (
            f"{storage} holds no copy of the live {live} within 20 s: a firmware update would lose the node: "
            f"{stored_states(name, storage)}"
        )
        kept = stored_states(name, storage)

        device = faults.firmware(name)
        assert stored_states(name, storage) == kept  # the storage kept the node state, byte for byte
        # Until the next run: nothing of ours on the root, nothing started, no boot hook that errs.
        probe = sh(name, "command -v tailscale; pidof tailscaled; ls /etc/init.d /etc/udev/rules.d 2>/dev/null")
        assert "tailscale" not in probe.stdout, probe.stdout
        udev_log = Path(device.dir) / "udev.log"
        assert "fleetmesh" not in (udev_log.read_text() if udev_log.exists() else ""), "a boot hook ran"

        again = run_site(device, tmp, url)
        assert again.rc == 0, again.output[-3000:]
        assert again.changed > 0
        after = wait_running(name)
        assert after.get("BackendState") == "Running", after
        assert after["Self"]["PublicKey"] == key  # the same node key: the kept state was used
        assert str(after.get("Version", "")).startswith(NEW)
        assert node_ids(hostname) == ids  # the same headscale node, no new registration
        third = run_site(device, tmp, url)
        assert third.rc == 0 and third.changed == 0, third.output[-3000:]
        # And it survives a power cycle like a fresh install: the boot hook is back.
        stop_sessions(tmp / "cp")
        lab.reboot(name)
        rebooted = wait_running(name)
        assert rebooted.get("BackendState") == "Running" and rebooted["Self"]["PublicKey"] == key
    finally:
        stop_sessions(tmp / "cp")
        lab.down(name)
        control.forget([name])
