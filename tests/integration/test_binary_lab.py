"""binary role on lab devices through the real connection plugins: install, no-op, upgrade, rollback, refusals.

Each test module makes its own devices and removes them in teardown; the release mirror is a loopback mirror of the
lab's real Tailscale builds (OLD and NEW, tests/integration/provision_lab.py).
"""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
]

lab = pytest.importorskip("fleetlab.lab", reason="the fleetlab package (tests/lab) is not installed")

from provision_lab import NEW, OLD, mirror_stats, run_site  # noqa: E402

KOBO = "pcb-kobo"
SV = "pcb-sv"
STORE = "/mnt/onboard/.tailscale"
# The onboard storage is FAT (no symlinks): the `current` link is on the root filesystem (profile key link_dir).
CURRENT = "/usr/local/fleetmesh-tailscale/current"
# What the kobo keeps on its storage besides the versions: the iptables bundle; the state copy (state-backup, made
# by the watchdog once tailscaled wrote its state) is left out of the listings below.
LIST = f"ls {STORE} | grep -vx state-backup"


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
    first = run_site(kobo, work, mirror, {"binary_version": OLD})
    assert first.rc == 0, first.output[-3000:]
    assert first.changed >= 1 and first.puts >= 2
    # The programs travelled as the release's gzip copies (busybox gunzip on the device), not as they are.
    sent = re.findall(r"^<[^>]+> PUT (\S+) TO (\S+)", first.output, re.MULTILINE)
    programs = sorted(dest.rsplit("/", 1)[1] for src, dest in sent if src.endswith(("/tailscale.gz", "/tailscaled.gz")))
    assert programs == [".tailscale.fmtmp.gz", ".tailscaled.fmtmp.gz"], sent
    # armv7l got the arm build, linked into PATH through the stable `current` link.
    assert f"tailscale_{OLD}_arm.tgz" in str(mirror_stats(mirror)["paths"])
    assert sh(kobo, f"readlink {CURRENT}; readlink /usr/bin/tailscaled").split() == [
        f"{STORE}/{OLD}",
        f"{CURRENT}/tailscaled",
    ]
    assert sh(kobo, "tailscaled --version").startswith(OLD)
    downloads = mirror_stats(mirror)["paths"][f"/stable/tailscale_{OLD}_arm.tgz"]
    second = run_site(kobo, work, mirror, {"binary_version": OLD})
    assert second.rc == 0 and second.changed == 0, second.output[-3000:]
    assert second.puts == 0
    assert mirror_stats(mirror)["paths"][f"/stable/tailscale_{OLD}_arm.tgz"] == downloads


def test_kobo_upgrade_switches_and_drops_the_old_version(kobo: Any, work: Path, mirror: str) -> None:
    run = run_site(kobo, work, mirror, {"binary_version": NEW})
    assert run.rc == 0 and run.changed >= 1, run.output[-3000:]
    assert sh(kobo, "tailscaled --version").startswith(NEW)
    # The old tailscaled still runs while the binary role removes its files: FUSE (the lab's FAT) keeps the open
    # file as .fuse_hidden* until the boot role restarts the daemon onto the new version, so the old version's dir
    # cannot go yet; it stays in the manifest and the next run removes it (the kernel's vfat removes it at once).
    again = run_site(kobo, work, mirror, {"binary_version": NEW})
    assert again.rc == 0, again.output[-3000:]
    assert sh(kobo, LIST).split() == [NEW, "iptables"]


def truncated_release(src: Path, dest: Path, keep: int = 65536) -> Path:
    """A copy of the release tarball whose tailscaled is cut after `keep` bytes: it fails `--version` on the device."""
    with tarfile.open(src) as tar_in, tarfile.open(dest, "w:gz") as tar_out:
        for member in tar_in.getmembers():
            data = tar_in.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if data is not None and member.name.endswith("/tailscaled"):
                data = data[:keep]
                member.size = len(data)
            tar_out.addfile(member, io.BytesIO(data) if data is not None else None)
    return dest


def test_kobo_failed_version_check_rolls_back(kobo: Any, work: Path, mirror: str) -> None:
    # A broken build under a neutral name passes the controller's checks (right arch, no published checksum to
    # compare); only running it on the device can catch it.
    broken = truncated_release(work / f"mirror/stable/tailscale_{OLD}_arm.tgz", work / "custom-build.tgz")
    run = run_site(kobo, work, mirror, {"binary_version": OLD, "binary_src": str(broken)})
    assert run.rc != 0 and run.failed == 1
    assert "verification failed, previous state restored" in run.output
    assert sh(kobo, f"readlink {CURRENT}; {LIST}").split() == [f"{STORE}/{NEW}", NEW, "iptables"]
    assert sh(kobo, "tailscaled --version").startswith(NEW)


def test_kobo_wrong_arch_tarball_is_refused(kobo: Any, work: Path, mirror: str) -> None:
    src = work / f"mirror/stable/tailscale_{OLD}_amd64.tgz"
    run = run_site(kobo, work, mirror, {"binary_version": OLD, "binary_src": str(src)})
    assert run.rc != 0 and f"tailscale_{OLD}_amd64.tgz is not a build for arch arm: refusing it" in run.output
    assert run.puts == 0


def test_kobo_checksum_mismatch_is_refused(kobo: Any, work: Path, mirror: str) -> None:
    run = run_site(kobo, work, mirror, {"binary_version": NEW, "binary_track": "unstable"})
    assert run.rc != 0 and f"checksum mismatch for tailscale_{NEW}_arm.tgz" in run.output, run.output[-1500:]
    pinned = run_site(kobo, work, mirror, {"binary_version": OLD, "binary_checksum": "f" * 64})
    assert pinned.rc != 0 and "checksum mismatch" in pinned.output and pinned.puts == 0
    assert sh(kobo, "tailscaled --version").startswith(NEW)


def test_kobo_full_storage_fails_with_numbers_and_changes_nothing(kobo: Any, work: Path, mirror: str) -> None:
    # The kobo's / is a 16 MB overlay: fill it to ~40 KB free and install there.
    sh(kobo, "avail=$(df -Pk / | awk 'NR==2 {print $4}'); dd if=/dev/zero of=/fill bs=1024 count=$((avail - 40))")
    try:
        before = sh(kobo, "ls -la /opt /usr/bin 2>&1 | md5sum")
        run = run_site(
            kobo,
            work,
            mirror,
            {"binary_version": OLD, "device_profile_overrides": {"storage_dir": "/opt/ts"}},
        )
        assert run.rc != 0
        full = r"not enough space: needs [1-9][0-9]\.[0-9] MB, 0\.0 MB free on /; nothing was changed"
        assert re.search(full, run.output), run.output[-2000:]
        assert run.puts == 0
        assert sh(kobo, "ls -la /opt /usr/bin 2>&1 | md5sum") == before
    finally:
        sh(kobo, "rm -f /fill")


def test_sysvinit_fresh_install_and_removal(sysvinit: Any, work: Path, mirror: str) -> None:
    run = run_site(sysvinit, work, mirror, {"binary_version": NEW})
    assert run.rc == 0, run.output[-3000:]
    assert sh(sysvinit, "tailscaled --version").startswith(NEW)
    assert f"tailscale_{NEW}_amd64.tgz" in str(mirror_stats(mirror)["paths"])
    again = run_site(sysvinit, work, mirror, {"binary_version": NEW})
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
    extra = {"binary_version": NEW, "fleetmesh_adb_server_port": adb_port}
    run = run_site(quecopen, work, mirror, extra)
    assert run.rc == 0, run.output[-3000:]
    assert sh(quecopen, "readlink /usr/bin/tailscaled").strip() == "/usrdata/tailscale/current/tailscaled"
    assert sh(quecopen, "/usr/bin/tailscaled --version").startswith(NEW)
    # / went back to read-only after the links.
    assert "ro" in sh(quecopen, "awk '$2 == \"/\" {o=$4} END {print o}' /proc/mounts").strip().split(",")
    again = run_site(quecopen, work, mirror, extra)
    assert again.rc == 0 and again.changed == 0 and again.puts == 0, again.output[-3000:]
