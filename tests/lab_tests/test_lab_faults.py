"""The lab's fault verbs (fleetlab/faults.py): firmware update, snapshot/restore, the device-side pull cutter."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fleetlab import faults, lab
from fleetlab.state import Device

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
]

QUEC = "ft-lq"
SYSV = "ft-ls"


def sh(name: str, script: str) -> subprocess.CompletedProcess[str]:
    return lab.exec_(name, ["sh", "-c", script])


@pytest.fixture
def quecopen() -> Iterator[Device]:
    lab.down(QUEC)
    try:
        yield lab.up(QUEC, "quecopen")
    finally:
        lab.down(QUEC)


@pytest.fixture
def sysvinit() -> Iterator[Device]:
    lab.down(SYSV)
    try:
        yield lab.up(SYSV, "sysvinit")
    finally:
        lab.down(SYSV)


def test_firmware_resets_root_and_keeps_storage(quecopen: Device) -> None:
    script = (
        "echo mine > /etc/added && rm /etc/profile && mkdir -p /usrdata/app && echo kept > /usrdata/app/f && "
        "ln -s /usrdata/app/f /usr/bin/applink && echo ok"
    )
    assert sh(QUEC, script).stdout.strip() == "ok"
    init_before = lab.get(QUEC).init
    proc = subprocess.run(
        [sys.executable, "-m", "fleetlab.cli", "firmware", QUEC], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{QUEC}\tquecopen\t"), proc.stdout
    after = lab.get(QUEC)
    assert after.init is not None and init_before is not None and after.init.pid != init_before.pid  # booted again
    out = sh(QUEC, "cat /usrdata/app/f; ls /etc/added /usr/bin/applink 2>&1; test -s /etc/profile && echo profile")
    assert out.stdout.splitlines()[0] == "kept"  # the storage partition is as it was
    assert "/etc/added: No such file" in out.stdout and "/usr/bin/applink: No such file" in out.stdout
    assert "profile" in out.stdout  # the image's own file is back (its whiteout went with the old root)
    assert sh(QUEC, "hostname").stdout.strip() == "mdm9607-perf"
    assert sh(QUEC, "grep ' /usrdata ' /proc/mounts").returncode == 0  # still its own mount


def test_snapshot_restore_round_trip(sysvinit: Device, tmp_path: Path) -> None:
    assert sh(SYSV, "mkdir -p /data/x && echo one > /data/x/f && rm /etc/profile && echo ok").stdout.strip() == "ok"
    faults.snapshot(SYSV, tmp_path / "snap")
    assert sh(SYSV, "echo two > /data/x/f; echo new > /etc/new; echo ok").stdout.strip() == "ok"
    faults.restore(SYSV, tmp_path / "snap")
    out = sh(SYSV, "cat /data/x/f; ls /etc/new /etc/profile 2>&1")
    assert out.stdout.splitlines()[0] == "one"
    assert "/etc/new: No such file" in out.stdout and "/etc/profile: No such file" in out.stdout


class _Big(BaseHTTPRequestHandler):
    body = os.urandom(2_000_000)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def test_pull_cutter_cuts_a_device_download(sysvinit: Device) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Big)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        faults.cut_pulls(SYSV, port, 0)  # no cut: the whole file comes through
        whole = sh(SYSV, f"wget -q -O /tmp/f http://127.0.0.1:{port}/f && wc -c < /tmp/f")
        assert whole.stdout.strip() == str(len(_Big.body)), whole.stderr
        faults.cut_pulls(SYSV, port, 500_000)
        cut = sh(SYSV, f"wget -q -O /tmp/g http://127.0.0.1:{port}/g; echo rc=$?; wc -c < /tmp/g")
        assert "rc=1" in cut.stdout, cut.stdout + cut.stderr
        assert int(cut.stdout.split()[-1]) < 500_000
        assert int(faults.pull_stats(SYSV)["cuts"]) == 1
    finally:
        faults.uncut_pulls(SYSV)
        server.shutdown()
        server.server_close()
    assert not (lab.get(SYSV).dir / lab.PROCS_SUBDIR / f"{faults.PULL_CUTTER_LABEL}.json").exists()
