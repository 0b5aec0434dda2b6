"""binary role on lab devices through the real connection plugins: install, no-op, upgrade, rollback, refusals.

Each test module makes its own devices and removes them in teardown; the release mirror is a loopback stand-in.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
]

lab = pytest.importorskip("fleetlab.lab", reason="the fleetlab package (tests/lab) is not installed")

from provision_lab import mirror_stats, release_mirror, run_site, stop_sessions  # noqa: E402

KOBO = "pcb-kobo"
SV = "pcb-sv"
STORE = "/mnt/onboard/.tailscale"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("binary-lab")
    yield path
    stop_sessions(path / "cp")


@pytest.fixture(scope="module")
def mirror(work: Path) -> Iterator[str]:
    with release_mirror(work / "mirror") as url:
        yield url


def _device(name: str, profile: str) -> Iterator[Any]:
    lab.down(name)
    yield lab.up(name, profile)
    lab.down(name)


@pytest.fixture(scope="module")
def kobo() -> Iterator[Any]:
    yield from _device(KOBO, "kobo")


@pytest.fixture(scope="module")
def sysvinit() -> Iterator[Any]:
    yield from _device(SV, "sysvinit")


def sh(device: Any, script: str) -> str:
    proc = lab.exec_(device.name, ["sh", "-c", script])
    return proc.stdout + proc.stderr


def test_kobo_fresh_install_then_noop(kobo: Any, work: Path, mirror: str) -> None:
    first = run_site(kobo, work, mirror, {"binary_version": "1.80.3"})
    assert first.rc == 0, first.output[-3000:]
    assert first.changed >= 1 and first.puts >= 2
    # armv7l got the arm build, linked into PATH through the stable `current` link.
    assert "tailscale_1.80.3_arm.tgz" in str(mirror_stats(mirror)["paths"])
    assert sh(kobo, f"readlink {STORE}/current; readlink /usr/bin/tailscaled").split() == [
        f"{STORE}/1.80.3",
        f"{STORE}/current/tailscaled",
    ]
    assert sh(kobo, "tailscaled --version").startswith("1.80.3")
    downloads = mirror_stats(mirror)["paths"]["/stable/tailscale_1.80.3_arm.tgz"]
    second = run_site(kobo, work, mirror, {"binary_version": "1.80.3"})
    assert second.rc == 0 and second.changed == 0, second.output[-3000:]
    assert second.puts == 0
    assert mirror_stats(mirror)["paths"]["/stable/tailscale_1.80.3_arm.tgz"] == downloads


def test_kobo_upgrade_switches_and_drops_the_old_version(kobo: Any, work: Path, mirror: str) -> None:
    run = run_site(kobo, work, mirror, {"binary_version": "1.82.0"})
    assert run.rc == 0 and run.changed >= 1, run.output[-3000:]
    assert sh(kobo, "tailscaled --version").startswith("1.82.0")
    assert sh(kobo, f"ls {STORE}").split() == ["1.82.0", "current", "iptables", "state"]


def test_kobo_failed_version_check_rolls_back(kobo: Any, work: Path, mirror: str) -> None:
    # An amd64 build under a neutral name passes the controller's name check; the device must catch it.
    foreign = work / "custom-build.tgz"
    foreign.write_bytes((work / "mirror/stable/tailscale_1.80.3_amd64.tgz").read_bytes())
    run = run_site(kobo, work, mirror, {"binary_version": "1.80.3", "binary_src": str(foreign)})
    assert run.rc != 0 and run.failed == 1
    assert "verification failed, previous state restored" in run.output
    assert "Exec format error" in run.output
    assert sh(kobo, f"readlink {STORE}/current; ls {STORE}").split() == [
        f"{STORE}/1.82.0",
        "1.82.0",
        "current",
        "iptables",
        "state",
    ]
    assert sh(kobo, "tailscaled --version").startswith("1.82.0")


def test_kobo_wrong_arch_tarball_is_refused(kobo: Any, work: Path, mirror: str) -> None:
    src = work / "mirror/stable/tailscale_1.80.3_amd64.tgz"
    run = run_site(kobo, work, mirror, {"binary_version": "1.80.3", "binary_src": str(src)})
    assert run.rc != 0 and "tailscale_1.80.3_amd64.tgz is not a build for arch arm: refusing it" in run.output
    assert run.puts == 0


def test_kobo_checksum_mismatch_is_refused(kobo: Any, work: Path, mirror: str) -> None:
    run = run_site(kobo, work, mirror, {"binary_version": "1.82.0", "binary_track": "unstable"})
    assert run.rc != 0 and "checksum mismatch for tailscale_1.82.0_arm.tgz" in run.output, run.output[-1500:]
    pinned = run_site(kobo, work, mirror, {"binary_version": "1.80.3", "binary_checksum": "f" * 64})
    assert pinned.rc != 0 and "checksum mismatch" in pinned.output and pinned.puts == 0
    assert sh(kobo, "tailscaled --version").startswith("1.82.0")


def test_kobo_full_storage_fails_with_numbers_and_changes_nothing(kobo: Any, work: Path, mirror: str) -> None:
    # The kobo's / is a 16 MB overlay: fill it to ~40 KB free and install there.
    sh(kobo, "avail=$(df -Pk / | awk 'NR==2 {print $4}'); dd if=/dev/zero of=/fill bs=1024 count=$((avail - 40))")
    try:
        before = sh(kobo, "ls -la /opt /usr/bin 2>&1 | md5sum")
        run = run_site(
            kobo,
            work,
            mirror,
            {"binary_version": "1.80.3", "device_profile_overrides": {"storage_dir": "/opt/ts"}},
        )
        assert run.rc != 0
        assert "not enough space: needs 0.1 MB, 0.0 MB free on /; nothing was changed" in run.output
        assert run.puts == 0
        assert sh(kobo, "ls -la /opt /usr/bin 2>&1 | md5sum") == before
    finally:
        sh(kobo, "rm -f /fill")


def test_sysvinit_fresh_install_and_removal(sysvinit: Any, work: Path, mirror: str) -> None:
    run = run_site(sysvinit, work, mirror, {"binary_version": "1.82.0"})
    assert run.rc == 0, run.output[-3000:]
    assert sh(sysvinit, "tailscaled --version").startswith("1.82.0")
    assert "tailscale_1.82.0_amd64.tgz" in str(mirror_stats(mirror)["paths"])
    again = run_site(sysvinit, work, mirror, {"binary_version": "1.82.0"})
    assert again.changed == 0 and again.puts == 0
    gone = run_site(sysvinit, work, mirror, {"fleetmesh_state": "absent"})
    assert gone.rc == 0, gone.output[-3000:]
    assert sh(sysvinit, "ls /opt/tailscale /usr/bin/tailscale 2>&1; echo end").strip().endswith("end")
    assert "No such file" in sh(sysvinit, "ls /usr/bin/tailscaled /opt/tailscale")


QUEC = "pcb-quec"


@pytest.fixture(scope="module")
def quecopen() -> Iterator[Any]:
    lab.down(QUEC)
    yield lab.up(QUEC, "quecopen", readonly_root=True)
    lab.down(QUEC)


@pytest.fixture(scope="module")
def adb_port() -> Iterator[int]:
    """A private adb server for this module's runs, killed in teardown (the default 5037 may be someone else's)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    yield port
    subprocess.run(["adb", "-P", str(port), "kill-server"], capture_output=True, check=False, timeout=30)


def test_quecopen_install_over_adb_with_readonly_root(quecopen: Any, work: Path, mirror: str, adb_port: int) -> None:
    assert "ro" in sh(quecopen, "awk '$2 == \"/\" {o=$4} END {print o}' /proc/mounts").strip().split(",")
    extra = {"binary_version": "1.82.0", "fleetmesh_adb_server_port": adb_port}
    run = run_site(quecopen, work, mirror, extra)
    assert run.rc == 0, run.output[-3000:]
    assert sh(quecopen, "readlink /usr/bin/tailscaled").strip() == "/usrdata/tailscale/current/tailscaled"
    assert sh(quecopen, "/usr/bin/tailscaled --version").startswith("1.82.0")
    # / went back to read-only after the links.
    assert "ro" in sh(quecopen, "awk '$2 == \"/\" {o=$4} END {print o}' /proc/mounts").strip().split(",")
    again = run_site(quecopen, work, mirror, extra)
    assert again.rc == 0 and again.changed == 0 and again.puts == 0, again.output[-3000:]
