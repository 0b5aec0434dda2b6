"""The testinfra backend (extensions/testinfra) on the local connection: inventory patterns, templated connection
variables, exit codes and output, one fresh shell per command."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "extensions" / "testinfra"))

import fleetmesh_testinfra  # noqa: E402 - importable once its directory is on sys.path
import testinfra  # noqa: E402


@pytest.fixture
def inventory(tmp_path: Path) -> str:
    path = tmp_path / "inventory.yml"
    hosts = {
        # The connection name comes through a template, as in inventories/fleet/group_vars.
        "box1": {"ansible_connection": "{{ box_door }}", "box_door": "local"},
        "box2": {"ansible_connection": "local"},
    }
    path.write_text(yaml.safe_dump({"all": {"children": {"rootfs": {"hosts": hosts}, "empty": {"hosts": {}}}}}))
    return str(path)


def test_hosts_by_pattern(inventory: str) -> None:
    fleetmesh_testinfra.register()
    hosts = testinfra.get_hosts(["rootfs"], connection="fleetmesh", ansible_inventory=inventory)
    assert sorted(h.backend.get_pytest_id() for h in hosts) == ["fleetmesh://box1", "fleetmesh://box2"]
    with pytest.raises(RuntimeError, match="no host matches 'empty'"):
        testinfra.get_hosts(["empty"], connection="fleetmesh", ansible_inventory=inventory)


def test_commands_run_through_the_connection_plugin(inventory: str, tmp_path: Path) -> None:
    host = testinfra.get_host("fleetmesh://box1", ansible_inventory=inventory)
    assert type(host.backend.connection).__module__.endswith("connection.local")
    result = host.run("echo out; echo err >&2; exit 3")
    assert (result.rc, result.stdout, result.stderr) == (3, "out\n", "err\n")
    # Arguments are quoted; a command's cd does not leak into the next one.
    marker = tmp_path / "it's here"
    marker.write_text("x")
    assert host.run("cd / && test -f %s", str(marker)).rc == 0
    assert host.check_output("pwd") == str(Path.cwd())
    assert host.file(str(marker)).content_string == "x"
