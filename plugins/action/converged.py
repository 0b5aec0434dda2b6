# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a device is already as this run would leave it (one round trip), and the stamp that says so.

See plugins/plugin_utils/_converged.py for what the stamp holds and plugins/modules/converged.py for the options.
"""

from __future__ import annotations

import os
import typing as t

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _converged as cv
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_script import parse_sections, run_script

ARGUMENT_SPEC: dict[str, t.Any] = {
    "state": {"type": "str", "choices": ["check", "record", "absent"], "default": "check"},
    "stamp": {"type": "str", "required": True},
    "inputs": {"type": "str", "default": ""},
    "manifests": {"type": "list", "elements": "str", "default": []},
    "paths": {"type": "list", "elements": "str", "default": []},
    "proc": {"type": "list", "elements": "str", "default": []},
    "metas": {"type": "list", "elements": "str", "default": []},
    "tailscale": {"type": "str", "default": ""},
    "socket": {"type": "str", "default": ""},
}
# The collection's root (plugins/action/converged.py -> ../..): its code is part of the inputs.
COLLECTION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ActionModule(ActionBase):
    """Check or record the converged stamp with POSIX sh over the connection (see plugins/modules/converged.py)."""

    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp: str | None = None, task_vars: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
        result = super().run(tmp, task_vars)
        del tmp
        _spec, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        stamp = str(args["stamp"])
        if not stamp.startswith("/") or "\n" in stamp:
            raise AnsibleActionFail(f"stamp must be an absolute path, got {stamp!r}")
        if args["state"] == "absent":
            return self._absent(result, stamp)
        if args["state"] == "record":
            return self._record(result, stamp, args)
        return self._check(result, stamp, task_vars or {})

    def inputs(self, task_vars: dict[str, t.Any]) -> str:
        """The digest of this host's inputs (the variables of the collection's prefixes, templated) and the code."""
        values = {}
        for name in cv.input_names(task_vars):
            if cv.secret_name(name):
                values[name] = "<secret>"
                continue
            try:
                values[name] = self._templar.template(task_vars[name])
            except Exception as exc:  # noqa: BLE001 - any templating failure means: take the full path
                raise cv.StampError(f"variable {name} does not template here ({type(exc).__name__})") from None
        return cv.inputs_digest(values, cv.code_digest(COLLECTION_ROOT), str(task_vars.get("omit", "")))

    def _check(self, result: dict[str, t.Any], stamp: str, task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
        result.update(changed=False, converged=False, inputs="", node_key="", routes=[], backend_state="")
        try:
            inputs = self.inputs(task_vars)
        except cv.StampError as exc:
            result["reason"] = f"full run: {exc}"
            return result
        result["inputs"] = inputs
        run = run_script(self, cv.check_script(stamp), "converged check")
        sections = parse_sections(run.stdout)
        if "end" not in sections:
            raise AnsibleActionFail(f"converged check: the device's output was cut short: {run.stderr.strip()[:300]}")
        normal, observed = cv.observation(run.stdout)
        result.update(
            node_key=cv.node_key(normal), routes=cv.advertised_routes(normal), backend_state=cv.backend_state(normal)
        )
        recorded = cv.parse_stamp(run.stdout)
        if not recorded:
            result["reason"] = f"full run: no stamp at {stamp} (never provisioned by site.yml, or since removed)"
        elif recorded.get("inputs") != inputs:
            result["reason"] = (
                "full run: the inputs changed since the last full run (variables, controller files or code)"
            )
        elif recorded.get("observed") != observed:
            result["reason"] = "full run: the device changed since the last full run (files, prefs, node or daemon)"
        else:
            result.update(
                converged=True, reason="converged: the device is as the last full run with these inputs left it"
            )
        return result

    def _record(self, result: dict[str, t.Any], stamp: str, args: dict[str, t.Any]) -> dict[str, t.Any]:
        inputs = str(args["inputs"])
        if len(inputs) != 64:
            raise AnsibleActionFail("record needs inputs: the digest the check returned (fleetmesh_converged.inputs)")
        try:
            lines = cv.entries(
                args["manifests"],
                args["paths"],
                proc=args["proc"],
                tailscale=args["tailscale"],
                socket=args["socket"],
                metas=args["metas"],
            )
        except cv.StampError as exc:
            raise AnsibleActionFail(str(exc)) from None
        result.update(changed=False, stamp=stamp)
        if self._task.check_mode:
            result["msg"] = "check mode: no stamp written"
            return result
        first, _tmp = cv.record_scripts(stamp, lines)
        run = run_script(self, first, "converged record")
        if run.rc != 0 or "end" not in parse_sections(run.stdout):
            raise AnsibleActionFail(f"converged record: could not write {stamp}.tmp: {run.stderr.strip()[:300]}")
        _normal, observed = cv.observation(run.stdout)
        done = run_script(self, cv.finish_script(stamp, inputs, observed), "converged record")
        if done.rc != 0:
            raise AnsibleActionFail(
                f"converged record: could not rename the stamp into place: {done.stderr.strip()[:300]}"
            )
        result["observed"] = observed
        return result

    def _absent(self, result: dict[str, t.Any], stamp: str) -> dict[str, t.Any]:
        result.update(changed=False, stamp=stamp)
        if self._task.check_mode:
            return result
        run = run_script(self, cv.remove_script(stamp), "converged remove")
        if run.rc != 0:
            raise AnsibleActionFail(f"converged: could not remove {stamp}: {run.stderr.strip()[:300]}")
        return result
