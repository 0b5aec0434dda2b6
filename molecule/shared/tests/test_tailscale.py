"""What playbooks/site.yml promises on every host, read back on the device (no Python needed there).

Expected paths come from the host's device profile (roles/device/vars/profiles/<profile>.yml) merged with the host's
device_profile_overrides, as the device role computes them. Checks of steps that have not joined site.yml yet skip
and say so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
SITE = (REPO / "playbooks" / "site.yml").read_text()
PROFILES = REPO / "roles" / "device" / "vars" / "profiles"
BINARY_DEFAULTS = yaml.safe_load((REPO / "roles" / "binary" / "defaults" / "main.yml").read_text())
# Boot hooks by init system (the boot role's defaults): a file that must exist, checked after a run.
BOOT_HOOKS = {
    "udev": "/etc/udev/rules.d/97-fleetmesh-tailscale.rules",
    "sysvinit": "/etc/rc5.d/S99tailscaled",
    "systemd": "/etc/systemd/system/multi-user.target.wants/tailscaled.service",
}
# Login role variables and the pref each one sets.
PREFS = {
    "login_hostname": "Hostname",
    "login_accept_routes": "RouteAll",
    "login_shields_up": "ShieldsUp",
    "login_ssh": "RunSSH",
}
# The scenario's side_effect removes Tailscale (fleetmesh_state=absent) and leaves this mark for the second verify.
ABSENT_MARK = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent")) / "fleetmesh_state_absent"
ABSENT = ABSENT_MARK.exists()
present_only = pytest.mark.skipif(ABSENT, reason="verifying the removal (fleetmesh_state=absent) this time")
absent_only = pytest.mark.skipif(not ABSENT, reason="runs after the scenario's side_effect removes Tailscale")


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
    # Where the image's own files are seen from the controller (rootfs), else the device's /.
    data["root"] = hv.get("fleetmesh_rootfs_dir", "") if name == "rootfs" else ""
    data["routes"] = list(hv.get("routing_routes") or [])
    # Prefs the host declares (login role; null = not managed), as `tailscale debug prefs` names them.
    data["prefs"] = {"CorpDNS": hv.get("login_accept_dns", data["accept_dns"])}
    for var, pref in PREFS.items():
        if hv.get(var) is not None:
            data["prefs"][pref] = hv[var]
    return data


def status(host: Any, profile: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(host.check_output(f"{profile['bin_dir']}/tailscale status --json")))


def lab_fleetlab(host: Any) -> str | None:
    """The lab's command when the host is a running lab device (Molecule), else None (a real fleet)."""
    fleetlab = shutil.which("fleetlab") or str(Path(sys.executable).with_name("fleetlab"))
    if os.geteuid() != 0 or not Path(fleetlab).exists():
        return None
    listing = subprocess.run([fleetlab, "list"], capture_output=True, text=True, check=False).stdout
    return fleetlab if any(line.split("\t")[0] == host.backend.hostname for line in listing.splitlines()) else None


def tailscaled_cmdlines(host: Any) -> list[list[str]]:
    """argv of every running tailscaled, from /proc (busybox ps cannot print full command lines)."""
    out = host.check_output(
        "for p in /proc/[0-9]*; do c=$(tr '\\0' '\\037' < $p/cmdline 2>/dev/null) || continue;"
        ' case $c in *tailscaled*) echo "$c";; esac; done'
    )
    found = []
    for line in out.splitlines():
        argv = line.split("\x1f")
        # The program itself, wherever it is in argv: qemu-user runs ARM programs as `qemu-arm-static PROG ARGS`;
        # wrapper scripts (tailscaled.run) only mention the name.
        starts = [i for i, arg in enumerate(argv) if arg.rsplit("/", 1)[-1] == "tailscaled"]
        if starts:
            found.append(argv[starts[0] :])
    return found


def present(host: Any, path: str) -> bool:
    """The path is there, as a file or as a link (a firmware tree's links point at in-image paths)."""
    return bool(host.run("test -e %s || test -L %s", path, path).rc == 0)


def resolve(host: Any, root: str, path: str) -> str:
    """`readlink -f`, but inside `root` when there is one (a firmware tree's links name in-image paths)."""
    if not root:
        return str(host.check_output("readlink -f %s", path))
    parts, done, hops = path.strip("/").split("/"), "", 0
    while parts:
        part = parts.pop(0)
        link = host.run("readlink %s", f"{root}{done}/{part}")
        if link.rc != 0:
            done = f"{done}/{part}"
            continue
        hops += 1
        assert hops < 20, f"{path}: too many levels of links"
        target = link.stdout.strip()
        parts = [p for p in target.split("/") if p] + parts
        if target.startswith("/"):
            done = ""
    return done


@present_only
def test_binaries_linked_into_path(host: Any, profile: dict[str, Any]) -> None:
    root = profile["root"]
    version_dir = f"{profile['storage_dir']}/{profile['version']}"
    # The `current` link is in the profile's link_dir: on a Kobo that is on / because its FAT storage has no links.
    assert host.file(f"{root}{profile['link_dir']}/current").is_symlink
    assert resolve(host, root, f"{profile['link_dir']}/current") == version_dir
    for program in ("tailscale", "tailscaled"):
        link = host.file(f"{root}{profile['bin_dir']}/{program}")
        assert link.is_symlink, f"{link.path} is not a link"
        assert resolve(host, root, f"{profile['bin_dir']}/{program}") == f"{version_dir}/{program}"
        assert host.file(f"{root}{version_dir}/{program}").mode & 0o111
    if profile["started"]:
        assert host.check_output(f"{profile['bin_dir']}/tailscale version").splitlines()[0] == profile["version"]


@present_only
def test_state_dir_private(host: Any, profile: dict[str, Any]) -> None:
    state_dir = host.file(profile["root"] + profile["state_dir"])
    assert state_dir.is_directory
    assert state_dir.mode == 0o700


@present_only
def test_iptables_shim_where_the_profile_needs_it(host: Any, profile: dict[str, Any]) -> None:
    if not profile["iptables_shim"] or profile["tun"] == "userspace":
        pytest.skip(f"profile {profile['name']} needs no iptables shim")
    assert "legacy" in host.check_output("iptables --version")


@present_only
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


@present_only
@needs_role("boot")
def test_boot_hook_installed(host: Any, profile: dict[str, Any]) -> None:
    hook = profile["root"] + BOOT_HOOKS[profile["init_system"]]
    assert present(host, hook), f"{hook} is missing"
    if profile["init_system"] == "sysvinit":
        assert resolve(host, profile["root"], "/etc/init.d/tailscaled").endswith("/tailscaled.init")
    if profile["init_system"] == "systemd":
        assert host.check_output("systemctl is-enabled tailscaled.service") == "enabled"


@present_only
@needs_role("login")
def test_logged_in(host: Any, profile: dict[str, Any]) -> None:
    if not profile["started"]:
        pytest.skip("a firmware rootfs starts nothing: it logs in on its first boot")
    assert status(host, profile)["BackendState"] == "Running"


@present_only
@needs_role("login")
def test_node_online_in_the_lab_control_server(host: Any, profile: dict[str, Any]) -> None:
    """The lab's headscale lists the node online, under the device's hostname, tagged for its profile."""
    if not profile["started"]:
        pytest.skip("a firmware rootfs starts nothing: it joins on its first boot")
    fleetlab = lab_fleetlab(host)
    if fleetlab is None:
        pytest.skip("the control server's node list is read through the lab (fleetlab control nodes)")
    me = status(host, profile)["Self"]
    ips = set(me["TailscaleIPs"])
    listing = subprocess.run([fleetlab, "control", "nodes"], capture_output=True, text=True, check=True).stdout
    rows = [line.split("\t") for line in listing.splitlines()]
    mine = [row for row in rows if len(row) >= 5 and set(row[2].split(",")) == ips]
    assert len(mine) == 1, f"no node with {sorted(ips)} in the control server: {listing}"
    _node_id, name, _addrs, online, tags = mine[0][:5]
    assert online == "online"
    assert name == me["HostName"]
    assert f"tag:fleetmesh-{profile['name']}" in tags.split(",")


@present_only
@needs_role("login")
def test_prefs_as_declared(host: Any, profile: dict[str, Any]) -> None:
    if not profile["started"]:
        pytest.skip("a firmware rootfs starts nothing: prefs are set on its first boot")
    prefs = json.loads(host.check_output(f"{profile['bin_dir']}/tailscale debug prefs"))
    assert {key: prefs[key] for key in profile["prefs"]} == profile["prefs"]


@present_only
@needs_role("routing")
def test_routes_advertised_with_forwarding_per_family(host: Any, profile: dict[str, Any]) -> None:
    if not profile["routes"]:
        pytest.skip("this host advertises no routes")
    if not profile["started"]:
        pytest.skip("a firmware rootfs starts nothing")
    prefs = json.loads(host.check_output(f"{profile['bin_dir']}/tailscale debug prefs"))
    assert sorted(prefs["AdvertiseRoutes"]) == sorted(profile["routes"])
    families = {"ipv6" if ":" in route else "ipv4" for route in profile["routes"]}
    if any("--tun=userspace-networking" in argv for argv in tailscaled_cmdlines(host)):
        # Userspace networking: tailscaled's netstack forwards the routes itself, the kernel does not forward.
        families = set()
    for family, sysctl in (("ipv4", "ipv4/ip_forward"), ("ipv6", "ipv6/conf/all/forwarding")):
        if family in families:
            assert host.file(f"/proc/sys/net/{sysctl}").content_string.strip() == "1", f"{family} forwarding is off"


@present_only
@needs_role("boot")
def test_reboot_keeps_daemon_and_node_identity(host: Any, profile: dict[str, Any]) -> None:
    """Power-cycles the device (lab only): the boot hook starts tailscaled again, with the same node key."""
    if not profile["started"]:
        pytest.skip("a firmware rootfs starts nothing")
    fleetlab = lab_fleetlab(host)
    if fleetlab is None:
        pytest.skip("power-cycling needs a lab device (fleetlab); on a real fleet reboot it yourself and re-run")
    before = status(host, profile)["Self"]["PublicKey"]
    host.backend.close()  # the door goes down with the device
    subprocess.run([fleetlab, "reboot", host.backend.hostname], check=True, capture_output=True, timeout=180)
    deadline = time.monotonic() + 60

    def daemons() -> list[list[str]]:  # the boot script's `tailscaled --cleanup` runs just before the daemon
        return [argv for argv in tailscaled_cmdlines(host) if "--cleanup" not in argv]

    while not daemons() and time.monotonic() < deadline:
        time.sleep(1)
    assert len(daemons()) == 1, "tailscaled did not come back after the reboot"
    while time.monotonic() < deadline:
        after = host.run(f"{profile['bin_dir']}/tailscale status --json")
        # Only a Running backend reports the node's key (a starting daemon says nodekey:0000...).
        if after.rc == 0 and json.loads(after.stdout)["BackendState"] == "Running":
            break
        time.sleep(1)
    assert json.loads(after.stdout)["Self"]["PublicKey"] == before


@absent_only
def test_absent_leaves_only_the_state(host: Any, profile: dict[str, Any]) -> None:
    root = profile["root"]
    if profile["started"]:  # a rootfs tree's /proc is the controller's own: nothing of ours runs there
        assert not tailscaled_cmdlines(host)
    for program in ("tailscale", "tailscaled"):
        assert not present(host, f"{root}{profile['bin_dir']}/{program}")
    assert not present(host, f"{root}{profile['link_dir']}/current")
    if profile["init_system"] in BOOT_HOOKS:
        assert not present(host, root + BOOT_HOOKS[profile["init_system"]])
    if profile["started"] and in_site("boot"):
        # The node's identity is never deleted: a later run brings the same node back.
        assert host.file(f"{profile['state_dir']}/tailscaled.state").is_file
