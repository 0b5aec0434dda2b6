"""What playbooks/site.yml promises on every host, read back on the device (no Python needed there).

Expected paths come from the host's device profile (roles/device/vars/profiles/<profile>.yml) merged with the host's
device_profile_overrides, as the device role computes them. Checks of steps that have not joined site.yml yet skip
and say so.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
SITE = (REPO / "playbooks" / "site.yml").read_text()
PROFILES = REPO / "roles" / "device" / "vars" / "profiles"
BINARY_DEFAULTS = yaml.safe_load((REPO / "roles" / "binary" / "defaults" / "main.yml").read_text())


def in_site(role: str) -> bool:
    return re.search(rf"role:\s*fleetmesh\.tailscale\.{role}\b", SITE) is not None


def needs_role(role: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not in_site(role), reason=f"the {role} role is not in playbooks/site.yml yet")


@pytest.fixture(scope="module")
def profile(host: Any) -> dict[str, Any]:
    """The host's profile data with its overrides, like the device role's device_profile_data."""
    from fleetmesh_testinfra import _Inventory

    backend = host.backend
    hv = _Inventory.get(backend.ansible_inventory).host_vars(backend.hostname)
    names = [g for g in hv["group_names"] if (PROFILES / f"{g}.yml").exists()]
    name = hv.get("device_profile") or names[0]
    data = yaml.safe_load((PROFILES / f"{name}.yml").read_text())["device_profile_base"]
    data.update(hv.get("device_profile_overrides") or {})
    data["name"] = name
    data["version"] = hv.get("binary_version", BINARY_DEFAULTS["binary_version"])
    data["started"] = name != "rootfs"  # a firmware rootfs is files only: nothing runs
    return data


def tailscaled_cmdlines(host: Any) -> list[list[str]]:
    """argv of every running tailscaled, from /proc (busybox ps cannot print full command lines)."""
    out = host.check_output(
        "for p in /proc/[0-9]*; do c=$(tr '\\0' '\\037' < $p/cmdline 2>/dev/null) || continue;"
        ' case $c in *tailscaled*) echo "$c";; esac; done'
    )
    argvs = [line.split("\x1f") for line in out.splitlines() if line]
    # qemu-user runs ARM programs as `qemu-arm-static /path/tailscaled ARGS`: start at the program itself.
    return [argv[next(i for i, a in enumerate(argv) if a.endswith("tailscaled")) :] for argv in argvs]


def test_binaries_linked_into_path(host: Any, profile: dict[str, Any]) -> None:
    version_dir = f"{profile['storage_dir']}/{profile['version']}"
    current = host.file(f"{profile['storage_dir']}/current")
    assert current.is_symlink and current.linked_to == version_dir
    for program in ("tailscale", "tailscaled"):
        link = host.file(f"{profile['bin_dir']}/{program}")
        assert link.is_symlink, f"{link.path} is not a link"
        assert host.check_output(f"readlink -f {link.path}") == f"{version_dir}/{program}"
        assert host.file(f"{version_dir}/{program}").mode & 0o111
    if profile["started"]:
        assert host.check_output(f"{profile['bin_dir']}/tailscale version").splitlines()[0] == profile["version"]


def test_state_dir_private(host: Any, profile: dict[str, Any]) -> None:
    state_dir = host.file(profile["state_dir"])
    assert state_dir.is_directory
    assert state_dir.mode == 0o700


def test_iptables_shim_where_the_profile_needs_it(host: Any, profile: dict[str, Any]) -> None:
    if not profile["iptables_shim"] or profile["tun"] == "userspace":
        pytest.skip(f"profile {profile['name']} needs no iptables shim")
    assert "legacy" in host.check_output("iptables --version")


@needs_role("boot")
def test_daemon_runs_with_relocated_state(host: Any, profile: dict[str, Any]) -> None:
    if not profile["started"]:
        pytest.skip("a firmware rootfs starts nothing")
    argvs = tailscaled_cmdlines(host)
    assert len(argvs) == 1, f"expected one tailscaled, found {argvs}"
    args = " ".join(argvs[0])
    assert f"--statedir={profile['state_dir']}" in args or f"--state={profile['state_dir']}/" in args, args
    assert host.file(f"{profile['state_dir']}/tailscaled.state").is_file
    assert not host.file("/var/lib/tailscale/tailscaled.state").exists or profile["state_dir"] == "/var/lib/tailscale"
