"""control_routes, control_node and tailscale_prefs' key minting, run in-process with the control server faked at
its HTTP boundary (tests/fake_control.py) and the device faked at the connection (as test_tailscale_prefs.py)."""

from __future__ import annotations

import json
import typing as t

import action_harness
import pytest
from ansible.errors import AnsibleActionFail
from ansible_collections.fleetmesh.tailscale.plugins.action import control_node, control_routes
from fake_control import HS_API_KEY, HS_URL, FakeControl, hs_node
from test_tailscale_prefs import FRESH, LOGGED_IN, FakeDevice

HS = {"type": "headscale", "url": HS_URL, "api_key": HS_API_KEY, "user": "lab"}
LAN = "192.168.225.0/24"


class NoDevice:
    """A connection nobody may use: these actions run on the controller only."""

    def execute(self, cmd: str, **_kw: t.Any) -> dict[str, t.Any]:
        raise AssertionError(f"a controller-side action ran {cmd!r} on the device")


@pytest.fixture(autouse=True)
def no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control_routes, "POLL", 0.01)


def routes(fake: FakeControl, args: dict[str, t.Any], check: bool = False) -> dict[str, t.Any]:
    with fake.installed():
        return action_harness.run_action("control_routes", NoDevice(), {"control": HS, **args}, check=check, diff=True)


def test_routes_are_approved_once_then_nothing_to_do() -> None:
    fake = FakeControl()
    fake.hs_nodes = [hs_node(4, "quec1", availableRoutes=[LAN, "0.0.0.0/0", "::/0"])]
    args = {"node_key": "nodekey:04", "routes": [LAN], "exit_node": True, "wait": 1}
    first = routes(fake, args)
    wanted = ["0.0.0.0/0", LAN, "::/0"]
    assert first["changed"] is True and first["approved_routes"] == wanted
    assert first["diff"]["before"] == {"approved_routes": []}
    approve = [r for r in fake.requests if r["path"] == "/api/v1/node/4/approve_routes"]
    assert [r["body"] for r in approve] == [{"routes": wanted}]
    assert first["primary_checked"] is True and first["not_primary"] == []
    posts = len(fake.calls("POST"))
    second = routes(fake, args)
    assert second["changed"] is False and len(fake.calls("POST")) == posts


def test_check_mode_approves_nothing() -> None:
    fake = FakeControl()
    fake.hs_nodes = [hs_node(4, "quec1", availableRoutes=[LAN])]
    result = routes(fake, {"hostname": "quec1", "routes": [LAN], "wait": 1}, check=True)
    assert result["changed"] is True and fake.calls("POST") == []


def test_unannounced_route_fails_and_approves_nothing() -> None:
    fake = FakeControl()
    fake.hs_nodes = [hs_node(4, "quec1", availableRoutes=[])]
    with pytest.raises(AnsibleActionFail, match=r"node quec1 does not announce 192\.168\.225\.0/24"):
        routes(fake, {"node_key": "nodekey:04", "routes": [LAN], "wait": 0})
    assert fake.calls("POST") == []


def test_a_route_served_from_another_router_fails_unless_allowed() -> None:
    fake = FakeControl()
    fake.primary_elsewhere = True
    fake.hs_nodes = [hs_node(4, "quec1", availableRoutes=[LAN])]
    with pytest.raises(AnsibleActionFail, match=r"served from another node \(not primary on quec1\)"):
        routes(fake, {"node_key": "nodekey:04", "routes": [LAN], "wait": 0})
    result = routes(fake, {"node_key": "nodekey:04", "routes": [LAN], "wait": 0, "require_primary": False})
    assert result["changed"] is False and result["not_primary"] == [LAN]


def test_unset_parts_keep_what_is_approved() -> None:
    assert control_routes.wanted_routes(["10.0.0.0/8", "0.0.0.0/0", "::/0"], None, False) == ["10.0.0.0/8"]
    assert control_routes.wanted_routes(["10.0.0.0/8", "0.0.0.0/0", "::/0"], [], None) == ["0.0.0.0/0", "::/0"]


def test_node_removal_deletes_once_and_check_mode_deletes_nothing() -> None:
    fake = FakeControl()
    fake.hs_nodes = [hs_node(4, "quec1"), hs_node(5, "kobo1")]
    with fake.installed():
        args = {"control": HS, "node_key": "nodekey:04", "state": "absent"}
        checked = action_harness.run_action("control_node", NoDevice(), args, check=True)
        assert checked["changed"] is True and fake.calls("DELETE") == []
        first = action_harness.run_action("control_node", NoDevice(), args)
        second = action_harness.run_action("control_node", NoDevice(), args)
    assert first["changed"] is True and [n["name"] for n in first["nodes"]] == ["quec1"]
    assert fake.calls("DELETE") == ["DELETE /api/v1/node/4"]
    assert second["changed"] is False and [n["id"] for n in fake.hs_nodes] == ["5"]


def test_online_wait_reports_what_it_saw_and_never_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control_node, "POLL", 0.01)
    fake = FakeControl()
    args = {"control": HS, "node_key": "nodekey:04", "online_timeout": 1}
    with fake.installed():
        missing = action_harness.run_action("control_node", NoDevice(), args)
        fake.hs_nodes = [hs_node(4, "quec1", online=False)]
        offline = action_harness.run_action("control_node", NoDevice(), args)
        fake.fail[("GET", "/api/v1/node")] = (502, "bad gateway")
        down = action_harness.run_action("control_node", NoDevice(), args)
        del fake.fail[("GET", "/api/v1/node")]
        fake.hs_nodes = [hs_node(4, "quec1")]
        online = action_harness.run_action("control_node", NoDevice(), args)
    assert (missing["online"], missing["msg"], missing.get("failed")) == (False, "not listed", None)
    assert missing["attempts"] > 1  # it waited
    assert (offline["online"], offline["msg"]) == (False, "listed offline")
    assert down["online"] is False and down["msg"].startswith("no answer: ") and "502" in down["msg"]
    assert (online["online"], online["msg"], online["attempts"]) == (True, "listed online", 1)
    assert [n["name"] for n in online["nodes"]] == ["quec1"] and online["changed"] is False
    assert fake.calls("DELETE") == []


def test_online_wait_is_for_state_present_only() -> None:
    with FakeControl().installed(), pytest.raises(AnsibleActionFail, match="state=present only"):
        action_harness.run_action(
            "control_node",
            NoDevice(),
            {"control": HS, "node_key": "nodekey:04", "online_timeout": 5, "state": "absent"},
        )


def test_node_removal_by_an_ambiguous_hostname_fails() -> None:
    fake = FakeControl()
    fake.hs_nodes = [hs_node(4, "quec1"), hs_node(5, "quec1", givenName="quec1-x")]
    with fake.installed(), pytest.raises(AnsibleActionFail, match="hostname quec1 matches several nodes"):
        action_harness.run_action("control_node", NoDevice(), {"control": HS, "hostname": "quec1", "state": "absent"})
    assert fake.calls("DELETE") == []


def test_secrets_are_no_log_in_the_argument_specs() -> None:
    spec = control_routes.ARGUMENT_SPEC["control"]["options"]
    assert spec["api_key"]["no_log"] is True and spec["oauth_client_secret"]["no_log"] is True


# ------------------------------------------------------------------------------------- tailscale_prefs minting

MINT = {"control": HS, "mint_key": {"tags": ["tag:fleetmesh-kobo"], "expiry": 300}}


def test_a_node_that_needs_login_gets_a_minted_key_as_a_file_and_it_is_expired_after() -> None:
    fake = FakeControl()
    device = FakeDevice("NeedsLogin", FRESH, after=("Running", LOGGED_IN))
    with fake.installed():
        result = action_harness.run_action("tailscale_prefs", device, {**MINT, "hostname": "alpha"})
    assert result["changed"] and result["command"] == "up" and result["backend_state"] == "Running"
    minted = fake.hs_keys[0]
    assert [text.strip() for _l, _r, text, _m in device.put] == [minted["key"]]
    assert fake.calls() == [
        "GET /api/v1/user",
        "POST /api/v1/preauthkey",
        "POST /api/v1/preauthkey/expire",
        "GET /api/v1/preauthkey",
    ]
    assert (
        fake.requests[1]["body"]["aclTags"] == ["tag:fleetmesh-kobo"] and fake.requests[1]["body"]["reusable"] is False
    )
    assert result["minted_key"]["id"] == "1" and result["minted_key"]["expired"] is True
    text = json.dumps(result)
    assert minted["key"] not in text and HS_API_KEY not in text
    assert all(minted["key"] not in s for s in device.scripts)


def test_a_logged_in_node_gets_no_key() -> None:
    fake = FakeControl()
    device = FakeDevice("Running", LOGGED_IN)
    with fake.installed():
        result = action_harness.run_action("tailscale_prefs", device, {**MINT, "hostname": "alpha"})
    assert result["changed"] is False and result["minted_key"] is None and fake.requests == []


def test_check_mode_mints_nothing() -> None:
    fake = FakeControl()
    device = FakeDevice("NeedsLogin", FRESH)
    with fake.installed():
        result = action_harness.run_action("tailscale_prefs", device, {**MINT, "hostname": "alpha"}, check=True)
    assert result["changed"] is True and fake.requests == [] and device.put == []


def test_a_refused_login_still_expires_the_minted_key() -> None:
    fake = FakeControl()
    device = FakeDevice("NeedsLogin", FRESH)
    device.up_rc = 1
    device.up_out = "backend error: invalid key"
    with fake.installed(), pytest.raises(AnsibleActionFail, match=r"tailscale up failed"):
        action_harness.run_action("tailscale_prefs", device, {**MINT, "hostname": "alpha"})
    assert "POST /api/v1/preauthkey/expire" in fake.calls()


def test_mint_key_with_an_auth_key_is_refused_before_anything_runs() -> None:
    fake = FakeControl()
    device = FakeDevice("NeedsLogin", FRESH)
    with fake.installed(), pytest.raises(AnsibleActionFail, match="mint_key needs control"):
        action_harness.run_action("tailscale_prefs", device, {**MINT, "auth_key": "tskey-auth-x"})
    assert fake.requests == [] and device.scripts == []


@pytest.mark.parametrize("name", ["control_routes", "control_node"])
def test_control_is_required(name: str) -> None:
    fake = FakeControl()
    with fake.installed(), pytest.raises(AnsibleActionFail, match=f"{name} needs control"):
        action_harness.run_action(name, NoDevice(), {"node_key": "nodekey:04"})
    assert fake.requests == []
