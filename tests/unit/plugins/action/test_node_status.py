"""node_status: the script's recorded outputs become the node's state; a missing CLI or daemon is reported."""

from __future__ import annotations

import json

import pytest
from ansible.errors import AnsibleActionFail
from ansible_collections.fleetmesh.tailscale.plugins.action.node_status import build_status, render_script

STATUS = {
    "Version": "1.98.10-t1234",
    "TUN": False,
    "BackendState": "Running",
    "Self": {
        "ID": "7",
        "PublicKey": "nodekey:abcd",
        "HostName": "kobo",
        "DNSName": "kobo.lab.ts.net.",
        "TailscaleIPs": ["100.64.0.5", "fd7a:115c:a1e0::5"],
        "Online": True,
        "PrimaryRoutes": ["192.168.225.0/24"],
    },
}
PREFS = {"AdvertiseRoutes": ["192.168.225.0/24", "0.0.0.0/0"], "WantRunning": True}


def output(
    status: str, status_rc: int = 0, prefs: str = json.dumps(PREFS), prefs_rc: int = 0, present: bool = True
) -> str:
    return (
        f"@@machine\narmv7l\n@@present\n{'yes' if present else ''}\n@@version\n1.98.10\n  tailscale commit: x\n"
        f"@@status_rc\n{status_rc}\n@@status\n{status}\n@@prefs_rc\n{prefs_rc}\n@@prefs\n{prefs}\n@@end\n"
    )


def test_a_running_node() -> None:
    node = build_status(output(json.dumps(STATUS)))
    assert node["machine"] == "armv7l" and node["version"] == "1.98.10" and node["daemon_version"] == "1.98.10"
    assert node["backend_state"] == "Running" and node["networking"] == "userspace"
    assert node["node_key"] == "nodekey:abcd" and node["tailscale_ips"] == ["100.64.0.5", "fd7a:115c:a1e0::5"]
    assert node["advertised_routes"] == ["0.0.0.0/0", "192.168.225.0/24"] and node["online"] is True
    assert node["error"] == "" and node["prefs_read"]


def test_kernel_networking_and_a_warning_before_the_json() -> None:
    node = build_status(output("Warning: client version != tailscaled\n" + json.dumps(dict(STATUS, TUN=True))))
    assert node["networking"] == "kernel" and node["backend_state"] == "Running"


def test_a_stopped_daemon_is_reported() -> None:
    text = "failed to connect to local tailscaled; it doesn't appear to be running"
    node = build_status(output(text, status_rc=1, prefs=text, prefs_rc=1))
    assert node["backend_state"] == "NoDaemon" and "appear to be running" in node["error"]
    assert node["version"] == "1.98.10" and node["tailscale_ips"] == [] and node["networking"] == ""


def test_no_cli_is_reported() -> None:
    node = build_status(output("sh: tailscale: not found", status_rc=127, present=False))
    assert node["backend_state"] == "NotInstalled" and node["version"] == "" and not node["installed"]


def test_a_cut_output_fails() -> None:
    with pytest.raises(AnsibleActionFail, match="cut short"):
        build_status("@@machine\narmv7l\n")


def test_the_script_quotes_its_paths_and_reads_only() -> None:
    script = render_script("/mnt/x y/tailscale", "/var/run/t's.sock")
    assert "T='/mnt/x y/tailscale'" in script and "--socket='/var/run/t'\"'\"'s.sock'" in script
    assert "status --json --peers=false" in script and "debug prefs" in script
    for word in (" up", " set ", " down", "rm ", " > "):
        assert word not in script
    assert "--socket" not in render_script("tailscale", None)
