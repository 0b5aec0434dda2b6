"""End to end inside the lab: devices fetch the real Tailscale release (the lab's build, fleetlab.tailscale_release)
from the mirror on 198.18.0.1:8080 with their own busybox wget, check its sha256, unpack it and run it on their own
CPU (the kobo's ARM build under qemu-user, the sysvinit box's amd64 build natively).

The lab cannot show a wrong-CPU failure (`Exec format error`): every device shares the x86_64 host kernel, which
runs an amd64 build natively in the kobo too, and binfmt_misc runs an ARM build under qemu-user on any box. The last
test pins that lab simplification. The collection refuses a wrong-arch tarball by its name
(tests/integration/test_binary_lab.py) and keeps the previous version when the new tailscaled fails `--version`
(tests/unit/plugins/plugin_utils/test_install_plan.py).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest

from fleetlab import lab, tailscale_release
from fleetlab.state import RUN_DIR

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
    pytest.mark.skipif(importlib.util.find_spec("fleetlab.mirror") is None, reason="fleetlab/mirror.py missing"),
]

BASE = "http://198.18.0.1:8080"
KOBO, SYSV = "sd-mkobo", "sd-msv"
# Prints the index's version, `tailscale version`'s first line, then the first 20 bytes of tailscaled in hex.
FETCH = """set -e
cd "$1"
v=$(wget -q -O - "{base}/stable/?mode=json&os=linux" | sed -n 's/.*"TarballsVersion" *: *"\\([^"]*\\)".*/\\1/p')
t="tailscale_${{v}}_$2.tgz"
wget -q "{base}/stable/$t" "{base}/stable/$t.sha256"
echo "$(cat "$t.sha256")  $t" | sha256sum -c -s
tar -xzf "$t"
rm -f "$t"
echo "$v"
"tailscale_${{v}}_$2/tailscale" version > version.out
head -n 1 version.out
head -c 20 "tailscale_${{v}}_$2/tailscaled" | od -An -tx1
"""
# ELF e_machine (bytes 18-19, little-endian): EM_ARM 40, EM_X86_64 62.
MACHINE = {"arm": ["28", "00"], "amd64": ["3e", "00"]}


@pytest.fixture(scope="module")
def mirror() -> Iterator[None]:
    was_running = (RUN_DIR / "mirror.json").exists()
    lab.mirror("start")  # builds the real releases first (cached in /var/cache/fleetlab/tailscale-releases)
    yield
    if not was_running:
        lab.mirror("stop")


@pytest.fixture(scope="module")
def devices(mirror: None) -> Iterator[None]:
    for name in (KOBO, SYSV):
        lab.down(name)
    lab.up(KOBO, "kobo")
    lab.up(SYSV, "sysvinit")
    yield
    for name in (KOBO, SYSV):
        lab.down(name)


@pytest.mark.parametrize(("name", "arch", "workdir"), [(KOBO, "arm", "/mnt/onboard"), (SYSV, "amd64", "/data")])
def test_device_fetches_checks_and_runs_its_release(devices: None, name: str, arch: str, workdir: str) -> None:
    proc = lab.exec_(name, ["sh", "-c", FETCH.format(base=BASE), "fetch", workdir, arch], timeout=300)
    assert proc.returncode == 0, proc.stderr
    version, first_line, *dump = proc.stdout.splitlines()
    assert version == tailscale_release.NEW_VERSION
    assert first_line == version  # the real CLI prints the plain release version first, as official builds do
    header = " ".join(dump).split()
    assert header[:4] == ["7f", "45", "4c", "46"] and header[18:20] == MACHINE[arch], header


def test_a_build_for_the_other_cpu_runs_anyway_in_the_lab(devices: None) -> None:
    # On a real Kobo the amd64 build fails with `Exec format error`; in the lab it runs (see the module docstring).
    assert lab.exec_(KOBO, ["uname", "-m"]).stdout.strip() == "armv7l"
    proc = lab.exec_(KOBO, ["sh", "-c", FETCH.format(base=BASE), "fetch", "/mnt/onboard", "amd64"], timeout=300)
    assert proc.returncode == 0, proc.stderr
    _version, first_line, *dump = proc.stdout.splitlines()
    assert first_line == tailscale_release.NEW_VERSION
    assert " ".join(dump).split()[18:20] == MACHINE["amd64"]
