"""iptables_shim on a lab kobo (armhf, qemu-user) through the real telnet plugin: the shim's libraries and soname
links land and its iptables runs on the device; repair, a broken bundle and uninstall.

What real tailscaled does with and without the shim in kernel mode (it falls back to nftables without it, uses the
shim's iptables with it) is proven natively on the amd64 kobo box in test_kobo_chain_lab.py: under qemu-user the
shim's iptables cannot reach the kernel's tables (IPT_SO_GET_INFO is not emulated, docs/lab.md).
"""

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
    pytest.mark.usefixtures("iptables_bundles"),  # prepared if this machine has not yet (conftest)
]

lab = pytest.importorskip("fleetlab.lab", reason="the fleetlab package (tests/lab) is not installed")

from provision_lab import run_site  # noqa: E402

KOBO = "pci-kobo"


@pytest.fixture(scope="module")
def kobo() -> Iterator[Any]:
    lab.down(KOBO)
    yield lab.up(KOBO, "kobo")
    lab.down(KOBO)


def sh(device: Any, script: str) -> str:
    proc = lab.exec_(device.name, ["sh", "-c", script])
    return proc.stdout + proc.stderr


def test_before_and_after(kobo: Any, work: Path, mirror: str) -> None:
    # Without the shim the device has no iptables at all; site.yml still brings the node up (userspace in the lab).
    without = run_site(kobo, work, mirror, {"iptables_shim_enabled": False})
    assert without.rc == 0, without.output[-3000:]
    assert "not found" in sh(kobo, "command -v iptables || echo not found")
    run = run_site(kobo, work, mirror)
    assert run.rc == 0 and run.changed >= 1, run.output[-3000:]
    # The armhf build of iptables and its libraries run on the device (under qemu-user here, natively on a Kobo).
    assert sh(kobo, "iptables --version").startswith("iptables v1.8.9")
    assert sh(kobo, "head -c 20 $(readlink -f /usr/sbin/iptables) | od -An -tx1").split()[18:20] == ["28", "00"]
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
