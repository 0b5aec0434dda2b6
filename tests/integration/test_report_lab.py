"""playbooks/report.yml on a small lab fleet (two sysvinit boxes over telnet, the real Tailscale and the lab's
headscale): the JSON and the HTML page (rendered by headless Chromium from Debian's packages, a screenshot kept
as tests/output/report-lab.png) match what the devices and the control server say; a pin the devices are behind
shows them behind; report.yml changes nothing on the devices and a second run says the same.

Headscale nodes made here are deleted in teardown; the devices are torn down.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
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

from provision_lab import NEW, OLD, run_playbook, stop_sessions  # noqa: E402

from fleetlab import control  # noqa: E402
from repo_checkout import REPO  # noqa: E402

NAMES = ("rep-a", "rep-b")
KEY_ENV = "FLEETMESH_REPORT_TEST_API_KEY"
SHOT = REPO / "tests" / "output" / "report-lab.png"
CHROMIUM = shutil.which("chromium")


def sh(name: str, script: str) -> str:
    proc = lab.exec_(name, ["sh", "-c", script], timeout=120)
    return proc.stdout + proc.stderr


def status(name: str) -> dict[str, Any]:
    return json.loads(sh(name, "tailscale status --json"))


@pytest.fixture(scope="module")
def fleet(work: Path, mirror: str) -> Iterator[dict[str, Any]]:
    for name in NAMES:
        lab.down(name)
    control.up()
    key = control.api_key("2h")
    os.environ[KEY_ENV] = key  # ansible-playbook reads it through a lookup: never on a command line or in a file
    devices = {name: lab.up(name, "sysvinit") for name in NAMES}
    try:
        yield {"devices": devices, "key": key}
    finally:
        os.environ.pop(KEY_ENV, None)
        stop_sessions(work / "cp")
        for name in devices:
            with contextlib.suppress(Exception):
                control.delete_node(int(status(name)["Self"]["ID"]))
            lab.down(name)


def host_vars(work: Path) -> dict[str, Any]:
    return {
        "binary_version": OLD,
        "fleetmesh_control": {
            "type": "headscale",
            "url": control.CONTROL_URL,
            "api_key": "{{ lookup('env', '" + KEY_ENV + "') }}",
        },
        "fleetmesh_report_dir": str(work / "report"),
    }


def chromium(*args: str) -> str:
    profile = tempfile.mkdtemp(prefix="rep-chromium-")
    try:
        proc = subprocess.run(  # noqa: S603 - fixed argv
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def report(fleet: dict[str, Any], work: Path, mirror: str, **cli: Any) -> tuple[dict[str, Any], str, float]:
    devices = list(fleet["devices"].values())
    started = time.monotonic()
    rc, out, recaps = run_playbook(
        {"fleet": devices}, work, mirror, host_vars(work), playbook="report.yml", cli_vars=cli
    )
    seconds = time.monotonic() - started
    stop_sessions(work / "cp")
    assert rc == 0, out[-3000:]
    # Read-only: nothing changed or failed on any device.
    assert set(recaps) == set(NAMES) and all(r["changed"] == 0 and r["failed"] == 0 for r in recaps.values()), out
    assert fleet["key"] not in out
    data = json.loads((work / "report" / "fleet-report.json").read_text())
    return data, out, seconds


@pytest.mark.skipif(CHROMIUM is None, reason="chromium (Debian's package) is not installed: make deps")
def test_the_report_matches_the_lab_fleet(fleet: dict[str, Any], work: Path, mirror: str) -> None:
    devices = list(fleet["devices"].values())
    started = time.monotonic()
    rc, out, recaps = run_playbook({"fleet": devices}, work, mirror, host_vars(work))
    stop_sessions(work / "cp")
    assert rc == 0 and all(r["failed"] == 0 for r in recaps.values()), out[-3000:]
    provisioned = time.monotonic() - started

    data, out, seconds = report(fleet, work, mirror)
    nodes = control.nodes()
    assert data["summary"] == {
        "hosts": 2,
        "up": 2,
        "down": 0,
        "behind": 0,
        "failing": 0,
        "drifted": 0,
        "not_applicable": 0,
    }, json.dumps(data, indent=2)
    label = f"headscale {control.CONTROL_URL}"
    assert data["servers"] == [{"label": label, "nodes": len(nodes), "error": ""}]
    for row in data["hosts"]:
        name = row["host"]
        st = status(name)
        node = next(n for n in nodes if n.get("node_key") == st["Self"]["PublicKey"])
        assert row["profile"] == "sysvinit" and row["door"] == "telnet" and row["arch"] == sh(name, "uname -m").strip()
        assert row["installed"] == sh(name, "tailscale version | head -n1").strip().split("-")[0] == OLD
        assert row["pinned"] == OLD and row["behind"] is False
        assert row["backend_state"] == st["BackendState"] == "Running"
        assert row["online"] == {label: bool(node.get("online"))} == {label: True}
        assert sorted(row["tailnet_ips"]) == sorted(st["Self"]["TailscaleIPs"]) == sorted(node["ip_addresses"])
        assert row["networking"] == ("kernel" if st.get("TUN") else "userspace") == "userspace"
        assert row["last_run"]["playbook"] == "site.yml" and row["last_run"]["result"] == "ok"
        assert row["drift"] == []

    html = work / "report" / "fleet-report.html"
    assert fleet["key"] not in html.read_text() + json.dumps(data)
    SHOT.parent.mkdir(parents=True, exist_ok=True)
    chromium(f"--screenshot={SHOT}", "--window-size=1400,900", html.as_uri())
    assert SHOT.stat().st_size > 10_000 and SHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dom = chromium("--dump-dom", html.as_uri())
    counts = dict(re.findall(r'data-count="(\w+)">(\d+)<', dom))
    assert counts == {"hosts": "2", "up": "2", "behind": "0", "failing": "0", "drifted": "0"}, dom[:3000]
    assert all(f'data-host="{name}"' in dom for name in NAMES)

    # A pin the fleet is behind: both devices show behind, with the drift named.
    behind, out, _s = report(fleet, work, mirror, binary_version=NEW)
    assert behind["summary"]["behind"] == 2 and behind["summary"]["up"] == 2, json.dumps(behind, indent=2)
    for row in behind["hosts"]:
        assert row["behind"] and f"installed {OLD}, pinned {NEW}" in row["drift"]
    assert f"installed {OLD}, pinned {NEW}" in out
    dom = chromium("--dump-dom", html.as_uri())
    assert 'data-count="behind">2<' in dom

    # A second run with the first pin says what the first said.
    again, _out, again_seconds = report(fleet, work, mirror)
    strip = ("generated",)
    assert {k: v for k, v in again.items() if k not in strip} == {k: v for k, v in data.items() if k not in strip}
    print(
        f"report lab: site.yml {provisioned:.1f} s, report.yml {seconds:.1f} s / {again_seconds:.1f} s; "
        f"screenshot {SHOT}"
    )
