"""The tailnet handover against the lab's real headscale 0.29.2 and real tailscaled 1.98.10 (docs/controlplane.md).

Two amd64 sysvinit boxes in kernel mode, provisioned over their telnet door:

- cp-p, the peer, logs in with a single-use key held "in the vault" (minted by the test through the collection's
  own API client, the same request the role makes): headscale then shows that key used.
- cp-r, the router, first gets that spent key: its login fails (a second device cannot reuse it) and nothing of the
  key shows in the output. Then the login role mints its own key (login_mint_key): headscale shows the node
  registered with exactly that key, and the key used and expired when the run ended. Its LAN (192.168.231.0/24,
  not in the lab policy's autoApprovers) is approved by the routing role through the API (routing_approve), headscale
  reports it approved and primary on cp-r, and cp-p reaches the LAN host through it with no manual step. cp-r
  also offers itself as exit node: 0.0.0.0/0 and ::/0 end approved too (the lab policy would auto-approve those
  anyway, so this checks the run's own verification and idempotence, not that the API call was needed).
- The tailnet inventory plugin lists exactly these two nodes (a filter: the headscale is shared) in the group the
  tag names (sysvinit) with their tailnet addresses, tags and online state; site.yml then runs through it over the
  tailnet, telnet to the 100.x addresses, and changes nothing. The controller reaches 100.x from inside cp-p's
  network namespace (ansible-playbook under `nsenter --net`), whose tailscale0 is a real tailnet interface: the
  lab's stand-in for a controller that is itself a tailnet node. Only the network namespace is entered; files,
  mirror cache and collection are the host's.
- fleetmesh_state=absent with login_remove_node deletes cp-r from headscale; the second absent run changes nothing.

Lab quirk (docs/lab.md): a tailscaled that re-dials the lab's plain-HTTP headscale within 2 minutes is forced to
https on 443 and cut off until it restarts; the test restarts a node's tailscaled after the refused login, and
before the peer/inventory/tailnet checks when headscale reports one of ours offline (reconnect_if_cut_off).

The nodes these tests registered are deleted from headscale at the end (by their cp- hostnames); the shared control
plane stays up.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
]

lab = pytest.importorskip("fleetlab.lab", reason="the fleetlab package (tests/lab) is not installed")

from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _control_api as api  # noqa: E402
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._routes import EXIT_ROUTES  # noqa: E402
from provision_lab import Run, run_site, stop_sessions  # noqa: E402

from fleetlab import control, lan  # noqa: E402
from fleetlab.state import LabError  # noqa: E402
from repo_checkout import REPO, ansible_env  # noqa: E402

ROUTER = "cp-r"
PEER = "cp-p"
NAMES = (ROUTER, PEER)
LAN = "192.168.231.0/24"  # not auto-approved by the lab policy: only the API approval makes it work
TAG = "tag:fleetmesh-sysvinit"
KERNEL = {"networking_mode": "kernel", "iptables_shim_enabled": True}
WAIT = 90.0
# A whole headscale pre-auth key (hskey-auth-<prefix>-<secret>); listings show only "hskey-auth-<prefix>-***".
WHOLE_KEY_RE = re.compile(r"hskey-auth-[A-Za-z0-9_-]{6,}-[A-Za-z0-9_-]{16,}")


@dataclass
class Fleet:
    work: Path
    mirror: str
    control: dict[str, Any]
    client: api.Headscale
    spent_key_id: str
    runs: dict[str, Run]
    devices: dict[str, Any]


def sh(name: str, script: str, timeout: float = 60) -> str:
    proc = lab.exec_(name, ["sh", "-c", script], timeout=timeout)
    return proc.stdout + proc.stderr


def ts_status(name: str) -> dict[str, Any]:
    return json.loads(lab.exec_(name, ["tailscale", "status", "--json"]).stdout or "{}")


def poll(probe: Any, ok: Any, timeout: float = WAIT, every: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(every)


def hs_node(client: api.Headscale, hostname: str) -> dict[str, Any] | None:
    found = [n for n in client.nodes() if n["hostname"] == hostname]
    assert len(found) <= 1, found
    return found[0] if found else None


def key_raw(client: api.Headscale, key_id: str) -> dict[str, Any]:
    listed = client.request("GET", "/preauthkey").get("preAuthKeys") or []
    return next(k for k in listed if str(k["id"]) == str(key_id))


def minted_key_id(output: str) -> str:
    """The id the login task reports under minted_key (the YAML result of the default callback)."""
    found = re.findall(r"minted_key:\n(?:\s+[a-z_]+: .*\n)*?\s+id: '?(\d+)'?", output)
    assert found, output[-3000:]
    return found[-1]


def site(fleet: Fleet, name: str, extra: dict[str, Any]) -> Run:
    start = time.monotonic()
    run = run_site(fleet.devices[name], fleet.work / name, fleet.mirror, extra)
    print(f"timing: site.yml on {name}: {time.monotonic() - start:.0f} s (changed={run.changed})")
    for secret in (fleet.control["api_key"],):
        assert secret not in run.output
    assert not WHOLE_KEY_RE.search(run.output), WHOLE_KEY_RE.search(run.output)
    return run


def restart_tailscaled(name: str) -> None:
    sh(name, "/etc/init.d/tailscaled stop; /etc/init.d/tailscaled start")


def reconnect_if_cut_off(fleet: Fleet) -> None:
    """Lab only: a node whose control session ended is cut off until tailscaled restarts (docs/lab.md: a re-dial
    within 2 minutes is forced to https on 443, which the lab's plain-HTTP headscale does not serve). The shared
    headscale 0.29.2 ends other nodes' map sessions when someone deletes a node (seen in its log: cp-p's long poll
    closed with another engineer's node deletion), so the peer may have lost its session through no step of ours;
    restart it then, and say so. Nothing of the collection is involved."""
    for name in NAMES:
        node = hs_node(fleet.client, name)
        if node is not None and not node["online"]:
            print(f"lab: {name} lost its control session (forced 443 after a re-dial): restarting its tailscaled")
            restart_tailscaled(name)
            poll(lambda name=name: hs_node(fleet.client, name), lambda n: bool(n and n["online"]), 60, 1)


def router_vars(fleet: Fleet) -> dict[str, Any]:
    return {
        **KERNEL,
        "login_auth_key": "",
        "fleetmesh_control": fleet.control,
        "login_mint_key": True,
        "routing_routes": [LAN],
        "routing_advertise_exit_node": True,
        "routing_approve": True,
    }


def peer_vars(key: str) -> dict[str, Any]:
    return {**KERNEL, "login_auth_key": key, "login_accept_routes": True}


@pytest.fixture(scope="module")
def fleet(work: Path, mirror: str) -> Iterator[Fleet]:
    control.up()  # idempotent; the session's lab_control_plane fixture owns its lifetime
    for node in control.nodes():  # leftovers of an interrupted run of this module (our names only)
        if node.get("name") in NAMES and not node.get("online"):
            control.delete_node(int(node["id"]))
    spec = {"type": "headscale", "url": control.CONTROL_URL, "api_key": control.api_key("2h"), "user": "lab"}
    client = api.client(spec)
    assert isinstance(client, api.Headscale)
    devices: dict[str, Any] = {}
    try:
        for name in NAMES:
            lab.down(name)
            devices[name] = lab.up(name, "sysvinit")
            (work / name).mkdir(exist_ok=True)
        lan.attach(ROUTER, LAN)
        # The "vault" key of the peer: single-use, short-lived, minted with the collection's client.
        spent = client.mint_key(tags=[TAG], expiry_seconds=600)
        fleet = Fleet(work, mirror, spec, client, spent["id"], {}, devices)
        fleet.runs["peer"] = site(fleet, PEER, peer_vars(spent["key"]))
        assert fleet.runs["peer"].rc == 0, fleet.runs["peer"].output[-4000:]
        # The router tries the key the peer spent, then mints its own.
        fleet.runs["reuse"] = site(
            fleet, ROUTER, {**router_vars(fleet), "login_mint_key": False, "login_auth_key": spent["key"]}
        )
        # The lab's plain-HTTP control on a non-private address (docs/lab.md): a dial within 2 minutes of the last
        # one is forced to https on 443, which is not served, so the failed login would cut the next one off until
        # tailscaled restarts. Restarting it stands in for the 2 minutes a real fleet would not even notice.
        restart_tailscaled(ROUTER)
        fleet.runs["router"] = site(fleet, ROUTER, router_vars(fleet))
        yield fleet
    finally:
        for name in NAMES:
            stop_sessions(work / name / "cp")
            (work / name / "inventory.yml").unlink(missing_ok=True)  # holds the API key
        stop_sessions(work / "tailnet-cp")
        for name in NAMES:
            lab.down(name)
        try:
            control.forget(NAMES)
        except LabError as exc:
            print(f"cleanup: {exc}")


def test_a_spent_key_is_refused_to_a_second_device(fleet: Fleet) -> None:
    assert key_raw(fleet.client, fleet.spent_key_id)["used"] is True
    reuse = fleet.runs["reuse"]
    assert reuse.rc != 0 and reuse.failed == 1, reuse.output[-3000:]
    assert "Bring Tailscale login and prefs to the declared state" in reuse.output
    assert re.search(r"(?i)(already used|invalid|expired|authkey|auth key)", reuse.output), reuse.output[-3000:]
    peer = hs_node(fleet.client, PEER)
    assert peer is not None and peer["raw"]["preAuthKey"]["id"] == fleet.spent_key_id, peer


def test_the_router_logs_in_with_a_key_minted_for_it_and_spent(fleet: Fleet) -> None:
    run = fleet.runs["router"]
    assert run.rc == 0 and run.failed == 0, run.output[-4000:]
    assert ts_status(ROUTER)["BackendState"] == "Running"
    key_id = minted_key_id(run.output)
    assert key_id != fleet.spent_key_id
    node = hs_node(fleet.client, ROUTER)
    assert node is not None and node["raw"]["preAuthKey"]["id"] == key_id, node
    assert node["tags"] == [TAG], node
    raw = key_raw(fleet.client, key_id)
    assert raw["used"] is True and raw["reusable"] is False and raw["aclTags"] == [TAG], raw
    expiration = api.parse_time(raw["expiration"])
    assert expiration is not None and expiration <= api._dt.datetime.now(api._dt.UTC), raw


def test_the_routes_and_exit_node_are_approved_through_the_api_and_primary(fleet: Fleet) -> None:
    node = hs_node(fleet.client, ROUTER)
    assert node is not None
    routes = sorted([LAN, *EXIT_ROUTES])  # the subnet route and the exit node
    assert node["advertised_routes"] == routes and node["approved_routes"] == routes, node
    # Served from cp-r (headscale 0.29 lists the exit routes among a node's subnetRoutes too).
    assert node["primary_routes"] == routes, node


def test_the_peer_reaches_the_lan_behind_the_router(fleet: Fleet) -> None:
    reconnect_if_cut_off(fleet)
    info = lan.plan(ROUTER, LAN)
    route = poll(lambda: sh(PEER, f"ip route get {info['host_address']}"), lambda out: "dev tailscale0" in out)
    status = ts_status(PEER)
    # When it fails, say whether cp-p knows cp-r at all and whether it still hears from the control server.
    why = {
        "router_as_peer": next(
            ({k: p.get(k) for k in ("TailscaleIPs", "AllowedIPs", "PrimaryRoutes", "Online")}
             for p in (status.get("Peer") or {}).values() if p.get("HostName") == ROUTER),
            None,
        ),
        "router_ips": ts_status(ROUTER)["Self"]["TailscaleIPs"],
        "peer_health": status.get("Health"),
        "table52": sh(PEER, "ip route show table 52"),
    }  # fmt: skip
    assert "dev tailscale0" in route, (route, why)
    answer = poll(
        lambda: sh(PEER, f"(echo cp-probe; sleep 2) | nc -w 10 {info['host_address']} {lan.ECHO_PORT} 2>&1"),
        lambda out: "echo: cp-probe" in out,
    )
    assert f"hello from {lan.netns_name(ROUTER)} to {info['device_address']}\n" in answer, answer


def tailnet_inventory(fleet: Fleet) -> tuple[Path, Path]:
    """The plugin's file (no credential in it) and the hosts' own vars from their door runs, without the door."""
    root = fleet.work / "tailnet-inv"
    root.mkdir(exist_ok=True)
    plugin = root / "cp.tailnet.yml"
    names = ", ".join(f"'{n}'" for n in NAMES)
    plugin.write_text(
        yaml.safe_dump(
            {
                "plugin": "fleetmesh.tailscale.tailnet",
                "source": "headscale",
                "url": control.CONTROL_URL,
                "filter": f"contains([{names}], name)",
                "groups": {"reachable": "tailnet_online"},
                "keyed_groups": [{"key": "tailnet_profile", "prefix": "profile"}],
            }
        )
    )
    hosts = {}
    for name in NAMES:
        door = yaml.safe_load((fleet.work / name / "inventory.yml").read_text())["sysvinit"]["hosts"][name]
        door.pop("ansible_host")  # the plugin's tailnet address takes its place
        door["fleetmesh_telnet_control_path_dir"] = str(fleet.work / "tailnet-cp")
        hosts[name] = door
    static = root / "hosts.yml"
    fd = os.open(static, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump({"all": {"hosts": hosts}}, out)
    return plugin, static


def ansible(fleet: Fleet, argv: list[str], *, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    home = fleet.work / "home"
    home.mkdir(exist_ok=True)
    env = ansible_env(
        home, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), FLEETMESH_CONTROL_API_KEY=fleet.control["api_key"]
    )
    prefix = ["nsenter", f"--net=/run/netns/{netns}", "--"] if netns else []
    return subprocess.run([*prefix, *argv], env=env, capture_output=True, text=True, timeout=600, check=False, cwd=REPO)


def plain(value: Any) -> Any:
    """ansible-inventory's JSON without its trust markers (values from an inventory source come out untrusted)."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def test_the_tailnet_inventory_lists_exactly_these_nodes(fleet: Fleet) -> None:
    reconnect_if_cut_off(fleet)
    plugin, _static = tailnet_inventory(fleet)
    proc = ansible(fleet, ["ansible-inventory", "-i", str(plugin), "--list"])
    assert proc.returncode == 0 and "Failed to parse" not in proc.stderr, proc.stderr
    listed = plain(json.loads(proc.stdout))
    assert sorted(listed["_meta"]["hostvars"]) == sorted(NAMES), listed
    assert sorted(listed["sysvinit"]["hosts"]) == sorted(NAMES), listed  # from tag:fleetmesh-sysvinit
    assert sorted(listed["reachable"]["hosts"]) == sorted(NAMES), listed  # groups
    assert sorted(listed["profile_sysvinit"]["hosts"]) == sorted(NAMES), listed  # keyed_groups
    for name in NAMES:
        hv = listed["_meta"]["hostvars"][name]
        ips = ts_status(name)["Self"]["TailscaleIPs"]
        assert hv["ansible_host"] == next(ip for ip in ips if "." in ip) == hv["tailnet_ipv4"], hv
        assert hv["tailnet_ipv6"] == next(ip for ip in ips if ":" in ip), hv
        assert hv["tailnet_tags"] == [TAG] and hv["tailnet_profile"] == "sysvinit", hv
        assert hv["tailnet_online"] is True and hv["tailnet_hostname"] == name, hv
    assert listed["_meta"]["hostvars"][ROUTER]["tailnet_primary_routes"] == sorted([LAN, *EXIT_ROUTES])
    assert fleet.control["api_key"] not in proc.stdout + proc.stderr


def test_site_over_the_tailnet_changes_nothing(fleet: Fleet) -> None:
    reconnect_if_cut_off(fleet)
    plugin, static = tailnet_inventory(fleet)
    start = time.monotonic()
    proc = ansible(
        fleet,
        ["ansible-playbook", "-vvv", "-i", str(static), "-i", str(plugin), str(REPO / "playbooks/site.yml")],
        netns=f"fleetlab-{PEER}",
    )
    print(f"timing: site.yml over the tailnet on {', '.join(NAMES)}: {time.monotonic() - start:.0f} s")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for name in NAMES:
        ipv4 = next(ip for ip in ts_status(name)["Self"]["TailscaleIPs"] if "." in ip)
        assert re.search(rf"^{re.escape(name)}\s+: ok=\d+\s+changed=0\s+unreachable=0\s+failed=0", out, re.M), out[
            -3000:
        ]
        # The play really went over the tailnet: telnet to the node's 100.x address, never to the door.
        assert ipv4.startswith("100.") and f"ESTABLISH TELNET CONNECTION FOR USER: root TO {ipv4}:23" in out
    assert "TO 198.18." not in out
    assert "minted_key" not in out or "minted_key: null" in out
    assert fleet.control["api_key"] not in out


def test_absent_deletes_the_node_from_headscale(fleet: Fleet) -> None:
    assert hs_node(fleet.client, ROUTER) is not None
    absent = {**router_vars(fleet), "fleetmesh_state": "absent", "login_remove_node": True}
    first = site(fleet, ROUTER, absent)
    assert first.rc == 0 and first.changed > 0, first.output[-4000:]
    assert hs_node(fleet.client, ROUTER) is None
    assert hs_node(fleet.client, PEER) is not None  # only the router's node went
    second = site(fleet, ROUTER, absent)
    assert second.rc == 0 and second.changed == 0, second.output[-4000:]
