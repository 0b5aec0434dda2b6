"""Test-wide set-up: Ansible's collection loader sees this checkout as fleetmesh.tailscale.

Installed before any test module imports ansible_collections.*, so plugins load by FQCN through Ansible's own
loaders (connection_loader.get("fleetmesh.tailscale.adb")) exactly as they do under ansible-playbook.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder

_COLLECTIONS = Path(__file__).resolve().parents[1] / ".collections"
_AnsibleCollectionFinder(paths=[str(_COLLECTIONS)], scan_sys_paths=False)._install()  # pylint: disable=protected-access


@pytest.fixture(scope="session", autouse=True)
def private_adb_server() -> Iterator[None]:
    """Every adb client the tests start (ours, the plugin's, molecule's) talks to a private adb server, not 5037.

    The session starts that server itself (`adb nodaemon server`, its own child) and stops it by pid at the end: a
    server still holding a transport to a device whose namespace is gone can hang `adb kill-server`. A user's own
    adb server on the default port is left alone.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    saved = os.environ.get("ANDROID_ADB_SERVER_PORT")
    os.environ["ANDROID_ADB_SERVER_PORT"] = port
    server = None
    if shutil.which("adb"):
        server = subprocess.Popen(  # noqa: S603 - fixed argv
            ["adb", "-P", port, "nodaemon", "server"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    yield
    if server is not None:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
    if saved is None:
        del os.environ["ANDROID_ADB_SERVER_PORT"]
    else:
        os.environ["ANDROID_ADB_SERVER_PORT"] = saved


@pytest.fixture(scope="session")
def iptables_bundles() -> None:
    """The lab's iptables bundles (fleetlab.bundles: Debian's iptables for armhf and amd64, extracted from the .debs
    once per machine into /var/cache/fleetlab/bundles) for the modules whose devices get the collection's shim.
    Prepared here, so a fresh machine that has not run `fleetlab prepare` runs those tests instead of skipping."""
    from fleetlab import bundles

    for arch in bundles.ARCHES:
        bundles.ensure_bundle(arch)


@pytest.fixture(scope="session", autouse=True)
def lab_control_plane(request: pytest.FixtureRequest) -> Iterator[bool]:
    """The lab's control plane (headscale + DERP, fleetlab/control.py) lives as long as the test session needs it.

    Lab tests start it on first use (`fleetlab.control.up()`, idempotent); if it was not running when the session
    began, the session stops it at the end, so the suite leaves no lab service behind. One that was already running
    (someone's `fleetlab control up`) is left alone.

    The value is True when the session owns the control plane (it was not running when the session began): a
    module that must stop it (tests of `control down`, `down --all`, the bridge's last user) may then do so even
    though an earlier module of this session started it; the next user starts it again.
    """
    unit = Path(__file__).resolve().parent / "unit"
    if all(Path(item.path).resolve().is_relative_to(unit) for item in request.session.items):
        # A unit-only session never uses the lab, so it must not stop a control plane another session (a lab run
        # going on at the same time) started while this one ran.
        yield False
        return
    try:
        from fleetlab import control
    except ImportError:
        yield False
        return
    was_running = os.geteuid() == 0 and control.status() is not None
    yield not was_running
    if os.geteuid() == 0 and not was_running and control.status() is not None:
        control.down()
