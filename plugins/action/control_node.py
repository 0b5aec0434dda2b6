# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Look a node up on the control server, or delete it from there (state=absent), through its API.

Runs on the controller only. The node is found by its node key, else a tailnet address, else its hostname (which
must then match exactly one node). See the doc stub plugins/modules/control_node.py.
"""

from __future__ import annotations

import time
import typing as t

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _control_api as api

ARGUMENT_SPEC: dict[str, t.Any] = {
    # Required (checked in run(): the shared doc fragment documents it for tailscale_prefs too, where it is not).
    "control": {"type": "dict", "options": api.CONTROL_SPEC},
    "node_key": {"type": "str"},
    "addresses": {"type": "list", "elements": "str"},
    "hostname": {"type": "str"},
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
    "online_timeout": {"type": "int", "default": 0},
}

# Seconds between two node lists while waiting for the node to be online (a unit test shortens it).
POLL = 2.0


class ActionModule(ActionBase):
    """Node lookup and removal on the control server (see plugins/modules/control_node.py)."""

    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_diff = True

    def run(self, tmp: str | None = None, task_vars: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
        result = super().run(tmp, task_vars)
        del tmp
        _spec, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        try:
            api.require_target(args, "control_node")
            client = api.client(args["control"])
            if args["online_timeout"] > 0:
                if args["state"] != "present":
                    raise AnsibleActionFail("online_timeout applies to state=present only")
                result.update(self._wait_online(client, args))
                return result
            found = api.find_node_of(client.nodes(), args)
            if args.get("hostname") and not (args.get("node_key") or args.get("addresses")) and len(found) > 1:
                names = ", ".join(f"{n['name']} (id {n['id']})" for n in found)
                raise AnsibleActionFail(f"hostname {args['hostname']} matches several nodes ({names}): give node_key")
            result.update(changed=False, nodes=[api.public(n) for n in found])
            if args["state"] == "present":
                if not found:
                    raise AnsibleActionFail("the control server has no such node", result=result)
                return result
            if not found:
                return result
            result["changed"] = True
            if self._task.diff:
                result["diff"] = {"before": {"nodes": [n["name"] for n in found]}, "after": {"nodes": []}}
            if self._task.check_mode:
                return result
            for node in found:
                client.delete_node(node)
            left = {n["id"] for n in client.nodes()} & {n["id"] for n in found}
            if left:
                raise AnsibleActionFail(f"the control server still lists node(s) {sorted(left)}", result=result)
            return result
        except api.ControlError as exc:
            raise AnsibleActionFail(str(exc)) from None

    @staticmethod
    def _wait_online(client: t.Any, args: dict[str, t.Any]) -> dict[str, t.Any]:
        """Poll the node list for up to online_timeout s until a matching node is listed online. Never fails on
        the way (no such node yet, offline, a control server that does not answer): it reports what it saw last,
        and the caller judges (the binary role's health gate)."""
        deadline = time.monotonic() + args["online_timeout"]
        attempts = 0
        while True:
            attempts += 1
            found: list[dict[str, t.Any]] = []
            try:
                found = api.find_node_of(client.nodes(), args)
                seen = (
                    "listed online"
                    if any(n.get("online") for n in found)
                    else ("listed offline" if found else "not listed")
                )
            except api.ControlError as exc:
                seen = f"no answer: {exc}"
            online = any(n.get("online") for n in found)
            if online or time.monotonic() + POLL > deadline:
                return {
                    "changed": False,
                    "online": online,
                    "nodes": [api.public(n) for n in found],
                    "attempts": attempts,
                    "msg": seen,
                }
            time.sleep(POLL)
