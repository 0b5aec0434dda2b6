"""_prefs: the planner picks nothing / set / up like cmd/tailscale/cli/up.go demands (routes: test_routes.py)."""

from __future__ import annotations

import json

import pytest
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._prefs import (
    AUTH_KEY_PLACEHOLDER,
    PrefsError,
    current_flags,
    desired_flags,
    parse_json,
    plan,
    render_config,
)

# `tailscale debug prefs` of a fresh node (ControlURL empty, as real fresh nodes report it), trimmed.
FRESH_PREFS = {
    "ControlURL": "",
    "RouteAll": False,
    "ExitNodeIP": "",
    "CorpDNS": True,
    "RunSSH": False,
    "WantRunning": False,
    "LoggedOut": False,
    "ShieldsUp": False,
    "AdvertiseTags": None,
    "Hostname": "",
    "AdvertiseRoutes": None,
    "NoSNAT": False,
    "NoStatefulFiltering": True,
    "NetfilterMode": 2,
}
RUNNING_PREFS = {
    **FRESH_PREFS,
    "ControlURL": "https://controlplane.tailscale.com",
    "CorpDNS": False,
    "WantRunning": True,
    "Hostname": "alpha",
    "AdvertiseRoutes": ["10.1.0.0/16"],
}
NEEDS_LOGIN = {"BackendState": "NeedsLogin"}
RUNNING = {"BackendState": "Running"}


def _plan(status: dict, prefs: dict, options: dict, have_key: bool = True, **kw):
    return plan(status, prefs, desired_flags(options), timeout="30s", have_key=have_key, **kw)


def test_fresh_node_logs_in_with_up_key_file_and_timeout() -> None:
    p = _plan(NEEDS_LOGIN, FRESH_PREFS, {"hostname": "alpha", "accept_dns": False})
    assert p.verb == "up" and p.needs_key
    assert p.args == [
        "up",
        "--accept-dns=false",
        "--hostname=alpha",
        f"--auth-key=file:{AUTH_KEY_PLACEHOLDER}",
        "--timeout=30s",
    ]


def test_nostate_counts_as_needing_login() -> None:
    assert _plan({"BackendState": "NoState"}, FRESH_PREFS, {"hostname": "a"}).verb == "up"


def test_login_without_key_is_a_clear_error() -> None:
    with pytest.raises(PrefsError, match=r"NeedsLogin: log in, but no auth key was given"):
        _plan(NEEDS_LOGIN, FRESH_PREFS, {"hostname": "alpha"}, have_key=False)


def test_matching_node_does_nothing() -> None:
    p = _plan(RUNNING, RUNNING_PREFS, {"hostname": "alpha", "accept_dns": False, "advertise_routes": ["10.1.0.0/16"]})
    assert p.verb == "none" and not p.changed and p.args == []


def test_hostname_drift_is_repaired_with_set_not_up() -> None:
    p = _plan(RUNNING, {**RUNNING_PREFS, "Hostname": "drift"}, {"hostname": "alpha", "accept_dns": False})
    assert p.args == ["set", "--hostname=alpha"]
    assert not p.needs_key
    assert p.changes == {"hostname": {"before": "drift", "after": "alpha"}}


def test_adding_a_route_uses_set_with_the_full_canonical_list() -> None:
    p = _plan(RUNNING, RUNNING_PREFS, {"advertise_routes": ["FD00:0::/64", "10.1.0.0/16", "192.168.225.0/24"]})
    assert p.args == ["set", "--advertise-routes=10.1.0.0/16,192.168.225.0/24,fd00::/64"]


def test_empty_route_list_withdraws_all_routes_unset_leaves_them() -> None:
    assert _plan(RUNNING, RUNNING_PREFS, {"advertise_routes": []}).args == ["set", "--advertise-routes="]
    assert _plan(RUNNING, RUNNING_PREFS, {"advertise_routes": None}).verb == "none"


def test_exit_routes_are_the_exit_node_flag_not_routes() -> None:
    prefs = {**RUNNING_PREFS, "AdvertiseRoutes": ["10.1.0.0/16", "0.0.0.0/0", "::/0"]}
    assert current_flags(prefs)["advertise-exit-node"] is True
    assert current_flags(prefs)["advertise-routes"] == ["10.1.0.0/16"]
    assert _plan(RUNNING, prefs, {"advertise_routes": ["10.1.0.0/16"], "advertise_exit_node": True}).verb == "none"
    assert _plan(RUNNING, prefs, {"advertise_exit_node": False}).args == ["set", "--advertise-exit-node=false"]


def test_tag_change_reauths_with_key_and_force_reauth_and_mentions_every_non_default_flag() -> None:
    # ssh was turned on behind Ansible's back: unmanaged, but the up checker demands it be mentioned.
    prefs = {**RUNNING_PREFS, "RunSSH": True}
    p = _plan(RUNNING, prefs, {"advertise_tags": ["tag:iot"], "hostname": "alpha"})
    assert p.verb == "up" and p.needs_key
    # Without --force-reauth a logged-in node keeps its key: the server never sees the auth key or new tags.
    assert p.args == [
        "up",
        "--accept-dns=false",
        "--advertise-routes=10.1.0.0/16",
        "--advertise-tags=tag:iot",
        "--hostname=alpha",
        "--ssh=true",
        f"--auth-key=file:{AUTH_KEY_PLACEHOLDER}",
        "--force-reauth",
        "--timeout=30s",
    ]
    assert "--reset" not in p.args


# `tailscale status --json` of a node registered with a pre-auth key tagged tag:fleetmesh-kobo (headscale gives
# it the key's tags; the AdvertiseTags pref stays null): trimmed.
TAGGED_RUNNING = {"BackendState": "Running", "Self": {"PublicKey": "nodekey:ab", "Tags": ["tag:fleetmesh-kobo"]}}


def test_tags_are_the_ones_the_server_granted_not_the_pref() -> None:
    # The node has the key's tags: nothing to do, although the AdvertiseTags pref is empty.
    assert _plan(TAGGED_RUNNING, RUNNING_PREFS, {"advertise_tags": ["tag:fleetmesh-kobo"]}).verb == "none"
    # The pref asked for tag:iot but the server did not grant it: the node still differs, and says from what.
    asked = {**RUNNING_PREFS, "AdvertiseTags": ["tag:iot"]}
    p = _plan(TAGGED_RUNNING, asked, {"advertise_tags": ["tag:iot"]})
    assert p.verb == "up" and "--force-reauth" in p.args
    assert p.changes == {"advertise-tags": {"before": ["tag:fleetmesh-kobo"], "after": ["tag:iot"]}}
    # An untagged logged-in node has no Tags key: no tags.
    untagged = {"BackendState": "Running", "Self": {"PublicKey": "nodekey:ab"}}
    assert _plan(untagged, asked, {"advertise_tags": ["tag:iot"]}).changes["advertise-tags"]["before"] == []
    assert _plan(untagged, RUNNING_PREFS, {"advertise_tags": []}).verb == "none"


def test_tags_on_a_first_login_need_no_force_reauth() -> None:
    p = _plan(NEEDS_LOGIN, FRESH_PREFS, {"advertise_tags": ["tag:iot"]})
    assert "--advertise-tags=tag:iot" in p.args and "--force-reauth" not in p.args


def test_login_server_change_adds_force_reauth() -> None:
    p = _plan(RUNNING, RUNNING_PREFS, {"login_server": "https://headscale.example.org/"})
    assert "--login-server=https://headscale.example.org" in p.args
    assert "--force-reauth" in p.args and p.needs_key


def test_login_server_synonyms_and_empty_control_url_are_the_default() -> None:
    assert _plan(RUNNING, RUNNING_PREFS, {"login_server": "https://login.tailscale.com"}).verb == "none"
    fresh_running = {**RUNNING_PREFS, "ControlURL": ""}
    assert _plan(RUNNING, fresh_running, {"login_server": "https://controlplane.tailscale.com"}).verb == "none"


def test_set_flags_on_a_node_awaiting_approval_need_no_key() -> None:
    p = _plan({"BackendState": "NeedsMachineAuth"}, RUNNING_PREFS, {"hostname": "beta"}, have_key=False)
    assert p.args == ["set", "--hostname=beta"] and p.backend_state == "NeedsMachineAuth"


def test_stopped_node_is_brought_up_without_a_key() -> None:
    p = _plan({"BackendState": "Stopped"}, {**RUNNING_PREFS, "WantRunning": False}, {"hostname": "alpha"}, False)
    assert p.verb == "up" and not p.needs_key
    assert not any(a.startswith("--auth-key") for a in p.args)
    assert "--accept-dns=false" in p.args  # non-default, so the up checker needs it


def test_extra_up_args_and_reset_go_before_the_timeout() -> None:
    p = _plan(NEEDS_LOGIN, FRESH_PREFS, {}, extra_up_args=["--operator=kobo"], reset=True)
    assert p.args[-3:] == ["--reset", "--operator=kobo", "--timeout=30s"]


def test_a_bad_route_is_a_prefs_error_naming_it() -> None:
    with pytest.raises(PrefsError, match="has host bits set"):
        desired_flags({"advertise_routes": ["10.1.2.3/16"]})


def test_bad_tags_are_refused() -> None:
    with pytest.raises(PrefsError, match="tag:NAME"):
        desired_flags({"advertise_tags": ["iot"]})


def test_config_file_rendering_has_no_key_and_matches_the_options() -> None:
    conf = json.loads(
        render_config(
            {
                "hostname": "q1",
                "accept_dns": False,
                "advertise_routes": ["192.168.225.0/24"],
                "snat_subnet_routes": False,
            },
            "/usrdata/tailscale/authkey",
        )
    )
    assert conf == {
        "Version": "alpha0",
        "Locked": False,
        "Enabled": True,
        "AuthKey": "file:/usrdata/tailscale/authkey",
        "Hostname": "q1",
        "acceptDNS": False,  # the json tag of ipn.ConfigVAlpha.AcceptDNS
        "AdvertiseRoutes": ["192.168.225.0/24"],
        "DisableSNAT": True,
    }
    with pytest.raises(PrefsError, match="alpha0"):
        render_config({"advertise_tags": ["tag:a"]})


def test_parse_json_skips_warnings_before_the_object_and_names_the_command() -> None:
    assert parse_json('Warning: client version "1" != tailscaled server version "2"\n{"A": 1}', "x") == {"A": 1}
    with pytest.raises(PrefsError, match="tailscale status --json: no JSON"):
        parse_json("failed to connect to local tailscaled", "tailscale status --json")
