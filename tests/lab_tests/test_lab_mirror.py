"""End to end inside the lab: devices fetch the stand-in release from the mirror on 198.18.0.1:8080 with their own
busybox wget, check its sha256 and run it on their own CPU (the stand-in release is fleetlab/standin/)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest

from fleetlab import lab
from fleetlab.state import RUN_DIR

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
    pytest.mark.skipif(importlib.util.find_spec("fleetlab.mirror") is None, reason="fleetlab/mirror.py missing"),
]

BASE = "http://198.18.0.1:8080"
FETCH = """set -e
cd "$1"
v=$(wget -q -O - "{base}/stable/?mode=json&os=linux" | sed -n 's/.*"TarballsVersion" *: *"\\([^"]*\\)".*/\\1/p')
t="tailscale_${{v}}_$2.tgz"
wget -q "{base}/stable/$t" "{base}/stable/$t.sha256"
echo "$(cat "$t.sha256")  $t" | sha256sum -c -s
tar -xzf "$t"
echo "$v"
"tailscale_${{v}}_$2/tailscale" version > version.out
head -1 version.out
"""


@pytest.fixture(scope="module")
def mirror() -> Iterator[None]:
    was_running = (RUN_DIR / "mirror.json").exists()
    lab.mirror("start")
    yield
    if not was_running:
        lab.mirror("stop")


@pytest.fixture
def devices(mirror: None) -> Iterator[None]:
    for name in ("lt-mkobo", "lt-msv"):
        lab.down(name)
    lab.up("lt-mkobo", "kobo")
    lab.up("lt-msv", "sysvinit")
    yield
    for name in ("lt-mkobo", "lt-msv"):
        lab.down(name)


@pytest.mark.parametrize(
    ("name", "arch", "workdir"), [("lt-mkobo", "arm", "/mnt/onboard"), ("lt-msv", "amd64", "/data")]
)
def test_device_fetches_checks_and_runs_its_release(devices: None, name: str, arch: str, workdir: str) -> None:
    proc = lab.exec_(name, ["sh", "-c", FETCH.format(base=BASE), "fetch", workdir, arch])
    assert proc.returncode == 0, proc.stderr
    version, first_line = proc.stdout.splitlines()
    assert first_line == version


def test_wrong_cpu_release_does_not_run_on_kobo(devices: None) -> None:
    proc = lab.exec_("lt-mkobo", ["sh", "-c", FETCH.format(base=BASE), "fetch", "/mnt/onboard", "amd64"])
    assert proc.returncode != 0
    assert "Exec format error" in proc.stderr
