# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The tailnet as an inventory: nodes from headscale's API, Tailscale's API v2 or `tailscale status --json`."""

from __future__ import annotations

DOCUMENTATION = r"""
name: tailnet
short_description: The nodes of a tailnet as inventory hosts (headscale, Tailscale API, tailscale status)
version_added: 0.1.0
description:
  - Lists the nodes of a tailnet from headscale's REST API (C(GET /api/v1/node), a Bearer API key; tested against
    headscale 0.29.2), from Tailscale's API v2 (C(GET /api/v2/tailnet/{tailnet}/devices?fields=all), an API access
    token or an OAuth client; unit-tested on the documented responses only, not run against the service), or from
    C(tailscale status --json) of the tailscale CLI on the controller (the peers this controller's node sees).
  - Each node becomes a host (named by O(hostnames)) with C(ansible_host) set to its tailnet address and
    C(tailnet_*) host vars (addresses, tags, OS where the source knows it, online, routes, node key).
  - A tag that names a profile (O(profile_tag_prefix), C(tag:fleetmesh-kobo)) puts the host in the group of that
    name (C(kobo)), the group the collection picks the device profile from, and sets C(tailnet_profile).
  - O(filter) is a JMESPath expression evaluated on each node (its C(tailnet_*) vars without the prefix, and the
    server's own JSON under C(raw)); a node is kept when it is true.
  - Constructable (O(compose), O(groups), O(keyed_groups)) and cacheable like other inventory plugins.
  - Credentials come from the file (vault-encrypted values work) or the environment; they are never logged.
options:
  plugin:
    description: Marks this file as an inventory of this plugin.
    required: true
    choices: [fleetmesh.tailscale.tailnet]
  source:
    description: Where the nodes come from.
    type: str
    choices: [headscale, tailscale, status]
    default: headscale
  url:
    description:
      - headscale's server URL (required for it); for Tailscale, the API base (default V(https://api.tailscale.com)).
    type: str
    env:
      - name: FLEETMESH_CONTROL_URL
  api_key:
    description: headscale API key or Tailscale API access token.
    type: str
    env:
      - name: FLEETMESH_CONTROL_API_KEY
  oauth_client_id:
    description: Tailscale OAuth client id (with O(oauth_client_secret), instead of O(api_key)).
    type: str
    env:
      - name: FLEETMESH_TAILSCALE_OAUTH_CLIENT_ID
  oauth_client_secret:
    description: Tailscale OAuth client secret (needs the devices:core:read scope).
    type: str
    env:
      - name: FLEETMESH_TAILSCALE_OAUTH_CLIENT_SECRET
  tailnet:
    description: Tailscale tailnet name; V(-) is the credential's default tailnet.
    type: str
    default: "-"
  validate_certs:
    description: Verify the API's TLS certificate.
    type: bool
    default: true
  timeout:
    description: Seconds per API request (or for C(tailscale status)).
    type: int
    default: 30
  tailscale:
    description: With O(source=status), the tailscale CLI on the controller.
    type: str
    default: tailscale
  socket:
    description: With O(source=status), tailscaled's socket (the CLI's default when unset).
    type: str
  hostnames:
    description:
      - Which name of the node becomes the inventory hostname. V(name) is the tailnet's (headscale's given name,
        the first label of the MagicDNS name), V(hostname) the one the device reported.
    type: str
    choices: [name, hostname]
    default: name
  ansible_host:
    description: Which address goes into C(ansible_host); V(none) sets none.
    type: str
    choices: [ipv4, ipv6, none]
    default: ipv4
  profile_tag_prefix:
    description: Tags C(<prefix><profile>) put the host into the group C(<profile>) and set C(tailnet_profile).
    type: str
    default: "tag:fleetmesh-"
  online_only:
    description: Keep only the nodes the source reports online.
    type: bool
    default: false
  filter:
    description:
      - JMESPath expression over each node (keys C(id), C(name), C(hostname), C(addresses), C(ipv4), C(ipv6),
        C(tags), C(os), C(online), C(node_key), C(user), C(advertised_routes), C(approved_routes),
        C(primary_routes), C(profile) and the source's JSON under C(raw)); the node is kept when it is true.
      - "For example V(starts_with(name, 'kobo-') && contains(tags, 'tag:fleetmesh-kobo'))."
    type: str
requirements:
  - jmespath (for O(filter))
extends_documentation_fragment:
  - ansible.builtin.constructed
  - ansible.builtin.inventory_cache
author:
  - fleetmesh developers !UNKNOWN
"""

EXAMPLES = r"""
# inventories/tailnet.yml: the headscale fleet, reached over the tailnet (the API key in the environment or vault)
plugin: fleetmesh.tailscale.tailnet
source: headscale
url: https://headscale.example.org
filter: "contains(tags, 'tag:fleetmesh-kobo') || contains(tags, 'tag:fleetmesh-sysvinit')"
online_only: true
compose:
  # busybox devices: the same telnet door, now on the tailnet address
  ansible_connection: "'fleetmesh.tailscale.telnet'"
keyed_groups:
  - key: tailnet_os
    prefix: os
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/fleetmesh-tailnet
cache_timeout: 300

# The controller's own view (no credential): the peers `tailscale status --json` lists
# plugin: fleetmesh.tailscale.tailnet
# source: status
"""

import json
import subprocess
import typing as t

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _control_api as api

try:
    import jmespath

    HAS_JMESPATH = True
except ImportError:
    HAS_JMESPATH = False

VAR_PREFIX = "tailnet_"
SHOWN = (
    "id",
    "name",
    "hostname",
    "addresses",
    "ipv4",
    "ipv6",
    "tags",
    "os",
    "online",
    "node_key",
    "user",
    "advertised_routes",
    "approved_routes",
    "primary_routes",
    "profile",
    "source",
)


def profile_of(tags: list[str], prefix: str) -> str | None:
    """The profile a tag names (tag:fleetmesh-kobo -> kobo); the first in sorted order when several do."""
    names = sorted(tag[len(prefix) :] for tag in tags if prefix and tag.startswith(prefix) and len(tag) > len(prefix))
    return names[0] if names else None


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    """Tailnet nodes as hosts (see DOCUMENTATION)."""

    NAME = "fleetmesh.tailscale.tailnet"

    def verify_file(self, path: str) -> bool:
        return super().verify_file(path) and path.endswith(
            ("tailnet.yml", "tailnet.yaml", "tailscale.yml", "tailscale.yaml")
        )

    def _fetch(self) -> list[dict[str, t.Any]]:
        source = self.get_option("source")
        if source == "status":
            return api.status_nodes(self._status())
        spec = {
            "type": source,
            "url": self.get_option("url"),
            "api_key": self.get_option("api_key"),
            "oauth_client_id": self.get_option("oauth_client_id"),
            "oauth_client_secret": self.get_option("oauth_client_secret"),
            "tailnet": self.get_option("tailnet"),
            "validate_certs": self.get_option("validate_certs"),
            "timeout": self.get_option("timeout"),
        }
        try:
            return api.client(spec).nodes()
        except api.ControlError as exc:
            raise AnsibleParserError(f"tailnet inventory: {exc}") from None

    def _status(self) -> dict[str, t.Any]:
        argv = [str(self.get_option("tailscale"))]
        if self.get_option("socket"):
            argv.append(f"--socket={self.get_option('socket')}")
        argv += ["status", "--json"]
        try:
            proc = subprocess.run(  # noqa: S603 - fixed argv, no shell, no secret
                argv, capture_output=True, text=True, timeout=int(self.get_option("timeout")), check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AnsibleParserError(f"tailnet inventory: {' '.join(argv)}: {exc}") from None
        if proc.returncode != 0:
            raise AnsibleParserError(f"tailnet inventory: {' '.join(argv)} failed: {proc.stderr.strip()[:300]}")
        try:
            return dict(json.loads(proc.stdout))
        except ValueError:
            raise AnsibleParserError("tailnet inventory: tailscale status --json did not print JSON") from None

    def parse(self, inventory: t.Any, loader: t.Any, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        cache_key = self.get_cache_key(path)
        use_cache = bool(self.get_option("cache"))
        nodes = None
        if use_cache and cache:
            try:
                nodes = self._cache[cache_key]
            except KeyError:
                nodes = None
        if nodes is None:
            nodes = self._fetch()  # plain JSON data (the raw server JSON included): cacheable as it is
            if use_cache:
                self._cache[cache_key] = nodes
        self._populate(nodes)

    def _populate(self, nodes: list[dict[str, t.Any]]) -> None:
        expression = self.get_option("filter")
        if expression and not HAS_JMESPATH:
            raise AnsibleParserError("tailnet inventory: the filter option needs the jmespath Python package")
        compiled = jmespath.compile(str(expression)) if expression else None
        prefix = str(self.get_option("profile_tag_prefix") or "")
        strict = self.get_option("strict")
        for node in nodes:
            view = {**node, "profile": profile_of(node.get("tags") or [], prefix)}
            if self.get_option("online_only") and not view.get("online"):
                continue
            if compiled is not None and not compiled.search(view):
                continue
            name = str(view.get(self.get_option("hostnames")) or view.get("name") or view.get("hostname") or "")
            if not name:
                continue
            host = self.inventory.add_host(name)
            hostvars = {VAR_PREFIX + key: view.get(key) for key in SHOWN}
            address_from = self.get_option("ansible_host")
            if address_from != "none" and view.get(address_from):
                hostvars["ansible_host"] = view[address_from]
            for key, value in hostvars.items():
                self.inventory.set_variable(host, key, value)
            if view["profile"]:
                group = self.inventory.add_group(view["profile"])
                self.inventory.add_child(group, host)
            all_vars = self.inventory.get_host(host).get_vars()
            self._set_composite_vars(self.get_option("compose"), all_vars, host, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), all_vars, host, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), all_vars, host, strict=strict)
