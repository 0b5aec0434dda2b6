"""A node keeps its identity through what provisioning does to it: the same headscale node (id and machine key) and
the same node key after an upgrade from the older to the newer release, a `fleetlab reboot` (the boot integration
starts tailscaled again), a rollback from a release whose tailscaled fails its check, and the state_dir role moving
the state from an old path. The real Tailscale builds (fleetlab.tailscale_release) and the lab's headscale.

A sysvinit box (amd64) goes through all of it in file order (module-scoped); a kobo (armv7l under qemu-user, udev
boot hook) does the upgrade. Headscale nodes made here are deleted in teardown.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import threading
import urllib.request
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

from provision_lab import (  # noqa: E402
    NEW,
    OLD,
    broken_release,
    release_mirror,
    run_site,
    stop_sessions,
    tailscaled_wrapper,
    wait_for,
)

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


@contextlib.contextmanager
def headscale_seen_offline() -> Iterator[str]:
    """The lab's headscale API behind a loopback proxy that lists every node offline: a control server that does
    not see the node (its map session never came back). It serves GET only: the node list is all the gate reads."""

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            req = urllib.request.Request(
                control.CONTROL_URL + self.path, headers={"Authorization": self.headers["Authorization"]}
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - the lab's own control URL
                    body = json.loads(resp.read())
            except OSError as exc:  # a slow headscale: the gate sees a server that does not answer, also not online
                self.send_error(502, str(exc))
                return
            for node in body.get("nodes") or []:
                node["online"] = False
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_upgrade_from_the_older_release_keeps_the_node(sysvinit: Any, work: Path, mirror: str) -> None:
    site(sysvinit, work, mirror, binary_version=OLD)
    assert version(SV) == OLD and status(SV)["Version"].startswith(OLD)
    before = identity(SV)
    old_pid, old_exe, _flags = daemon(SV)
    assert old_exe == f"{STORE}/{OLD}/tailscaled"
    api_key = control.api_key("1h")
    # A control server that does not list the node online: the gate does not pass, the device goes back to OLD.
    with headscale_seen_offline() as offline_url:
        spec = {"type": "headscale", "url": offline_url, "api_key": api_key, "user": "lab"}
        unseen = run_site(sysvinit, work, mirror, {"fleetmesh_control": spec, "binary_health_timeout": 6})
    (work / "inventory.yml").unlink()  # held the API key
    assert unseen.rc != 0 and unseen.failed == 1, unseen.output[-3000:]
    assert api_key not in unseen.output
    assert f"rolled back to tailscale {OLD} (from {NEW}" in unseen.output, unseen.output[-3000:]
    assert "the control server does not list node" in unseen.output, unseen.output[-3000:]
    assert wait_for(lambda: daemon(SV)[1] == old_exe) and version(SV) == OLD
    assert identity(SV) == before
    # The real control server: the node is back online there, the gate passes.
    spec = {"type": "headscale", "url": control.CONTROL_URL, "api_key": api_key, "user": "lab"}
    upgrade = site(sysvinit, work, mirror, fleetmesh_control=spec)  # binary_version: the default, the newer release
    (work / "inventory.yml").unlink()
    assert api_key not in upgrade.output
    # The health gate saw the new daemon Running as the same node before the old version was removed, and the
    # control server listed it online.
    assert f"healthy: version {NEW}" in upgrade.output, upgrade.output[-3000:]
    online = re.search(
        r"TASK \[fleetmesh\.tailscale\.binary : Wait for the control server to list the node online\]"
        r"[^\n]*\n(?:(?!TASK \[).*\n)*?ok: \[" + SV + r"\]",
        upgrade.output,
    )
    assert online, upgrade.output[-3000:]
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


def test_upgrade_whose_daemon_does_not_start_is_rolled_back(sysvinit: Any, work: Path, mirror: str) -> None:
    bad = "1.99.1"
    before = identity(SV)
    with release_mirror(work / "nostart-mirror") as nostart:
        broken_release(
            work / "nostart-mirror",
            bad,
            "amd64",
            tailscaled_wrapper(bad, "echo 'fails at start on purpose' >&2; exit 1"),
        )
        run = run_site(sysvinit, work, nostart, {"binary_version": bad, "binary_health_timeout": 20})
    assert run.rc != 0 and run.failed == 1, run.output[-3000:]
    # The boot role could not start it; the rescue switched back to the version kept on the device and restarted it.
    assert f"rolled back to tailscale {NEW} (from {bad}" in run.output, run.output[-3000:]
    assert sh(SV, f"readlink {STORE}/current").strip() == f"{STORE}/{NEW}"
    assert wait_for(lambda: daemon(SV)[1] == f"{STORE}/{NEW}/tailscaled")
    assert identity(SV) == before
    # The failed version stays (listed in the manifest) until a run passes the gate: this one, back on the pin.
    assert bad in sh(SV, f"ls {STORE}").split()
    good = site(sysvinit, work, mirror)
    assert "healthy: version" in good.output, good.output[-3000:]
    assert sh(SV, f"ls {STORE}").split().count(bad) == 0 and identity(SV) == before
    again = run_site(sysvinit, work, mirror)
    assert again.rc == 0 and again.changed == 0, again.output[-3000:]


def test_upgrade_that_comes_back_as_another_node_is_rolled_back(sysvinit: Any, work: Path, mirror: str) -> None:
    bad = "1.99.2"
    before = identity(SV)
    nodes_before = {int(n["id"]) for n in control.nodes()}
    # It starts and answers, but on an empty in-memory state: the login role logs it in as a new node.
    real = f"{STORE}/{NEW}/tailscaled"
    with release_mirror(work / "amnesia-mirror") as amnesia:
        broken_release(work / "amnesia-mirror", bad, "amd64", tailscaled_wrapper(bad, f'exec {real} "$@" --state=mem:'))
        run = run_site(sysvinit, work, amnesia, {"binary_version": bad, "binary_health_timeout": 20})
    NODES.update(int(n["id"]) for n in control.nodes() if int(n["id"]) not in nodes_before)
    assert run.rc != 0 and run.failed == 1, run.output[-3000:]
    assert f"rolled back to tailscale {NEW} (from {bad}" in run.output, run.output[-3000:]
    assert sh(SV, f"readlink {STORE}/current").strip() == f"{STORE}/{NEW}"
    assert wait_for(lambda: "--state=mem:" not in daemon(SV)[2])
    assert identity(SV) == before
    assert site(sysvinit, work, mirror).changed > 0  # the gate passes and removes the failed version
    assert bad not in sh(SV, f"ls {STORE}").split()


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
