"""`fleetlab shape`: the link shaper (fleetlab/shaper.py) in front of a device's door, wired into the inventory."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Iterator

import pytest
import yaml

from fleetlab import control, inventory, lab
from fleetlab.rawtelnet import RawTelnet, TelnetError
from fleetlab.state import GATEWAY, Device, ProcRef

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
    pytest.mark.skipif(importlib.util.find_spec("fleetlab.shaper") is None, reason="fleetlab/shaper.py missing"),
]

NAME = "lt-shape"


@pytest.fixture
def device() -> Iterator[Device]:
    # The inventory hands out the lab headscale's keys, so it needs the control plane: started here when no earlier
    # module left it running (the session's lab_control_plane fixture stops it at the end).
    control.up()
    lab.down(NAME)
    yield lab.up(NAME, "sysvinit")
    lab.down(NAME)


def _shaper_ref() -> ProcRef:
    return ProcRef(**json.loads((lab.get(NAME).dir / "procs/shaper.json").read_text()))


def test_shaped_door_adds_latency_and_inventory_points_there(device: Device) -> None:
    listen = lab.shape(NAME, latency_ms=150)
    host, _sep, port = listen.rpartition(":")
    assert host == str(GATEWAY)
    hv = yaml.safe_load(inventory.render(lab.list_devices()))["all"]["children"]["sysvinit"]["hosts"][NAME]
    assert (hv["ansible_host"], hv["ansible_port"]) == (host, int(port))
    with RawTelnet(host, int(port)) as tn:
        tn.login("root")
        start = time.monotonic()
        assert tn.run("hostname") == (NAME, 0)
        # One command is a request and a reply: at least two one-way delays.
        assert time.monotonic() - start >= 0.3
    lab.unshape(NAME)
    hv = yaml.safe_load(inventory.render(lab.list_devices()))["all"]["children"]["sysvinit"]["hosts"][NAME]
    assert hv["ansible_host"] == device.address


def test_cut_after_bytes_breaks_the_session_and_down_kills_the_shaper(device: Device) -> None:
    listen = lab.shape(NAME, cut_after_bytes=300)
    host, _sep, port = listen.rpartition(":")
    ref = _shaper_ref()
    with RawTelnet(host, int(port)) as tn, pytest.raises((TelnetError, OSError)):
        tn.login("root")
        tn.run("cat /etc/profile /etc/passwd /etc/inittab")
    lab.down(NAME)
    assert not ref.alive()
