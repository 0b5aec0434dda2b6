# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to the fleetmesh.tailscale collection: not a public API, may change without notice.

Pure logic of the tailscale_prefs action: compare the node's truth (`tailscale status --json` and
`tailscale debug prefs`) with the desired state and plan the least command that closes the gap:

- nothing, when every managed pref matches;
- `tailscale set <only the differing flags>`, for prefs `set` can change on a logged-in node (no re-auth);
- `tailscale up` with the auth key, only when the node needs login, or when the login server or the advertised tags
  must change (the flags `set` does not have). `up` then mentions every managed flag and every other non-default
  pref the node has, so Tailscale's "requires mentioning all non-default flags" check passes without `--reset`
  (which would silently drop prefs this collection does not manage). A login-server change on a logged-in node
  adds `--force-reauth`, as `cmd/tailscale/cli/up.go` demands; so does a tag change: without it the node keeps its
  node key and the server takes the register request for a refresh of the existing login (headscale v0.29:
  "Existing node re-registering with same NodeKey", nothing re-evaluated).

The node's tags are the ones the control server gave it (`Self.Tags` in `tailscale status --json`), not the
`AdvertiseTags` pref, which is only a request: headscale gives a node registered with a pre-auth key the key's tags
(it refuses `--advertise-tags` at that first registration and ignores it on a re-authentication).

Validates the advertised routes with _routes.py and renders tailscaled's declarative `--config` file (version alpha0).
No I/O here: everything is unit-tested on recorded JSON.
"""

from __future__ import annotations

import json
import typing as t
from dataclasses import dataclass, field

from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._routes import (
    EXIT_ROUTES,
    RouteError,
    normalize_routes,
)

DEFAULT_CONTROL_URL = "https://controlplane.tailscale.com"
# up.go treats these two as the same server (isLoginServerSynonym).
LOGIN_SYNONYMS = frozenset({DEFAULT_CONTROL_URL, "https://login.tailscale.com"})
NETFILTER_MODES = {0: "off", 1: "nodivert", 2: "on"}
# Backend states in which the node has no usable login: only then (or for a server/tags change) is the key used.
LOGIN_STATES = frozenset({"NeedsLogin", "NoState", ""})

# Flags of `tailscale up`'s "up checker" (prefsToFlags), with the CLI's default values. A current value that differs
# from its default must be mentioned on any `up` that changes settings.
UP_DEFAULTS: dict[str, t.Any] = {
    "accept-dns": True,
    "accept-routes": False,
    "advertise-connector": False,
    "advertise-exit-node": False,
    "advertise-routes": [],
    "advertise-tags": [],
    "exit-node": "",
    "exit-node-allow-lan-access": False,
    "hostname": "",
    "login-server": DEFAULT_CONTROL_URL,
    "netfilter-mode": "on",
    "operator": "",
    "report-posture": False,
    "shields-up": False,
    "snat-subnet-routes": True,
    "ssh": False,
    "stateful-filtering": False,
}
# Managed flags that only `up` can change (not `set` flags).
UP_ONLY = frozenset({"login-server", "advertise-tags"})
# Desired-state keys (module options) and the CLI flag each one drives.
OPTION_FLAGS: dict[str, str] = {
    "login_server": "login-server",
    "hostname": "hostname",
    "accept_dns": "accept-dns",
    "accept_routes": "accept-routes",
    "ssh": "ssh",
    "shields_up": "shields-up",
    "advertise_routes": "advertise-routes",
    "advertise_exit_node": "advertise-exit-node",
    "advertise_tags": "advertise-tags",
    "snat_subnet_routes": "snat-subnet-routes",
    "netfilter_mode": "netfilter-mode",
}


class PrefsError(ValueError):
    """Desired state that cannot be applied (bad route, bad tag, ...): raised before anything touches a device."""


def _same_server(a: str, b: str) -> bool:
    a, b = (a or DEFAULT_CONTROL_URL).rstrip("/"), (b or DEFAULT_CONTROL_URL).rstrip("/")
    return a == b or (a in LOGIN_SYNONYMS and b in LOGIN_SYNONYMS)


def current_flags(prefs: dict[str, t.Any]) -> dict[str, t.Any]:
    """The node's prefs in CLI-flag terms (prefsToFlags in up.go)."""
    routes = [str(r) for r in prefs.get("AdvertiseRoutes") or []]
    connector = prefs.get("AppConnector") or {}
    return {
        "accept-dns": bool(prefs.get("CorpDNS", True)),
        "accept-routes": bool(prefs.get("RouteAll", False)),
        "advertise-connector": bool(connector.get("Advertise", False)),
        "advertise-exit-node": all(r in routes for r in EXIT_ROUTES),
        "advertise-routes": sorted(r for r in routes if r not in EXIT_ROUTES),
        "advertise-tags": sorted(str(tag) for tag in prefs.get("AdvertiseTags") or []),
        "exit-node": str(prefs.get("ExitNodeIP") or ""),
        "exit-node-allow-lan-access": bool(prefs.get("ExitNodeAllowLANAccess", False)),
        "hostname": str(prefs.get("Hostname") or ""),
        "login-server": str(prefs.get("ControlURL") or "") or DEFAULT_CONTROL_URL,
        "netfilter-mode": NETFILTER_MODES.get(prefs.get("NetfilterMode", 2), "on"),
        "operator": str(prefs.get("OperatorUser") or ""),
        "report-posture": bool(prefs.get("PostureChecking", False)),
        "shields-up": bool(prefs.get("ShieldsUp", False)),
        "snat-subnet-routes": not prefs.get("NoSNAT", False),
        "ssh": bool(prefs.get("RunSSH", False)),
        "stateful-filtering": not prefs.get("NoStatefulFiltering", True),
    }


def node_tags(status: dict[str, t.Any]) -> list[str] | None:
    """The ACL tags the control server gave a logged-in node (`Self.Tags`, absent when it has none); None when the
    node has no login, so there is nothing the server decided yet."""
    if str(status.get("BackendState") or "") in LOGIN_STATES:
        return None
    node = status.get("Self")
    if not isinstance(node, dict):
        return None
    return sorted(str(tag) for tag in node.get("Tags") or [])


def truth_flags(status: dict[str, t.Any], prefs: dict[str, t.Any]) -> dict[str, t.Any]:
    """What the node has, in flag terms: the prefs, except the tags, which are what the control server granted."""
    truth = current_flags(prefs)
    tags = node_tags(status)
    if tags is not None:
        truth["advertise-tags"] = tags
    return truth


def desired_flags(options: dict[str, t.Any]) -> dict[str, t.Any]:
    """Managed flags from the module options; an option left at None is not managed (left alone)."""
    wanted: dict[str, t.Any] = {}
    for option, flag in OPTION_FLAGS.items():
        value = options.get(option)
        if value is None:
            continue
        if option == "advertise_routes":
            try:
                value = normalize_routes(value)
            except RouteError as exc:
                raise PrefsError(str(exc)) from None
        elif option == "advertise_tags":
            value = sorted(str(tag) for tag in value)
            for tag in value:
                if not tag.startswith("tag:") or len(tag) < 5:
                    raise PrefsError(f"tag {tag!r} must look like tag:NAME")
        elif option == "login_server":
            value = str(value).rstrip("/")
        elif option == "netfilter_mode" and value not in NETFILTER_MODES.values():
            raise PrefsError(f"netfilter_mode {value!r} must be one of on, nodivert, off")
        elif isinstance(value, bool):
            pass
        else:
            value = str(value)
        wanted[flag] = value
    return wanted


def _equal(flag: str, current: t.Any, wanted: t.Any) -> bool:
    if flag == "login-server":
        return _same_server(current, wanted)
    return current == wanted


def fmt_flag(flag: str, value: t.Any) -> str:
    """One `--flag=value` argument (lists comma-joined, booleans as true/false)."""
    if isinstance(value, bool):
        return f"--{flag}={'true' if value else 'false'}"
    if isinstance(value, list):
        return f"--{flag}={','.join(value)}"
    return f"--{flag}={value}"


@dataclass
class Plan:
    """What the action will do: `verb` is none, set or up; `args` never holds the auth key (only a placeholder)."""

    verb: str
    args: list[str] = field(default_factory=list)
    changes: dict[str, dict[str, t.Any]] = field(default_factory=dict)
    reason: str = ""
    needs_key: bool = False
    backend_state: str = ""

    @property
    def changed(self) -> bool:
        return self.verb != "none"


AUTH_KEY_PLACEHOLDER = "@AUTH_KEY_FILE@"


def plan(
    status: dict[str, t.Any],
    prefs: dict[str, t.Any],
    wanted: dict[str, t.Any],
    *,
    timeout: str,
    have_key: bool,
    extra_up_args: t.Sequence[str] = (),
    reset: bool = False,
) -> Plan:
    """Decide the least command; raises PrefsError when login is needed but impossible."""
    state = str(status.get("BackendState") or "")
    # `current` is what the CLI's up checker compares with (the prefs); `truth` decides what must change.
    current = current_flags(prefs)
    truth = truth_flags(status, prefs)
    changes = {
        flag: {"before": truth[flag], "after": value}
        for flag, value in wanted.items()
        if not _equal(flag, truth[flag], value)
    }
    needs_login = state in LOGIN_STATES or bool(prefs.get("LoggedOut"))
    up_only = sorted(set(changes) & UP_ONLY)
    stopped = state == "Stopped" or prefs.get("WantRunning") is False
    if needs_login:
        reason = f"node is {state or 'NoState'}: log in"
    elif up_only:
        reason = f"{', '.join(up_only)} can change only with `tailscale up` (re-authentication)"
    elif stopped:
        reason = "node is stopped: bring it up"
    elif changes:
        args = ["set", *(fmt_flag(flag, changes[flag]["after"]) for flag in sorted(changes))]
        return Plan("set", args, changes, "prefs differ: `tailscale set` changes them without re-auth", False, state)
    else:
        return Plan("none", [], {}, "node matches the desired state", False, state)

    reauth = needs_login or bool(up_only)
    if reauth and not have_key:
        raise PrefsError(f"{reason}, but no auth key was given (auth_key)")
    merged = {**current, **wanted}
    # Mention every managed flag and every non-default one (the up checker); flags newer releases added only when
    # non-default, so older CLIs are not handed flags they do not know.
    mention = [f for f in sorted(UP_DEFAULTS) if f in wanted or not _equal(f, merged[f], UP_DEFAULTS[f])]
    args = ["up", *(fmt_flag(f, merged[f]) for f in mention)]
    if reauth:
        args.append(f"--auth-key=file:{AUTH_KEY_PLACEHOLDER}")
    if not needs_login and up_only:
        # A logged-in node re-authenticates only with --force-reauth: a plain `up --auth-key` keeps the node key,
        # and the server takes it for a refresh of the login it has (nor re-evaluates the tags).
        args.append("--force-reauth")
    if reset:
        args.append("--reset")
    args.extend(str(a) for a in extra_up_args)
    args.append(f"--timeout={timeout}")
    return Plan("up", args, changes, reason, reauth, state)


def managed_view(status: dict[str, t.Any], prefs: dict[str, t.Any], wanted: dict[str, t.Any]) -> dict[str, t.Any]:
    """The managed prefs as flags, for diff mode (only what the task manages, so the diff stays readable)."""
    truth = truth_flags(status, prefs)
    return {flag: truth[flag] for flag in sorted(wanted)}


def render_config(options: dict[str, t.Any], auth_key_path: str | None = None) -> str:
    """tailscaled `--config` file (version alpha0) from the same options; never contains a key, only `file:PATH`."""
    wanted = desired_flags(options)
    conf: dict[str, t.Any] = {"Version": "alpha0", "Locked": False, "Enabled": True}
    if "login-server" in wanted:
        conf["ServerURL"] = wanted["login-server"]
    if auth_key_path:
        conf["AuthKey"] = f"file:{auth_key_path}"
    # The JSON names of ipn.ConfigVAlpha (tailscale.com/ipn/conf.go): those two are tagged camelCase. The daemon's
    # encoding/json decoder would take "AcceptDNS" too (it folds case); a case-sensitive one would reject it, as
    # unknown fields are refused (conffile.Load: DisallowUnknownFields).
    simple = {
        "hostname": "Hostname",
        "accept-dns": "acceptDNS",
        "accept-routes": "acceptRoutes",
        "ssh": "RunSSHServer",
        "shields-up": "ShieldsUp",
        "netfilter-mode": "NetfilterMode",
    }
    for flag, key in simple.items():
        if flag in wanted:
            conf[key] = wanted[flag]
    if "advertise-routes" in wanted or "advertise-exit-node" in wanted:
        routes = list(wanted.get("advertise-routes", []))
        if wanted.get("advertise-exit-node"):
            routes.extend(EXIT_ROUTES)
        conf["AdvertiseRoutes"] = routes
    if "snat-subnet-routes" in wanted:
        conf["DisableSNAT"] = not wanted["snat-subnet-routes"]
    if "advertise-tags" in wanted:
        # The alpha0 config has no tags key: tags come from the auth key (an OAuth client) or `tailscale up`.
        raise PrefsError("advertise_tags cannot be expressed in tailscaled's alpha0 config file; use the CLI mode")
    return json.dumps(conf, indent=2, sort_keys=True) + "\n"


def parse_json(text: str, what: str) -> dict[str, t.Any]:
    """Parse a JSON object printed by the CLI, with an error that names the command."""
    start = text.find("{")
    if start < 0:
        raise PrefsError(f"{what}: no JSON in the output: {text.strip()[:300]!r}")
    try:
        value = json.loads(text[start:])
    except json.JSONDecodeError as exc:
        raise PrefsError(f"{what}: unreadable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise PrefsError(f"{what}: expected a JSON object")
    return value
