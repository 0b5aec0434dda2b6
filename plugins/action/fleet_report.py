# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write the fleet report (HTML, JSON) and return its terminal table, on the controller.

Lists the nodes of each control server once, matches every host's node by its node key, merges the rows
playbooks/report.yml gathered with the fleet_record callback's records. See the doc stub
plugins/modules/fleet_report.py and docs/report.md; the logic is in plugin_utils/_report.py.
"""

from __future__ import annotations

import datetime as _dt
import os
import typing as t

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _control_api as api
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _report as report

RECORD_CALLBACK = "fleetmesh.tailscale.fleet_record"

ARGUMENT_SPEC: dict[str, t.Any] = {
    "hosts": {"type": "list", "elements": "dict", "required": True},
    "controls": {"type": "dict", "default": {}, "no_log": True},
    "dest": {"type": "path", "default": "fleet-report"},
    "name": {"type": "str", "default": "fleet-report"},
    "record_dir": {"type": "path"},
}


def record_dir_setting() -> str:
    """The fleet_record callback's record_dir (its env var or ini entry), else the callback's default."""
    try:
        from ansible import constants as C  # noqa: N812

        value = C.config.get_config_value("record_dir", plugin_type="callback", plugin_name=RECORD_CALLBACK)
    except Exception:  # noqa: BLE001 - the callback's settings are not loaded (it is not enabled): its default
        value = None
    return os.path.expanduser(str(value)) if value else report.default_record_dir()


def list_servers(controls: dict[str, t.Any]) -> tuple[dict[str, dict[str, t.Any]], dict[str, str]]:
    """({label: {'nodes', 'error'}}, {host: label}): each control server's nodes, listed once."""
    specs: dict[str, dict[str, t.Any]] = {}
    labels: dict[str, str] = {}
    for host, spec in controls.items():
        if isinstance(spec, dict) and spec:
            label = report.control_label(spec)
            specs.setdefault(label, spec)
            labels[str(host)] = label
    servers: dict[str, dict[str, t.Any]] = {}
    for label, spec in specs.items():
        try:
            servers[label] = {"nodes": api.client(spec).nodes(), "error": ""}
        except api.ControlError as exc:  # its message never holds a credential
            servers[label] = {"nodes": [], "error": f"could not list nodes: {exc}"}
    return servers, labels


class ActionModule(ActionBase):
    """The fleet report (see plugins/modules/fleet_report.py)."""

    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp: str | None = None, task_vars: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
        result = super().run(tmp, task_vars)
        del tmp
        _spec, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        name = str(args["name"])
        if not name or "/" in name or name.startswith("."):
            raise AnsibleActionFail(f"name: {name!r} must be a plain file name stem (no /, not hidden)")
        hosts = [dict(h) for h in args["hosts"]]
        for entry in hosts:
            if not entry.get("host"):
                raise AnsibleActionFail("hosts: every entry needs its host (the inventory name)")
        servers, labels = list_servers(dict(args["controls"] or {}))
        for entry in hosts:
            entry["control"] = labels.get(str(entry["host"]), "")
        record_dir = os.path.expanduser(str(args.get("record_dir") or record_dir_setting()))
        records = {str(h["host"]): report.read_records(record_dir, str(h["host"])) for h in hosts}
        generated = _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()
        data = report.build_report(hosts, servers, records, generated)
        dest = os.path.abspath(os.path.expanduser(str(args["dest"])))
        files = {"html": os.path.join(dest, f"{name}.html"), "json": os.path.join(dest, f"{name}.json")}
        written = not self._task.check_mode
        if written:
            try:
                report.write_atomic(files["json"], report.to_json(data))
                report.write_atomic(files["html"], report.to_html(data))
            except OSError as exc:
                raise AnsibleActionFail(f"could not write the report under {dest}: {exc}") from None
        table = report.table_lines(data)
        # The report is the controller's output, not a change to the fleet: changed stays false (docs/report.md).
        result.update(
            changed=False,
            written=written,
            files=files,
            record_dir=record_dir,
            summary=data["summary"],
            table=table,
            text="\n".join([*table, f"HTML: {files['html']}", f"JSON: {files['json']}"]),
            report=data,
        )
        return result
