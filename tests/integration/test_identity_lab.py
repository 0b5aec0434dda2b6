"""A node keeps its identity through what provisioning does to it: the same headscale node (id and machine key) and
the same node key after an upgrade from the older to the newer release, a `fleetlab reboot` (the boot integration
starts tailscaled again), a rollback from a release whose tailscaled fails its check, and the state_dir role moving
the state from an old path. The real Tailscale builds (fleetlab.tailscale_release) and the lab's headscale.

A sysvinit box (amd64) goes through all of it in file order (module-scoped); a kobo (armv7l under qemu-user, udev
boot hook) does the upgrade. Headscale nodes made here are deleted in teardown.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
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

from provision_lab import NEW, OLD, release_mirror, run_site, stop_sessions, wait_for  # noqa: E402

from fleetlab import control  # noqa: E402

SV = "id-sv"
KOBO = "id-kobo"
STORE = "/opt/tailscale"  # the sysvinit profile's storage dir
PIDFILE = "/var/run/tailscaled.pid"
# A third release, newer than both, whose tailscaled is cut short: it cannot run `--version` on the device.
BROKEN = "1.99.0"
MOVED_STATE_DIR = "/data/tailscale"
NODES: set[int] = set()  # headscale nodes the module's devices were, deleted in teardown


def _device(name: str, profile: str) -> Iterator[Any]:
    lab.down(name)
    try:
        yield lab.up(name, profile)
    finally:
        with contextlib.suppress(Exception):
            NODES.add(int(status(name)["Self"]["ID"]))
        for node_id in sorted(NODES):
            with contextlib.suppress(Exception):
                control.delete_node(node_id)
        lab.down(name)


@pytest.fixture(scope="module")
def sysvinit() -> Iterator[Any]:
    yield from _device(SV, "sysvinit")


@pytest.fixture(scope="module")
def kobo() -> Iterator[Any]:
    yield from _device(KOBO, "kobo")


def sh(name: str, script: str) -> str:
    proc = lab.exec_(name, ["sh", "-c", script], timeout=120)
    return proc.stdout + proc.stderr


def status(name: str) -> dict[str, Any]:
    return json.loads(sh(name, "tailscale status --json"))


def identity(name: str) -> dict[str, Any]:
    """The node as the device and headscale know it, once it is Running."""
    assert wait_for(lambda: status(name)["BackendState"] == "Running"), sh(name, "tailscale status")
    key = status(name)["Self"]["PublicKey"]
    node = next((n for n in control.nodes() if n.get("node_key") == key), None)
    assert node is not None, f"headscale has no node with {key}"
    NODES.add(int(node["id"]))
    return {"node_id": node["id"], "node_key": key, "machine_key": node["machine_key"], "name": node["name"]}


def daemon(name: str) -> tuple[str, str, list[str]]:
    """tailscaled's pid, the binary it runs (/proc/PID/exe) and its flags."""
    pid = sh(name, f"cat {PIDFILE}").strip()
    exe = sh(name, f"readlink /proc/{pid}/exe").strip()
    words = [w for w in sh(name, f"tr '\\0' '\\n' < /proc/{pid}/cmdline").split("\n") if w]
    return pid, exe, words[1:]


def version(name: str) -> str:
    return sh(name, "tailscale version").splitlines()[0]


def site(device: Any, work: Path, mirror: str, **extra: Any) -> Any:
    run = run_site(device, work, mirror, extra)
    assert run.rc == 0 and run.failed == 0, run.output[-4000:]
    return run


def test_upgrade_from_the_older_release_keeps_the_node(sysvinit: Any, work: Path, mirror: str) -> None:
    site(sysvinit, work, mirror, binary_version=OLD)
    assert version(SV) == OLD and status(SV)["Version"].startswith(OLD)
    before = identity(SV)
    old_pid, old_exe, _flags = daemon(SV)
    assert old_exe == f"{STORE}/{OLD}/tailscaled"
    site(sysvinit, work, mirror)  # binary_version: the collection's default, the newer release
    # The CLI and the daemon are the new release: the boot role restarted tailscaled onto it.
    assert version(SV) == NEW and status(SV)["Version"].startswith(NEW)
    pid, exe, _flags = daemon(SV)
    assert pid != old_pid and exe == f"{STORE}/{NEW}/tailscaled"
    listing = sh(SV, f"ls {STORE}").split()
    assert NEW in listing and OLD not in listing  # the old version is gone
    assert identity(SV) == before
    again = run_site(sysvinit, work, mirror)
    assert again.rc == 0 and again.changed == 0, again.output[-3000:]


def test_reboot_keeps_the_node(sysvinit: Any, work: Path) -> None:
    before = identity(SV)
    _pid, exe, flags = daemon(SV)
    lab.reboot(SV)
    stop_sessions(work / "cp")  # their telnet connections died with the box
    # rc5.d's link to the boot role's init script starts tailscaled again, same binary, same flags, same node.
    assert wait_for(lambda: status(SV)["BackendState"] == "Running"), sh(SV, "tailscale status")
    assert daemon(SV)[1:] == (exe, flags)
    assert identity(SV) == before


def broken_release(mirror_root: Path, version: str, arch: str) -> Path:
    """tailscale_<version>_<arch>.tgz made from the newer release: tailscale intact, tailscaled cut after 64 KiB
    (it fails `--version` on the device), with its published .sha256 (the controller's checks all pass)."""
    src = mirror_root / "stable" / f"tailscale_{NEW}_{arch}.tgz"
    dest = mirror_root / "stable" / f"tailscale_{version}_{arch}.tgz"
    with tarfile.open(src) as tar_in, tarfile.open(dest, "w:gz") as tar_out:
        for member in tar_in.getmembers():
            data = tar_in.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            member.name = member.name.replace(f"tailscale_{NEW}_{arch}", f"tailscale_{version}_{arch}", 1)
            if data is not None and member.name.endswith("/tailscaled"):
                data = data[:65536]
                member.size = len(data)
            tar_out.addfile(member, io.BytesIO(data) if data is not None else None)
    dest.with_name(dest.name + ".sha256").write_text(hashlib.sha256(dest.read_bytes()).hexdigest() + "\n")
    return dest


def test_rollback_from_a_release_that_fails_its_check_keeps_the_node(sysvinit: Any, work: Path) -> None:
    before = identity(SV)
    pid, exe, flags = daemon(SV)
    with release_mirror(work / "broken-mirror") as broken:
        broken_release(work / "broken-mirror", BROKEN, "amd64")
        run = run_site(sysvinit, work, broken, {"binary_version": BROKEN})
    assert run.rc != 0 and run.failed == 1
    assert "verification failed, previous state restored" in run.output, run.output[-3000:]
    # The device keeps running the previous release: not restarted, same binary, same node.
    assert daemon(SV) == (pid, exe, flags)
    assert version(SV) == NEW and sh(SV, f"readlink {STORE}/current").strip() == f"{STORE}/{NEW}"
    assert BROKEN not in sh(SV, f"ls -a {STORE}")
    assert identity(SV) == before


def test_state_relocation_keeps_the_node(sysvinit: Any, work: Path, mirror: str) -> None:
    before = identity(SV)
    old_state = "/var/lib/tailscale/tailscaled.state"
    # The state dir moves to the data partition: the state_dir role moves the state file there (the default
    # state_dir_old_paths name the old one) while tailscaled runs on it; the boot role restarts it on the new dir.
    moved = {"state_dir_path": MOVED_STATE_DIR}
    run = site(sysvinit, work, mirror, **moved)
    assert f"move {old_state}" in run.output
    assert sh(SV, f"ls {old_state} {old_state}.migrated 2>&1").splitlines() == [
        f"ls: {old_state}: No such file or directory",
        f"{old_state}.migrated",
    ]
    assert sh(SV, f"stat -c %a {MOVED_STATE_DIR} {MOVED_STATE_DIR}/tailscaled.state").split() == ["700", "600"]
    assert f"--statedir={MOVED_STATE_DIR}" in daemon(SV)[2]
    assert identity(SV) == before
    # The old daemon did not write the old path again before it stopped: nothing left to move or warn about.
    again = run_site(sysvinit, work, mirror, moved)
    assert again.rc == 0 and again.changed == 0, again.output[-3000:]
    assert "state exists both" not in again.output
    assert identity(SV) == before


def test_kobo_upgrade_keeps_the_node(kobo: Any, work: Path, mirror: str) -> None:
    site(kobo, work, mirror, binary_version=OLD)
    assert version(KOBO) == OLD
    before = identity(KOBO)
    site(kobo, work, mirror)
    assert version(KOBO) == NEW
    assert wait_for(lambda: status(KOBO)["Version"].startswith(NEW))
    assert identity(KOBO) == before
