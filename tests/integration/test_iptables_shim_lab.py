"""iptables_shim on a lab kobo through the real telnet plugin: tailscaled fails without iptables, starts with it."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
    pytest.mark.skipif(
        not Path("/var/cache/fleetlab/bundles/armhf/manifest.json").exists(),
        reason="the lab's iptables bundles are not prepared (fleetlab prepare)",
    ),
]

lab = pytest.importorskip("fleetlab.lab", reason="the fleetlab package (tests/lab) is not installed")

from provision_lab import release_mirror, run_site, stop_sessions  # noqa: E402

KOBO = "pci-kobo"
# Start the daemon in kernel mode for 3 s; its log says whether the router found a working iptables.
TRY_DAEMON = (
    "export PATH=/usr/sbin:/usr/bin:/sbin:/bin; mkdir -p /tmp/try; "
    "timeout 3 tailscaled --statedir=/tmp/try --socket=/tmp/try/s.sock 2>&1; echo rc=$?"
)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("shim-lab")
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


def test_before_and_after(kobo: Any, work: Path, mirror: str) -> None:
    # Without the shim, site.yml stops at the boot role: tailscaled cannot start, and the task says why.
    without = run_site(kobo, work, mirror, {"iptables_shim_enabled": False})
    assert without.rc != 0
    assert 'exec: "iptables": executable file not found in $PATH' in without.output
    assert 'exec: "iptables": executable file not found in $PATH' in sh(kobo, TRY_DAEMON)
    run = run_site(kobo, work, mirror)
    assert run.rc == 0 and run.changed >= 1, run.output[-3000:]
    assert sh(kobo, "iptables --version").startswith("iptables v1.8.9")
    started = sh(kobo, TRY_DAEMON)
    assert "router: using iptables" in started and "executable file not found" not in started
    again = run_site(kobo, work, mirror)
    assert again.changed == 0 and again.puts == 0


def test_missing_soname_link_is_repaired(kobo: Any, work: Path, mirror: str) -> None:
    sh(kobo, "rm /lib/libip4tc.so.2")
    broken = sh(kobo, "/usr/sbin/iptables --version; echo rc=$?")
    assert "libip4tc.so.2: cannot open shared object file" in broken
    run = run_site(kobo, work, mirror)
    assert run.rc == 0 and run.changed == 1 and run.puts == 0, run.output[-3000:]
    assert sh(kobo, "iptables --version").startswith("iptables v1.8.9")


def test_broken_bundle_reports_the_loader_error_verbatim(kobo: Any, work: Path, mirror: str) -> None:
    # A bundle whose manifest forgets libip6tc: the device's loader error comes back as the task's failure.
    bundle = work / "broken-bundle"
    shutil.copytree("/var/cache/fleetlab/bundles/armhf", bundle, symlinks=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["libs"] = [lib for lib in manifest["libs"] if "ip6tc" not in lib]
    manifest["soname_links"] = {k: v for k, v in manifest["soname_links"].items() if "ip6tc" not in k}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    sh(kobo, "rm /lib/libip6tc.so.2")
    run = run_site(kobo, work, mirror, {"iptables_shim_bundles": {"arm": str(bundle)}})
    assert run.rc != 0
    assert "libip6tc.so.2: cannot open shared object file: No such file or directory" in run.output
    # The verify failed: the links this run changed went back, the old install's files are untouched.
    repaired = run_site(kobo, work, mirror)
    assert repaired.rc == 0 and sh(kobo, "iptables --version").startswith("iptables v1.8.9")


def test_uninstall_removes_exactly_the_shim(kobo: Any, work: Path, mirror: str) -> None:
    sh(kobo, "touch /usr/sbin/keep-me")
    run = run_site(kobo, work, mirror, {"fleetmesh_state": "absent"})
    assert run.rc == 0, run.output[-3000:]
    assert "No such file" in sh(kobo, "ls /usr/sbin/iptables /lib/libxtables.so.12 /mnt/onboard/.tailscale/iptables")
    assert sh(kobo, "ls /usr/sbin/keep-me").strip() == "/usr/sbin/keep-me"
