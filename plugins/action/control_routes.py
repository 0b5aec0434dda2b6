# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Approve a node's advertised subnet routes (and exit node) through the control server's API, then check them.

Runs on the controller only (no device command): finds the node (node key, else tailnet address, else hostname),
waits until it announces the wanted routes, sets the approved list when it differs, and waits until the server
reports them approved and, where it reports it (headscale's subnet_routes), served from this node (primary).
See the doc stub plugins/modules/control_routes.py.
"""

from __future__ import annotations

import time
import typing as t

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _control_api as api
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._routes import EXIT_ROUTES

ARGUMENT_SPEC: dict[str, t.Any] = {
    # Required (checked in run(): the shared doc fragment documents it for tailscale_prefs too, where it is not).
    "control": {"type": "dict", "options": api.CONTROL_SPEC},
    "node_key": {"type": "str"},
    "addresses": {"type": "list", "elements": "str"},
    "hostname": {"type": "str"},
    "routes": {"type": "list", "elements": "str"},
    "exit_node": {"type": "bool"},
    "require_primary": {"type": "bool", "default": True},
    "wait": {"type": "int", "default": 60},
}
POLL = 1.0


def wanted_routes(current: list[str], routes: list[str] | None, exit_node: bool | None) -> list[str]:
    """The approved list to end with: the given routes and exit routes; what is not managed stays as it is."""
    subnets = [r for r in current if r not in EXIT_ROUTES] if routes is None else [str(r) for r in routes]
    exits = [r for r in current if r in EXIT_ROUTES] if exit_node is None else (list(EXIT_ROUTES) if exit_node else [])
    return sorted(set(subnets) | set(exits))


def one_node(client: api._Client, args: dict[str, t.Any]) -> dict[str, t.Any] | None:
    found = api.find_node_of(client.nodes(), args)
    if len(found) > 1:
        names = ", ".join(f"{n['name']} (id {n['id']})" for n in found)
        raise AnsibleActionFail(f"more than one node matches ({names}): give node_key or addresses")
    return found[0] if found else None


class ActionModule(ActionBase):
    """Route approval on the control server (see the doc stub plugins/modules/control_routes.py)."""

    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_diff = True

    def run(self, tmp: str | None = None, task_vars: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
        result = super().run(tmp, task_vars)
        del tmp
        _spec, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        try:
            api.require_target(args, "control_routes")
            client = api.client(args["control"])
            return self._run(client, args, result)
        except api.ControlError as exc:
            raise AnsibleActionFail(str(exc)) from None

    def _run(self, client: api._Client, args: dict[str, t.Any], result: dict[str, t.Any]) -> dict[str, t.Any]:
        deadline = time.monotonic() + int(args["wait"])
        node = one_node(client, args)
        while True:
            if node is not None:
                wanted = wanted_routes(node["approved_routes"], args.get("routes"), args.get("exit_node"))
                missing = sorted(set(wanted) - set(node["advertised_routes"]))
                if not missing:
                    break
            if time.monotonic() > deadline or self._task.check_mode:
                break
            time.sleep(POLL)
            node = one_node(client, args)
        if node is None:
            raise AnsibleActionFail("the control server has no such node (is it logged in?)")
        result.update(node=api.public(node), approved_routes=wanted, changed=False)
        if missing and not self._task.check_mode:
            raise AnsibleActionFail(
                f"node {node['name']} does not announce {', '.join(missing)} (it announces "
                f"{node['advertised_routes'] or 'nothing'}); the routing role advertises them first",
                result=result,
            )
        before = node["approved_routes"]
        if sorted(before) != wanted:
            result["changed"] = True
            if self._task.diff:
                result["diff"] = {"before": {"approved_routes": before}, "after": {"approved_routes": wanted}}
            if self._task.check_mode:
                return result
            node = client.set_approved_routes(node, wanted)
        return self._verify(client, args, node, wanted=wanted, deadline=deadline, result=result)

    def _verify(
        self,
        client: api._Client,
        args: dict[str, t.Any],
        node: dict[str, t.Any],
        *,
        wanted: list[str],
        deadline: float,
        result: dict[str, t.Any],
    ) -> dict[str, t.Any]:
        """The server's own word: approved, and primary for the subnet routes where it says which node serves."""
        subnets = [r for r in wanted if r not in EXIT_ROUTES]
        while True:
            approved_ok = set(wanted) <= set(node["approved_routes"])
            primary = node["primary_routes"]
            not_primary = sorted(set(subnets) - set(primary)) if primary is not None else []
            if approved_ok and not (args["require_primary"] and not_primary):
                break
            if time.monotonic() > deadline or self._task.check_mode:
                break
            time.sleep(POLL)
            node = client.node(node["id"]) or node
        result.update(
            node=api.public(node),
            primary_checked=node["primary_routes"] is not None,
            not_primary=not_primary,
        )
        if self._task.check_mode:
            return result
        if not approved_ok:
            raise AnsibleActionFail(
                f"the control server approved {node['approved_routes']} for {node['name']}, not {wanted}",
                result=result,
            )
        if args["require_primary"] and not_primary:
            raise AnsibleActionFail(
                f"{', '.join(not_primary)} approved but served from another node (not primary on {node['name']}); "
                "set require_primary=false for a high-availability pair",
                result=result,
            )
        return result
