"""The `fleetlab` command line: root check, up/list/exec/inventory/down as a user types them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
]

FLEETLAB = str(Path(sys.executable).with_name("fleetlab"))
REPO = Path(__file__).resolve().parents[2]
NAMES = ("lt-ckobo", "lt-csv")


def fleetlab(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLEETLAB, *args], capture_output=True, text=True, timeout=120, check=False, **kwargs)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def devices() -> Iterator[None]:
    for name in NAMES:
        fleetlab("down", name)
    # `fleetlab inventory` hands out the lab headscale's keys: it needs the control plane (the session's
    # lab_control_plane fixture stops it at the end when the session started it).
    assert fleetlab("control", "up").returncode == 0
    up = fleetlab("up", "--profile", "kobo", NAMES[0])
    assert up.returncode == 0, up.stderr
    assert "telnet 198.18." in up.stdout
    env = {**os.environ, "FLEETLAB_PASSWORD": "lab-pw"}
    up = fleetlab("up", "--profile", "sysvinit", NAMES[1], env=env)
    assert up.returncode == 0, up.stderr
    yield
    for name in NAMES:
        assert fleetlab("down", name).returncode == 0


def test_refuses_non_root() -> None:
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", FLEETLAB, "list"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "must run as root" in proc.stderr


def test_list_and_exec(devices: None) -> None:
    listing = fleetlab("list").stdout
    assert f"{NAMES[0]}\tkobo\t198.18." in listing and "running" in listing
    assert fleetlab("exec", NAMES[0], "--", "uname", "-m").stdout == "armv7l\n"
    assert fleetlab("exec", NAMES[1], "--", "sh", "-c", "exit 7").returncode == 7
    assert fleetlab("exec", NAMES[1], "--", "hostname").stdout == f"{NAMES[1]}\n"


def test_unknown_device_and_profile_errors(devices: None) -> None:
    proc = fleetlab("exec", "lt-nothere", "--", "true")
    assert proc.returncode == 1 and "no lab device named 'lt-nothere'" in proc.stderr
    assert fleetlab("up", "--profile", "nosuch", "x").returncode == 2
    assert "exists already" in fleetlab("up", "--profile", "sysvinit", NAMES[1]).stderr


def test_inventory_is_valid_for_ansible(devices: None, tmp_path: Path) -> None:
    text = fleetlab("inventory").stdout
    data = yaml.safe_load(text)
    lab_vars = data["all"]["vars"]
    assert lab_vars["binary_base_url"] == "http://198.18.0.1:8080"
    assert lab_vars["login_login_server"] == "http://198.18.0.2:8080"  # the lab's headscale
    assert "--no-logs-no-support" in lab_vars["boot_tailscaled_extra_args"]
    # One reusable key of the lab's headscale per profile group (its tags come with the key).
    for group in ("kobo", "sysvinit"):
        assert data["all"]["children"][group]["vars"]["login_auth_key"].startswith("hskey-auth-")
    assert (
        data["all"]["children"]["kobo"]["vars"]["login_auth_key"]
        != data["all"]["children"]["sysvinit"]["vars"]["login_auth_key"]
    )
    assert lab_vars["iptables_shim_bundles"] == {
        "arm": "/var/cache/fleetlab/bundles/armhf",
        "amd64": "/var/cache/fleetlab/bundles/amd64",
    }
    # Every lab variable is an option some role declares, so a rename in a role breaks this test, not the lab.
    declared = {
        name
        for spec in (REPO / "roles").glob("*/meta/argument_specs.yml")
        for entry in yaml.safe_load(spec.read_text())["argument_specs"].values()
        for name in entry.get("options", {})
    }
    group_vars = {name for group in data["all"]["children"].values() for name in group.get("vars", {})}
    host_vars = {name for group in data["all"]["children"].values() for hv in group["hosts"].values() for name in hv}
    host_vars = {name for name in host_vars if not name.startswith(("ansible_", "fleetmesh_adb_"))}
    assert set(lab_vars) | group_vars | host_vars <= declared, (set(lab_vars) | group_vars | host_vars) - declared
    kobo = data["all"]["children"]["kobo"]["hosts"][NAMES[0]]
    assert kobo["ansible_connection"] == "fleetmesh.tailscale.telnet"
    assert kobo["ansible_port"] == 23 and kobo["ansible_password"] == ""
    assert data["all"]["children"]["sysvinit"]["hosts"][NAMES[1]]["ansible_password"] == "lab-pw"
    # The lab's busybox boxes have no iptables: the inventory asks for the shim, as their owner would.
    assert data["all"]["children"]["sysvinit"]["hosts"][NAMES[1]]["device_profile_overrides"] == {"iptables_shim": True}
    inventory = tmp_path / "lab.yml"
    inventory.write_text(text)
    ansible_inventory = shutil.which("ansible-inventory", path=str(Path(sys.executable).parent))
    assert ansible_inventory is not None
    parsed = subprocess.run(
        [ansible_inventory, "-i", str(inventory), "--host", NAMES[0]], capture_output=True, text=True, check=False
    )
    assert parsed.returncode == 0, parsed.stderr
    assert yaml.safe_load(parsed.stdout)["ansible_host"] == kobo["ansible_host"]


def test_inventory_of_named_devices_only(devices: None) -> None:
    data = yaml.safe_load(fleetlab("inventory", NAMES[1]).stdout)
    assert list(data["all"]["children"]) == ["sysvinit"]
    assert list(data["all"]["children"]["sysvinit"]["hosts"]) == [NAMES[1]]
    missing = fleetlab("inventory", NAMES[1], "lt-nothere")
    assert missing.returncode == 1 and "no running lab device named lt-nothere" in missing.stderr
