"""The converged stamp (plugin_utils/_converged.py): its scripts run under the real shells of this machine (busybox
ash, dash) on a scratch tree, and the digest logic that decides whether site.yml skips the roles."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _converged as cv
from shell_harness import SHELLS, argv

REPO = Path(__file__).resolve().parents[4]

CLI = """#!/bin/sh
case "$*" in
  *"status --json"*) cat "$(dirname "$0")/status.json";;
  *"debug prefs"*) cat "$(dirname "$0")/prefs.json";;
esac
"""
STATUS = '{"BackendState": "Running", "Version": "1.98.10", "Health": [%s], "Self": {"PublicKey": "nodekey:ab",'
STATUS += ' "TailscaleIPs": ["100.64.0.1"], "HostName": "box", "Online": %s, "LastSeen": "%s"}}'
PREFS = '{"Hostname": "%s", "AdvertiseRoutes": ["192.168.1.0/24"], "Persist": {"NodeID": "%s"}}'


def sh(shell: str, script: str) -> str:
    proc = subprocess.run([*argv(shell), "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(name="tree")
def fixture_tree(tmp_path: Path) -> Path:
    (tmp_path / "opt/1.0").mkdir(parents=True)
    (tmp_path / "opt/1.0/tailscaled").write_bytes(os.urandom(cv.SUM_MAX_BYTES + 10))
    (tmp_path / "opt/1.0/tailscale").write_text(CLI)
    (tmp_path / "opt/1.0/tailscale").chmod(0o755)
    (tmp_path / "opt/current").symlink_to(tmp_path / "opt/1.0")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/rc.tailscale").write_text("tailscaled --state=/x\n")
    (tmp_path / "opt/1.0/status.json").write_text(STATUS % ("", "true", "2026-12-07T10:00:00Z"))
    (tmp_path / "opt/1.0/prefs.json").write_text(PREFS % ("box", "n1"))
    (tmp_path / "ip_forward").write_text("1\n")
    (tmp_path / "var lib").mkdir()
    (tmp_path / "var lib/tailscaled.state").write_text('{"key": "secret-1"}')
    manifest = tmp_path / "opt/.fleetmesh-binary.manifest"
    manifest.write_text(
        "".join(
            f"{kind} {tmp_path / p}\n"
            for kind, p in [
                ("dir", "opt"),
                ("file", "opt/1.0/tailscaled"),
                ("file", "opt/1.0/tailscale"),
                ("link", "opt/current"),
                ("file", "etc/rc.tailscale"),
            ]
        )
    )
    return tmp_path


def record(shell: str, tree: Path, inputs: str = "a" * 64) -> str:
    stamp = str(tree / "opt" / cv.STAMP_NAME)
    lines = cv.entries(
        [str(tree / "opt/.fleetmesh-binary.manifest")],
        [str(tree / "var lib")],
        proc=[str(tree / "ip_forward")],
        tailscale=str(tree / "opt/current/tailscale"),
        socket=str(tree / "sock"),
        metas=[str(tree / "var lib/tailscaled.state")],
    )
    first, _tmp = cv.record_scripts(stamp, lines)
    out = sh(shell, first)
    _normal, observed = cv.observation(out)
    sh(shell, cv.finish_script(stamp, inputs, observed))
    return stamp


def check(shell: str, stamp: str) -> tuple[dict[str, str], str, dict]:
    out = sh(shell, cv.check_script(stamp))
    normal, observed = cv.observation(out)
    return cv.parse_stamp(out), observed, normal


@pytest.mark.parametrize("shell", SHELLS)
def test_a_recorded_device_checks_the_same_and_shows_its_node(shell: str, tree: Path) -> None:
    stamp = record(shell, tree)
    recorded, observed, normal = check(shell, stamp)
    assert recorded == {"inputs": "a" * 64, "observed": observed}
    assert cv.node_key(normal) == "nodekey:ab" and cv.backend_state(normal) == "Running"
    assert cv.advertised_routes(normal) == ["192.168.1.0/24"]
    assert not (tree / "opt" / (cv.STAMP_NAME + ".tmp")).exists()
    # What changes on its own is not drift: health warnings, online, last seen, the persisted keys.
    (tree / "opt/1.0/status.json").write_text(STATUS % ('"warn"', "false", "2026-12-07T11:00:00Z"))
    (tree / "opt/1.0/prefs.json").write_text(PREFS % ("box", "n2"))
    assert check(shell, stamp)[1] == observed


@pytest.mark.parametrize(
    "drift",
    [
        "small file, same size, same minute",
        "large file resized",
        "link retargeted",
        "manifest item removed",
        "pref changed by hand",
        "node logged out",
        "daemon down",
        "forwarding off",
        "manifest gone",
        "state file rewritten",
        "state dir mode",
    ],
)
def test_drift_changes_the_observation(drift: str, tree: Path) -> None:
    shell = SHELLS[0]
    stamp = record(shell, tree)
    before = check(shell, stamp)[1]
    if drift.startswith("small file"):
        (tree / "etc/rc.tailscale").write_text("tailscaled --state=/y\n")
    elif drift == "large file resized":
        with open(tree / "opt/1.0/tailscaled", "ab") as f:
            f.write(b"x")
    elif drift == "link retargeted":
        (tree / "opt/current").unlink()
        (tree / "opt/current").symlink_to(tree / "etc")
    elif drift == "manifest item removed":
        (tree / "etc/rc.tailscale").unlink()
    elif drift == "pref changed by hand":
        (tree / "opt/1.0/prefs.json").write_text(PREFS % ("drifted", "n1"))
    elif drift == "node logged out":
        (tree / "opt/1.0/status.json").write_text((STATUS % ("", "true", "x")).replace("Running", "NeedsLogin"))
    elif drift == "daemon down":
        (tree / "opt/1.0/status.json").write_text("")
    elif drift == "forwarding off":
        (tree / "ip_forward").write_text("0\n")
    elif drift == "state file rewritten":
        (tree / "var lib/tailscaled.state").write_text('{"key": "secret-22"}')
    elif drift == "state dir mode":
        (tree / "var lib").chmod(0o700)
    else:
        (tree / "opt/.fleetmesh-binary.manifest").unlink()
    assert check(shell, stamp)[1] != before


def test_a_meta_file_is_never_read(tree: Path) -> None:
    """The state file holds the node's keys: observed by ls only, its contents never leave the device."""
    shell = SHELLS[0]
    stamp = record(shell, tree)
    state = tree / "var lib/tailscaled.state"
    out = sh(shell, cv.check_script(stamp))
    assert "secret-1" not in out and f"{state}" in out
    before = cv.observation(out)[1]
    st = state.stat()
    state.write_text('{"key": "secret-2"}')  # same size, same mtime: a read would tell, ls cannot
    os.utime(state, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert check(shell, stamp)[1] == before


def test_no_stamp_and_a_foreign_file_are_not_converged(tree: Path) -> None:
    stamp = tree / "opt" / cv.STAMP_NAME
    assert check(SHELLS[0], str(stamp))[0] == {}
    stamp.write_text("inputs " + "a" * 64 + "\n")
    assert check(SHELLS[0], str(stamp))[0] == {}


def test_inputs_digest_follows_values_files_and_code_but_not_secrets(tmp_path: Path) -> None:
    src = tmp_path / "bundle.tgz"
    src.write_bytes(b"one")
    base = {
        "binary_version": "1.98.10",
        "binary_src": str(src),
        "fleetmesh_control": {"url": "u", "api_key": "k1"},
        "login_auth_key": "<secret>",
        "routing_routes": ["10.0.0.0/24"],
    }
    digest = cv.inputs_digest(base, "code1", "__omit_1")
    assert cv.inputs_digest(dict(base), "code1", "__omit_1") == digest
    assert cv.inputs_digest({**base, "fleetmesh_control": {"url": "u", "api_key": "k2"}}, "code1") == digest
    assert cv.inputs_digest({**base, "routing_routes": ["10.0.1.0/24"]}, "code1") != digest
    assert cv.inputs_digest(base, "code2") != digest
    src.write_bytes(b"two!")
    assert cv.inputs_digest(base, "code1") != digest
    # The omit placeholder is new in every run: it must not change the digest.
    assert cv.inputs_digest({"x_y": "__omit_1"}, "c", "__omit_1") == cv.inputs_digest(
        {"x_y": "__omit_2"}, "c", "__omit_2"
    )


def test_input_names_take_the_prefixes_and_leave_what_a_run_sets() -> None:
    names = [
        "binary_version",
        "fleetmesh_binary",
        "ansible_host",
        "login_result",
        "boot_extra",
        "inventory_dir",
        "device_profile",
        "device_profile_data",
        "fleetmesh_converged",
        "fleetmesh_telnet_control_path_dir",
        "fleetmesh_adb_server_port",
        "binary_cache_dir",
    ]
    assert cv.input_names(names) == ["binary_version", "boot_extra", "device_profile"]


def _set_names(tasks: list) -> set[str]:
    names: set[str] = set()
    for task in tasks or []:
        if not isinstance(task, dict):
            continue
        if "register" in task:
            names.add(task["register"])
        facts = task.get("ansible.builtin.set_fact")
        if isinstance(facts, dict):
            names.update(k for k in facts if k != "cacheable")
        for key in ("block", "rescue", "always"):
            names |= _set_names(task.get(key))
    return names


def test_every_variable_the_roles_set_is_left_out_of_the_inputs() -> None:
    """A name the roles or playbooks set or register, with one of the prefixes, must be in SET_BY_RUN: else a
    second play of the same run (upgrade.yml) would see other inputs than the first."""
    names: set[str] = set()
    for path in [*REPO.glob("roles/*/tasks/*.yml"), *REPO.glob("playbooks/tasks/*.yml")]:
        names |= _set_names(yaml.safe_load(path.read_text()))
    for path in REPO.glob("playbooks/*.yml"):
        for play in yaml.safe_load(path.read_text()) or []:
            for section in ("pre_tasks", "tasks", "post_tasks"):
                names |= _set_names(play.get(section))
    assert names, "no set_fact or register found: the scan is broken"
    missing = sorted(n for n in names if n.startswith(cv.PREFIXES) and n not in cv.SET_BY_RUN)
    assert not missing, missing


def test_code_digest_changes_with_a_role_file(tmp_path: Path) -> None:
    (tmp_path / "roles/r/tasks").mkdir(parents=True)
    (tmp_path / "roles/r/tasks/main.yml").write_text("a")
    before = cv.code_digest(str(tmp_path))
    (tmp_path / "roles/r/tasks/main.yml").write_text("b")
    assert cv.code_digest(str(tmp_path)) != before
