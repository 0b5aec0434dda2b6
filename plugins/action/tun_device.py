# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decide tailscaled's networking mode (kernel TUN or userspace) on a device without Python, and make it work.

One probe round trip tells what the device has; the decision is pure Python (plugin_utils/_tun_plan.py,
unit-tested); only when something must change does a second script (and, for a user-supplied tun.ko, one upload)
follow.
"""

from __future__ import annotations

import os
import posixpath
import typing as t

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_paths import device_path
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_script import run_script, sh_quote
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_shell import TMP_SUFFIX
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._digest import sha256_file
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._tun_plan import (
    apply_script,
    check_listen,
    decide,
    describe,
    interpret_apply,
    parse_probe,
    remove_script,
    render_probe,
)

FACTS_NAMESPACE = "fleetmesh_networking"

ARGUMENT_SPEC: dict[str, t.Any] = {
    "mode": {"type": "str", "default": "auto", "choices": ["auto", "kernel", "userspace"]},
    "module_src": {"type": "path", "default": ""},
    "module_dest": {"type": "str", "default": ""},
    "socks5_server": {"type": "str", "default": ""},
    "outbound_http_proxy_listen": {"type": "str", "default": ""},
    "probe": {"type": "bool", "default": True},
    "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
}


class ActionModule(ActionBase):
    """Networking mode for tailscaled: probe in one round trip, decide on the controller, change only what differs."""

    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp: str | None = None, task_vars: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
        result = super().run(tmp, task_vars)
        del tmp
        _spec, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        dest = device_path(args["module_dest"], "module_dest") if args["module_dest"] else ""
        check = bool(self._task.check_mode)
        if args["state"] == "absent":
            if not dest:
                return {**result, "changed": False, "changes": []}
            script = remove_script(dest, check)
            changes = interpret_apply(run_script(self, script, "networking").stdout)
            return {**result, "changed": bool(changes), "changes": changes}

        src = str(args["module_src"] or "")
        if src and not os.path.isfile(src):
            raise AnsibleActionFail(f"module_src {src!r} is not a file on the controller")
        if src and not dest:
            raise AnsibleActionFail("module_src needs module_dest: the device path to keep the tun.ko at")
        sha = sha256_file(src) if src else ""
        module = dest if src else ""
        socks5, socks5_lo = check_listen(args["socks5_server"], "socks5_server")
        http, http_lo = check_listen(args["outbound_http_proxy_listen"], "outbound_http_proxy_listen")

        probe = None
        if args["probe"]:
            run = run_script(self, render_probe(module), "networking probe")
            try:
                probe = parse_probe(run.stdout)
            except ValueError as exc:
                raise AnsibleActionFail(f"networking: {exc}; device said: {run.stderr.strip()[:400]}") from exc
        decision = decide(probe, str(args["mode"]), module=module, module_sha256=sha, socks5=socks5, http=http)
        if decision.mode == "userspace":
            for addr, on_lo in ((socks5, socks5_lo), (http, http_lo)):
                if addr and not on_lo:
                    decision.warnings.append(
                        f"the proxy {addr} listens beyond loopback: anyone who reaches that address can use it"
                    )

        changes = [describe(action, module) for action in decision.actions]
        if decision.actions and not check:
            changes = []
            if decision.upload:
                prep = run_script(self, f"mkdir -p {sh_quote(posixpath.dirname(module))}", "networking")
                if prep.rc != 0:
                    raise AnsibleActionFail(f"cannot create the dir of {module}: {prep.stderr.strip()[:400]}")
                self._connection.put_file(src, module + TMP_SUFFIX)
                changes.append(describe("upload", module))
            script = apply_script(decision.actions, module=module, module_sha256=sha)
            changes += interpret_apply(run_script(self, script, "networking").stdout)
        facts = {
            "mode": decision.mode,
            "requested_mode": str(args["mode"]),
            "branch": decision.branch,
            "tailscaled_args": decision.tailscaled_args,
            "boot_commands": decision.boot_commands,
            "module_path": module,
            "socks5_server": socks5 if decision.mode == "userspace" else "",
            "outbound_http_proxy_listen": http if decision.mode == "userspace" else "",
            "tun": {
                "node": bool(probe and probe.node_usable),
                "kernel": bool(probe and probe.kernel_tun),
                "module_loaded": bool(probe and probe.module_loaded),
            },
        }
        result.update(
            changed=bool(changes),
            changes=changes,
            warnings=[*result.get("warnings", []), *decision.warnings],
            ansible_facts={FACTS_NAMESPACE: facts},
        )
        return result
