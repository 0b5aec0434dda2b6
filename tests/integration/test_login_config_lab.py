"""login_mode config with the real tailscaled's --config file (ipn/conffile of tailscale 1.98.10), on fresh sysvinit
lab boxes through site.yml with the lab's auth key.

- The node ends logged in; the config file carries the prefs but never the key (AuthKey there would have to outlive
  the task); the key is in no file on the box; a second run changes nothing.
- tailscaled itself applies the file at each start: a pref changed on the box comes back from it on a restart.
- Every key the role can render is one the real parser takes (it refuses unknown fields), each giving the pref
  meant, read back from a second tailscaled started on such a file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._prefs import render_config
from provision_lab import fresh_device, release_mirror, run_site, wait_for

from fleetlab import control
from fleetlab.inventory import lab_auth_key

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
]

lab = pytest.importorskip("fleetlab.lab", reason="the fleetlab package (tests/lab) is not installed")

NAME = "fix-cfg1"
CONF = "/var/lib/tailscale/tailscaled.conf"


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Any]:
    with fresh_device(NAME, "sysvinit", tmp_path / "cp") as device:
        try:
            yield device
        finally:
            with contextlib.suppress(Exception):
                node_id = json.loads(sh("tailscale status --json")).get("Self", {}).get("ID")
                if node_id and node_id != "0":
                    control.delete_node(int(node_id))


def sh(script: str, stdin: str | None = None) -> str:
    proc = lab.exec_(NAME, ["sh", "-c", script], input=stdin, timeout=120)
    return proc.stdout + proc.stderr


def prefs(socket: str = "") -> dict[str, Any]:
    return json.loads(sh(f"tailscale {'--socket=' + socket if socket else ''} debug prefs"))


def status() -> dict[str, Any]:
    return json.loads(sh("tailscale status --json"))


def test_config_mode_logs_a_fresh_node_in_without_the_key_in_any_file(fresh: Any, tmp_path: Path) -> None:
    variables = {"login_mode": "config", "login_hostname": "id-cfg"}
    with release_mirror(tmp_path / "mirror") as mirror:
        first = run_site(fresh, tmp_path, mirror, variables)
        assert first.rc == 0 and first.failed == 0, first.output[-4000:]
        st = status()
        assert st["BackendState"] == "Running", st
        assert st["Self"]["HostName"] == "id-cfg"
        assert "--config=" + CONF in sh("cat /proc/$(cat /var/run/tailscaled.pid)/cmdline | tr '\\0' ' '")
        conf = json.loads(sh(f"cat {CONF}"))
        assert conf["Hostname"] == "id-cfg" and conf["ServerURL"] == control.url() and "AuthKey" not in conf
        assert sh(f"stat -c %a {CONF}").strip() == "600"
        dirs = "$(ls -d /* | grep -v -x -e /proc -e /sys -e /dev)"
        assert sh(f"grep -rlsF -f /dev/stdin {dirs}", stdin=lab_auth_key("sysvinit") + "\n") == ""
        again = run_site(fresh, tmp_path, mirror, variables)
        assert again.rc == 0 and again.changed == 0, again.output[-4000:]

        # The file is tailscaled's own: a hostname changed on the box (`set` is allowed, "Locked": false) is back
        # from the file after a restart of the daemon, before any Ansible run; the node stays the same.
        key = st["Self"]["PublicKey"]
        assert "ok" in sh("tailscale set --hostname=drifted && echo ok") and prefs()["Hostname"] == "drifted"
        sh("/etc/init.d/tailscaled restart")
        assert wait_for(lambda: status()["BackendState"] == "Running")
        assert prefs()["Hostname"] == "id-cfg" and status()["Self"]["PublicKey"] == key
        settled = run_site(fresh, tmp_path, mirror, variables)
        assert settled.rc == 0 and settled.changed == 0, settled.output[-4000:]


# Every option render_config maps to a config key, with a value unlike tailscaled's default.
FULL = {
    "login_server": "http://198.18.0.2:8080",
    "hostname": "id-full",
    "accept_dns": False,
    "accept_routes": True,
    "ssh": True,
    "shields_up": True,
    "netfilter_mode": "nodivert",
    "advertise_routes": ["192.168.225.0/24", "fd00:225::/64"],
    "advertise_exit_node": True,
    "snat_subnet_routes": False,
}
# What `tailscale debug prefs` must show for them (preftype.NetfilterMode: 1 is nodivert).
FULL_PREFS = {
    "ControlURL": "http://198.18.0.2:8080",
    "Hostname": "id-full",
    "CorpDNS": False,
    "RouteAll": True,
    "RunSSH": True,
    "ShieldsUp": True,
    "NetfilterMode": 1,
    "AdvertiseRoutes": ["192.168.225.0/24", "fd00:225::/64", "0.0.0.0/0", "::/0"],
    "NoSNAT": True,
    "WantRunning": True,
}
# A second daemon in the box, on its own state, socket and logs, not logged in (no key): it only reads the file.
SECOND = (
    "mkdir -p /tmp/ts2/logs; TS_LOGS_DIR=/tmp/ts2/logs TS_NO_LOGS_NO_SUPPORT=1 setsid /usr/bin/tailscaled "
    "--config={conf} --statedir=/tmp/ts2 --socket=/tmp/ts2/sock --tun=userspace-networking --port=0 "
    "--no-logs-no-support </dev/null >/tmp/ts2/out.log 2>&1 & echo $!"
)


def test_every_key_the_role_renders_is_read_by_the_real_tailscaled(fresh: Any, tmp_path: Path) -> None:
    with release_mirror(tmp_path / "mirror") as mirror:
        run = run_site(fresh, tmp_path, mirror)  # the real binaries on the box (and a node, which is not used)
    assert run.rc == 0, run.output[-4000:]
    text = render_config(FULL)
    assert set(json.loads(text)) == {
        "Version", "Locked", "Enabled", "ServerURL", "Hostname", "acceptDNS", "acceptRoutes", "RunSSHServer",
        "ShieldsUp", "NetfilterMode", "AdvertiseRoutes", "DisableSNAT",
    }  # fmt: skip
    # The parser is strict (unknown fields are refused), so the file below being taken means every key is known.
    sh("cat > /tmp/bad.conf", stdin=text.replace('"Hostname"', '"HostName2"'))
    refused = sh(
        "mkdir -p /tmp/ts3; /usr/bin/tailscaled --config=/tmp/bad.conf --statedir=/tmp/ts3 --socket=/tmp/ts3/sock "
        "--tun=userspace-networking --port=0 --no-logs-no-support </dev/null 2>&1; echo rc=$?"
    )
    assert 'unknown field "HostName2"' in refused and "rc=0" not in refused, refused
    sh("cat > /tmp/full.conf", stdin=text)
    pid = sh(SECOND.format(conf="/tmp/full.conf")).strip()
    assert pid.isdigit(), pid
    try:
        assert wait_for(lambda: "BackendState" in sh("tailscale --socket=/tmp/ts2/sock status --json")), sh(
            "cat /tmp/ts2/out.log"
        )
        got = prefs("/tmp/ts2/sock")
        assert {k: got[k] for k in FULL_PREFS} == FULL_PREFS
        # No AuthKey in the file: the second daemon waits for a login and has not registered anything.
        assert json.loads(sh("tailscale --socket=/tmp/ts2/sock status --json"))["BackendState"] == "NeedsLogin"
    finally:
        sh(f"kill {pid}")  # the pid this test started, inside the box
        assert wait_for(lambda: "No such file" in sh(f"ls /proc/{pid}/cmdline 2>&1"), 20)
