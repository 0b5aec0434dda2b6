"""The iptables bundles for the shim role: real Debian binaries that run on the lab devices once copied there."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._iptables_bundle import bundle_plan

from fleetlab import bundles, lab
from fleetlab.state import Device

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths, binfmt_misc)"),
]

# What the blog did by hand, driven by the manifest: files into a directory, soname links in /lib, command link.
INSTALL = """set -e
src=$1 dst=$2
mkdir -p "$dst"
cp -a "$src"/. "$dst"/
{links}
ln -sf "$dst/{binary}" /sbin/iptables
"""


def _install(device: Device, arch: str, dst: str) -> None:
    manifest = bundles.manifest(arch)
    links = "\n".join(f'ln -sf "$dst/lib/{real}" /lib/{name}' for name, real in manifest["soname_links"].items())
    # The device's /tmp is a tmpfs of its own mount namespace: stage through the overlay root the host sees.
    staging = device.root / "lt-bundle"
    shutil.copytree(bundles.bundle_dir(arch), staging)
    script = INSTALL.format(links=links, binary=manifest["binary"])
    proc = lab.exec_(device.name, ["sh", "-c", script, "install", "/lt-bundle", dst])
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def sysvinit(iptables_bundles: None) -> Iterator[Device]:
    lab.down("lt-bsv")
    yield lab.up("lt-bsv", "sysvinit")
    lab.down("lt-bsv")


@pytest.fixture
def kobo(iptables_bundles: None) -> Iterator[Device]:
    lab.down("lt-bkobo")
    # tmpfs onboard: this hand install (`cp -a`, the whole xtables dir with libxt_MARK.so beside libxt_mark.so) needs
    # modes and case-sensitive names, which the kobo's default FAT onboard has not (the collection's shim puts the
    # extensions on / there: tests/integration/test_iptables_shim_lab.py).
    yield lab.up("lt-bkobo", "kobo", onboard_fs="tmpfs")
    lab.down("lt-bkobo")


@pytest.mark.parametrize("arch", bundles.ARCHES)
def test_manifest_lists_real_files(iptables_bundles: None, arch: str) -> None:
    manifest = bundles.manifest(arch)
    base = bundles.bundle_dir(arch)
    assert (base / manifest["binary"]).is_file()
    assert sorted(manifest["soname_links"]) == ["libip4tc.so.2", "libip6tc.so.2", "libxtables.so.12"]
    for lib in manifest["libs"]:
        assert (base / lib).is_file()
    assert "iptables" in manifest["commands"]
    # ELF e_machine (little-endian u16 at offset 18): EM_ARM 40, EM_X86_64 62.
    header = (base / manifest["binary"]).read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    assert int.from_bytes(header[18:20], "little") == {"armhf": 40, "amd64": 62}[arch]


def test_amd64_bundle_is_real_iptables_in_the_device_netns(sysvinit: Device) -> None:
    assert lab.exec_(sysvinit.name, ["sh", "-c", "command -v iptables"]).returncode != 0
    with open("/proc/net/ip_tables_names") as fh:
        host_tables = fh.read()
    _install(sysvinit, "amd64", "/data/iptables")
    env = "XTABLES_LIBDIR=/data/iptables/xtables"
    assert "v1.8.9 (legacy)" in lab.exec_(sysvinit.name, ["iptables", "--version"]).stdout
    rule = lab.exec_(sysvinit.name, ["sh", "-c", f"{env} iptables -A INPUT -s 198.18.0.99 -j DROP && iptables -S"])
    assert "-A INPUT -s 198.18.0.99/32 -j DROP" in rule.stdout, rule.stderr
    # The table lives in the device's network namespace: the host's set of tables did not change.
    assert "filter" in lab.exec_(sysvinit.name, ["cat", "/proc/net/ip_tables_names"]).stdout
    with open("/proc/net/ip_tables_names") as fh:
        assert fh.read() == host_tables


def test_armhf_bundle_runs_on_kobo(kobo: Device) -> None:
    _install(kobo, "armhf", "/mnt/onboard/iptables")
    proc = lab.exec_(kobo.name, ["iptables", "--version"])
    assert proc.returncode == 0 and "v1.8.9 (legacy)" in proc.stdout, proc.stderr


def test_the_collection_accepts_the_lab_bundle_and_finds_every_file(iptables_bundles: None) -> None:
    """The collection's bundle_plan (what the iptables_shim role installs) takes the manifest fleetlab writes."""
    base = bundles.bundle_dir("armhf")
    out = bundle_plan(
        bundles.manifest("armhf"),
        str(base),
        "/mnt/onboard/.tailscale/iptables",
        "/lib",
        "/usr/sbin",
        extensions=("libxt_standard.so",),
    )
    assert out["files"] and all(Path(f["src"]).is_file() for f in out["files"])
    assert any(f["src"].endswith("/xtables/libxt_standard.so") for f in out["files"]), out["files"]
