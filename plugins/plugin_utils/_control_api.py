# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to the fleetmesh.tailscale collection: not a public API, may change without notice.

Controller-side clients of a tailnet's control server, with one small interface for the collection's actions and
its inventory plugin: list nodes, mint/inspect/expire a pre-auth key, set a node's approved routes, delete a node.

- headscale (REST gateway of its gRPC API, ``/api/v1``, ``Authorization: Bearer <API key>``; read from headscale
  0.29's proto/headscale/v1/*.proto): ``GET /api/v1/node``, ``POST /api/v1/preauthkey`` (``user``, ``reusable``,
  ``ephemeral``, ``expiration``, ``aclTags``), ``GET /api/v1/preauthkey``, ``POST /api/v1/preauthkey/expire``
  (``id``), ``POST /api/v1/node/{id}/approve_routes`` (``routes``, replaces the list), ``DELETE /api/v1/node/{id}``.
  The gateway writes lowerCamelCase JSON and 64-bit integers as strings; both spellings are read.
- Tailscale's API v2 (``https://api.tailscale.com/api/v2``; an API access token, or an OAuth client whose id and
  secret buy a short-lived token at ``/api/v2/oauth/token``): ``GET /tailnet/{t}/devices?fields=all``,
  ``POST /tailnet/{t}/keys``, ``GET|DELETE /tailnet/{t}/keys/{id}``, ``POST /device/{id}/routes``,
  ``DELETE /device/{id}``. Written from Tailscale's published API reference and unit-tested on its documented
  requests and responses only: never run against the real service here.

Secrets (API keys, OAuth secrets, minted keys) go only into request headers and bodies, never into a URL, an
exception message or a return value other than the minted key itself.
"""

from __future__ import annotations

import datetime as _dt
import json
import typing as t
import urllib.parse

from ansible.module_utils.urls import ConnectionError as UrlConnectionError
from ansible.module_utils.urls import open_url

KINDS = ("headscale", "tailscale")
TAILSCALE_API = "https://api.tailscale.com"
# The options every control action takes (a dict option named `control`); no_log on every secret.
CONTROL_SPEC: dict[str, t.Any] = {
    "type": {"type": "str", "choices": list(KINDS), "default": "headscale"},
    "url": {"type": "str"},
    "api_key": {"type": "str", "no_log": True},
    "oauth_client_id": {"type": "str"},
    "oauth_client_secret": {"type": "str", "no_log": True},
    "tailnet": {"type": "str", "default": "-"},
    "user": {"type": "str"},
    "validate_certs": {"type": "bool", "default": True},
    "timeout": {"type": "int", "default": 30},
}

# opener(method, url, *, headers, data, timeout, validate_certs) -> (HTTP status, body); tests pass a fake one.
Opener = t.Callable[..., tuple[int, bytes]]


class ControlError(Exception):
    """The control server refused or could not be reached; the message never holds a credential."""


def _default_opener(
    method: str, url: str, *, headers: dict[str, str], data: bytes | None, timeout: int, validate_certs: bool
) -> tuple[int, bytes]:
    import urllib.error

    try:
        with open_url(
            url,
            method=method,
            headers=headers,
            data=data,
            timeout=timeout,
            validate_certs=validate_certs,
            follow_redirects="none",
        ) as resp:
            return int(resp.getcode()), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read() if exc.fp is not None else b""
    except (OSError, UrlConnectionError) as exc:
        raise ControlError(f"{method} {url}: {exc}") from None


def _str_list(value: t.Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _get(raw: dict[str, t.Any], camel: str, snake: str, default: t.Any = None) -> t.Any:
    """A field of headscale's JSON in either spelling (the REST gateway's lowerCamelCase, the CLI's proto names)."""
    if camel in raw:
        return raw[camel]
    return raw.get(snake, default)


def node_record(
    *,
    source: str,
    node_id: str,
    hostname: str,
    name: str,
    addresses: list[str],
    tags: list[str],
    os_name: str | None,
    online: bool | None,
    node_key: str,
    advertised: list[str],
    approved: list[str],
    primary: list[str] | None,
    user: str | None,
    raw: dict[str, t.Any],
) -> dict[str, t.Any]:
    """The collection's one view of a node, whatever the source (what the inventory plugin's host vars hold)."""
    return {
        "source": source,
        "id": node_id,
        "hostname": hostname,
        "name": name,
        "addresses": addresses,
        "ipv4": next((a for a in addresses if "." in a), None),
        "ipv6": next((a for a in addresses if ":" in a), None),
        "tags": sorted(tags),
        "os": os_name,
        "online": online,
        "node_key": node_key,
        "advertised_routes": sorted(advertised),
        "approved_routes": sorted(approved),
        # Routes the server serves from this node (headscale's subnet_routes); None when the source does not say.
        "primary_routes": sorted(primary) if primary is not None else None,
        "user": user,
        "raw": raw,
    }


def _future(seconds: int) -> str:
    when = _dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=seconds)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: t.Any) -> _dt.datetime | None:
    """An RFC 3339 timestamp as an aware datetime (fractions dropped), None when absent or unreadable."""
    if not value or not isinstance(value, str):
        return None
    text = value.strip()
    if text.startswith("0001-01-01"):
        return None
    text = text.replace("Z", "+00:00")
    if "." in text:
        head, _dot, tail = text.partition(".")
        zone = next((i for i, c in enumerate(tail) if c in "+-"), len(tail))
        text = head + tail[zone:]
    try:
        parsed = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=_dt.UTC)


class _Client:
    kind = ""

    def __init__(self, opener: Opener | None = None, *, timeout: int = 30, validate_certs: bool = True) -> None:
        self._open = opener or _default_opener
        self.timeout = int(timeout)
        self.validate_certs = bool(validate_certs)

    def _headers(self) -> dict[str, str]:
        raise NotImplementedError

    def _base(self) -> str:
        raise NotImplementedError

    def request(self, method: str, path: str, body: t.Any = None, *, form: dict[str, str] | None = None) -> t.Any:
        headers = {"Accept": "application/json", **self._headers()}
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        url = self._base() + path
        code, payload = self._open(
            method, url, headers=headers, data=data, timeout=self.timeout, validate_certs=self.validate_certs
        )
        text = payload.decode("utf-8", errors="replace") if payload else ""
        if code >= 400:
            detail = text.strip()
            try:
                parsed = json.loads(detail)
                if isinstance(parsed, dict):
                    detail = str(parsed.get("message") or parsed.get("error") or detail)
            except ValueError:
                pass
            raise ControlError(f"{self.kind} API {method} {path}: HTTP {code}: {detail[:300]}")
        if not text.strip():
            return {}
        try:
            return json.loads(text)
        except ValueError:
            raise ControlError(f"{self.kind} API {method} {path}: not JSON: {text[:200]!r}") from None

    # The interface the actions use.
    def nodes(self) -> list[dict[str, t.Any]]:
        raise NotImplementedError

    def mint_key(
        self, *, tags: list[str], expiry_seconds: int, reusable: bool = False, ephemeral: bool = False, description=""
    ) -> dict[str, t.Any]:
        raise NotImplementedError

    def key_state(self, key_id: str) -> dict[str, t.Any]:
        raise NotImplementedError

    def expire_key(self, key_id: str) -> None:
        raise NotImplementedError

    def set_approved_routes(self, node: dict[str, t.Any], routes: list[str]) -> dict[str, t.Any]:
        raise NotImplementedError

    def delete_node(self, node: dict[str, t.Any]) -> None:
        raise NotImplementedError

    def node(self, node_id: str) -> dict[str, t.Any] | None:
        return next((n for n in self.nodes() if n["id"] == str(node_id)), None)


class Headscale(_Client):
    kind = "headscale"

    def __init__(self, url: str, api_key: str, *, user: str | None = None, **kwargs: t.Any) -> None:
        super().__init__(**kwargs)
        if not url or not str(url).startswith(("http://", "https://")):
            raise ControlError("headscale needs control.url, the server's http(s) URL")
        if not api_key:
            raise ControlError("headscale needs control.api_key (headscale apikeys create)")
        self.url = str(url).rstrip("/")
        self._api_key = str(api_key)
        self.user = str(user) if user else None

    def _base(self) -> str:
        return self.url + "/api/v1"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"}

    @staticmethod
    def to_node(raw: dict[str, t.Any]) -> dict[str, t.Any]:
        user = raw.get("user") if isinstance(raw.get("user"), dict) else {}
        return node_record(
            source="headscale",
            node_id=str(raw.get("id", "")),
            hostname=str(raw.get("name") or ""),
            name=str(_get(raw, "givenName", "given_name", "") or raw.get("name") or ""),
            addresses=_str_list(_get(raw, "ipAddresses", "ip_addresses")),
            tags=_str_list(raw.get("tags")),
            os_name=None,  # headscale's API does not publish the node's Hostinfo
            online=bool(raw.get("online", False)),
            node_key=str(_get(raw, "nodeKey", "node_key", "") or ""),
            advertised=_str_list(_get(raw, "availableRoutes", "available_routes")),
            approved=_str_list(_get(raw, "approvedRoutes", "approved_routes")),
            primary=_str_list(_get(raw, "subnetRoutes", "subnet_routes")),
            user=str(user.get("name")) if user.get("name") else None,
            raw=raw,
        )

    def nodes(self) -> list[dict[str, t.Any]]:
        listed = self.request("GET", "/node")
        return [self.to_node(n) for n in (listed.get("nodes") or []) if isinstance(n, dict)]

    def _user_id(self) -> str | None:
        if not self.user:
            return None
        if self.user.isdigit():
            return self.user
        users = self.request("GET", "/user?" + urllib.parse.urlencode({"name": self.user})).get("users") or []
        for user in users:
            if user.get("name") == self.user:
                return str(user["id"])
        raise ControlError(f"headscale has no user named {self.user!r}")

    @staticmethod
    def _key_view(raw: dict[str, t.Any]) -> dict[str, t.Any]:
        expiration = parse_time(raw.get("expiration"))
        now = _dt.datetime.now(_dt.UTC)
        return {
            "id": str(raw.get("id", "")),
            "used": bool(raw.get("used", False)),
            "reusable": bool(raw.get("reusable", False)),
            "expiration": raw.get("expiration"),
            "expired": expiration is not None and expiration <= now,
            "tags": _str_list(_get(raw, "aclTags", "acl_tags")),
        }

    def mint_key(
        self, *, tags: list[str], expiry_seconds: int, reusable: bool = False, ephemeral: bool = False, description=""
    ) -> dict[str, t.Any]:
        del description  # headscale keys have none
        body: dict[str, t.Any] = {
            "reusable": bool(reusable),
            "ephemeral": bool(ephemeral),
            "expiration": _future(int(expiry_seconds)),
            "aclTags": list(tags),
        }
        user = self._user_id()
        if user is not None:
            body["user"] = user
        made = self.request("POST", "/preauthkey", body)
        raw = made.get("preAuthKey") or made.get("pre_auth_key") or {}
        if not raw.get("key"):
            raise ControlError("headscale API POST /preauthkey: no key in the answer")
        return {**self._key_view(raw), "key": str(raw["key"])}

    def key_state(self, key_id: str) -> dict[str, t.Any]:
        listed = self.request("GET", "/preauthkey")
        for raw in listed.get("preAuthKeys") or listed.get("pre_auth_keys") or []:
            if str(raw.get("id")) == str(key_id):
                return self._key_view(raw)
        return {"id": str(key_id), "used": False, "expired": True, "gone": True}

    def expire_key(self, key_id: str) -> None:
        self.request("POST", "/preauthkey/expire", {"id": str(key_id)})

    def set_approved_routes(self, node: dict[str, t.Any], routes: list[str]) -> dict[str, t.Any]:
        made = self.request("POST", f"/node/{urllib.parse.quote(node['id'])}/approve_routes", {"routes": list(routes)})
        raw = made.get("node")
        return self.to_node(raw) if isinstance(raw, dict) else (self.node(node["id"]) or node)

    def delete_node(self, node: dict[str, t.Any]) -> None:
        self.request("DELETE", f"/node/{urllib.parse.quote(node['id'])}")


class TailscaleV2(_Client):
    """Tailscale's API v2. Unit-tested on the documented requests/responses only (never against the service)."""

    kind = "tailscale"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        oauth_client_id: str | None = None,
        oauth_client_secret: str | None = None,
        tailnet: str = "-",
        url: str | None = None,
        **kwargs: t.Any,
    ) -> None:
        super().__init__(**kwargs)
        if not api_key and not (oauth_client_id and oauth_client_secret):
            raise ControlError("tailscale needs control.api_key, or control.oauth_client_id and oauth_client_secret")
        self.url = str(url or TAILSCALE_API).rstrip("/")
        self._api_key = str(api_key) if api_key else None
        self._client = (str(oauth_client_id), str(oauth_client_secret)) if not api_key else None
        self.tailnet = urllib.parse.quote(str(tailnet or "-"), safe="")
        self._token: str | None = None

    def _base(self) -> str:
        return self.url + "/api/v2"

    def _headers(self) -> dict[str, str]:
        if self._api_key:
            return {"Authorization": f"Bearer {self._api_key}"}
        if self._token:
            return {"Authorization": f"Bearer {self._token}"}
        return {}

    def request(self, method: str, path: str, body: t.Any = None, *, form: dict[str, str] | None = None) -> t.Any:
        if self._client and not self._token and path != "/oauth/token":
            client_id, secret = self._client
            got = super().request(
                "POST",
                "/oauth/token",
                form={"client_id": client_id, "client_secret": secret, "grant_type": "client_credentials"},
            )
            if not got.get("access_token"):
                raise ControlError("tailscale API POST /oauth/token: no access_token in the answer")
            self._token = str(got["access_token"])
        return super().request(method, path, body, form=form)

    @staticmethod
    def to_node(raw: dict[str, t.Any]) -> dict[str, t.Any]:
        online = raw.get("connectedToControl")
        return node_record(
            source="tailscale",
            node_id=str(raw.get("nodeId") or raw.get("id") or ""),
            hostname=str(raw.get("hostname") or ""),
            name=str(raw.get("name") or "").split(".", 1)[0] or str(raw.get("hostname") or ""),
            addresses=_str_list(raw.get("addresses")),
            tags=_str_list(raw.get("tags")),
            os_name=str(raw["os"]) if raw.get("os") else None,
            online=bool(online) if online is not None else None,
            node_key=str(raw.get("nodeKey") or ""),
            advertised=_str_list(raw.get("advertisedRoutes")),
            approved=_str_list(raw.get("enabledRoutes")),
            primary=None,  # the API says enabled, not which router serves a shared route
            user=str(raw["user"]) if raw.get("user") else None,
            raw=raw,
        )

    def nodes(self) -> list[dict[str, t.Any]]:
        listed = self.request("GET", f"/tailnet/{self.tailnet}/devices?fields=all")
        return [self.to_node(d) for d in (listed.get("devices") or []) if isinstance(d, dict)]

    @staticmethod
    def _key_view(raw: dict[str, t.Any]) -> dict[str, t.Any]:
        create = ((raw.get("capabilities") or {}).get("devices") or {}).get("create") or {}
        expires = parse_time(raw.get("expires"))
        now = _dt.datetime.now(_dt.UTC)
        return {
            "id": str(raw.get("id", "")),
            # A single-use key is invalid once used, a revoked one too; the API does not say which.
            "used": bool(raw.get("invalid", False)) and not raw.get("revoked"),
            "reusable": bool(create.get("reusable", False)),
            "expiration": raw.get("expires"),
            "expired": bool(raw.get("revoked")) or bool(raw.get("invalid")) or (expires is not None and expires <= now),
            "tags": _str_list(create.get("tags")),
        }

    def mint_key(
        self, *, tags: list[str], expiry_seconds: int, reusable: bool = False, ephemeral: bool = False, description=""
    ) -> dict[str, t.Any]:
        body = {
            "capabilities": {
                "devices": {
                    "create": {
                        "reusable": bool(reusable),
                        "ephemeral": bool(ephemeral),
                        "preauthorized": True,
                        "tags": list(tags),
                    }
                }
            },
            "expirySeconds": int(expiry_seconds),
            "description": str(description or "fleetmesh")[:50],
        }
        made = self.request("POST", f"/tailnet/{self.tailnet}/keys", body)
        if not made.get("key") or not made.get("id"):
            raise ControlError("tailscale API POST /keys: no key in the answer")
        return {**self._key_view(made), "key": str(made["key"])}

    def key_state(self, key_id: str) -> dict[str, t.Any]:
        try:
            raw = self.request("GET", f"/tailnet/{self.tailnet}/keys/{urllib.parse.quote(str(key_id))}")
        except ControlError as exc:
            if "HTTP 404" in str(exc):
                return {"id": str(key_id), "used": False, "expired": True, "gone": True}
            raise
        return self._key_view(raw)

    def expire_key(self, key_id: str) -> None:
        try:
            self.request("DELETE", f"/tailnet/{self.tailnet}/keys/{urllib.parse.quote(str(key_id))}")
        except ControlError as exc:
            if "HTTP 404" not in str(exc):  # already gone: spent and cleaned up by the service
                raise

    def set_approved_routes(self, node: dict[str, t.Any], routes: list[str]) -> dict[str, t.Any]:
        made = self.request("POST", f"/device/{urllib.parse.quote(node['id'])}/routes", {"routes": list(routes)})
        updated = dict(node)
        updated["advertised_routes"] = sorted(_str_list(made.get("advertisedRoutes")))
        updated["approved_routes"] = sorted(_str_list(made.get("enabledRoutes")))
        return updated

    def delete_node(self, node: dict[str, t.Any]) -> None:
        self.request("DELETE", f"/device/{urllib.parse.quote(node['id'])}")


def client(spec: dict[str, t.Any], opener: Opener | None = None) -> _Client:
    """A client from the `control` option (CONTROL_SPEC); plain str of every value (ansible-core 2.19 tags them)."""
    conf = {k: (str(v) if isinstance(v, str) else v) for k, v in dict(spec or {}).items()}
    kind = conf.get("type") or "headscale"
    common = {
        "opener": opener,
        "timeout": int(conf.get("timeout") or 30),
        "validate_certs": conf.get("validate_certs", True) is not False,
    }
    if kind == "headscale":
        return Headscale(str(conf.get("url") or ""), str(conf.get("api_key") or ""), user=conf.get("user"), **common)
    if kind == "tailscale":
        return TailscaleV2(
            api_key=conf.get("api_key"),
            oauth_client_id=conf.get("oauth_client_id"),
            oauth_client_secret=conf.get("oauth_client_secret"),
            tailnet=conf.get("tailnet") or "-",
            url=conf.get("url"),
            **common,
        )
    raise ControlError(f"control.type must be one of {', '.join(KINDS)}, not {kind!r}")


def find_node(
    nodes: list[dict[str, t.Any]],
    *,
    node_key: str | None = None,
    addresses: list[str] | None = None,
    hostname: str | None = None,
) -> list[dict[str, t.Any]]:
    """The nodes that match, best evidence first: the node key, else a tailnet address, else the hostname."""
    if node_key:
        return [n for n in nodes if n["node_key"] and n["node_key"] == node_key]
    if addresses:
        wanted = set(addresses)
        return [n for n in nodes if wanted & set(n["addresses"])]
    if hostname:
        return [n for n in nodes if hostname in (n["hostname"], n["name"])]
    return []


def require_target(args: dict[str, t.Any], action: str) -> None:
    """The checks every node action makes of its arguments before calling the server: an API and a way to the node."""
    if not args.get("control"):
        raise ControlError(f"{action} needs control, the control server's API (docs/controlplane.md)")
    if not (args.get("node_key") or args.get("addresses") or args.get("hostname")):
        raise ControlError(f"{action} needs node_key, addresses or hostname to find the node")


def find_node_of(nodes: list[dict[str, t.Any]], args: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    """find_node with a node action's own node_key / addresses / hostname arguments."""
    return find_node(
        nodes,
        node_key=args.get("node_key"),
        addresses=[str(a) for a in args.get("addresses") or []],
        hostname=args.get("hostname"),
    )


def public(node: dict[str, t.Any]) -> dict[str, t.Any]:
    """A node as actions return it (without the raw server JSON)."""
    return {k: v for k, v in node.items() if k != "raw"}


def status_nodes(status: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    """The nodes of `tailscale status --json` (Self and its peers) in the collection's view of a node."""
    found = []
    peers = status.get("Peer") if isinstance(status.get("Peer"), dict) else {}
    for raw in [status.get("Self"), *peers.values()]:
        if not isinstance(raw, dict):
            continue
        addresses = _str_list(raw.get("TailscaleIPs"))
        own = {f"{a}/32" if "." in a else f"{a}/128" for a in addresses}
        allowed = [r for r in _str_list(raw.get("AllowedIPs")) if r not in own]
        found.append(
            node_record(
                source="status",
                node_id=str(raw.get("ID") or ""),
                hostname=str(raw.get("HostName") or ""),
                name=str(raw.get("DNSName") or "").split(".", 1)[0] or str(raw.get("HostName") or ""),
                addresses=addresses,
                tags=_str_list(raw.get("Tags")),
                os_name=str(raw["OS"]) if raw.get("OS") else None,
                online=bool(raw.get("Online", False)),
                node_key=str(raw.get("PublicKey") or ""),
                advertised=[],  # status shows what the node may serve (AllowedIPs), not what it asked for
                approved=allowed,
                primary=_str_list(raw.get("PrimaryRoutes")),
                user=str(raw.get("UserID")) if raw.get("UserID") is not None else None,
                raw=raw,
            )
        )
    return found
