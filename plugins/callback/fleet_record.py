# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Record each host's last provisioning result (and the last --check run, the drift record) for the fleet report."""

from __future__ import annotations

DOCUMENTATION = r"""
name: fleet_record
type: aggregate
short_description: Record each host's last run (and last --check run) for the fleet report
version_added: 0.1.0
description:
  - At the end of a playbook, writes one JSON record per host that took part in a recorded play to
    C(<record_dir>/<host>.json), or for a C(--check) run to C(<host>.check.json) (the drift record), atomically
    (a temp file and a rename).
  - "A record holds: the playbook, the finish time (UTC), the host's recap counts (C(ok), C(changed), C(failures),
    C(unreachable), C(skipped), C(rescued), C(ignored)), C(result) (V(ok), V(failed), V(unreachable)), the names of
    the tasks that changed (or would change, in check mode) and the last failure as C(task: message)."
  - A failure a C(rescue) handled counts under C(rescued) and leaves C(result) V(ok).
  - Results of C(no_log) tasks arrive censored; their failure message is recorded as hidden. Nothing else of a
    result is written.
  - Plays with the variable C(fleetmesh_record) set to false in their C(vars) (C(playbooks/report.yml)) are not
    recorded.
  - Read by C(fleetmesh.tailscale.fleet_report) (docs/report.md). Enable it with
    C(callbacks_enabled = fleetmesh.tailscale.fleet_record) in ansible.cfg.
requirements:
  - enable in configuration
options:
  record_dir:
    description: Directory of the records (made when missing).
    type: path
    default: ~/.cache/fleetmesh/records
    env:
      - name: FLEETMESH_RECORD_DIR
    ini:
      - section: callback_fleet_record
        key: record_dir
author:
  - fleetmesh developers !UNKNOWN
"""

import datetime as _dt  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import typing as t  # noqa: E402

from ansible import context  # noqa: E402
from ansible.plugins.callback import CallbackBase  # noqa: E402
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._report import (  # noqa: E402
    record_name,
    write_atomic,
)

HIDDEN = "(hidden: no_log)"
FALSE_WORDS = {"false", "no", "off", "0"}


def _off(value: t.Any) -> bool:
    return value is False or (isinstance(value, str) and value.strip().lower() in FALSE_WORDS)


def result_of(summary: dict[str, int]) -> str:
    if summary.get("unreachable"):
        return "unreachable"
    if summary.get("failures"):
        return "failed"
    return "ok"


class CallbackModule(CallbackBase):
    """Writes the fleet report's per-host records at the end of a playbook."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "fleetmesh.tailscale.fleet_record"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display: t.Any = None, options: t.Any = None) -> None:
        super().__init__(display, options)
        self.playbook = ""
        self.recording = True
        self.hosts: dict[str, dict[str, t.Any]] = {}

    def _host(self, result: t.Any) -> dict[str, t.Any] | None:
        if not self.recording:
            return None
        return self.hosts.setdefault(result._host.get_name(), {"changed_tasks": [], "last_failure": ""})

    def v2_playbook_on_start(self, playbook: t.Any) -> None:
        self.playbook = os.path.basename(str(getattr(playbook, "_file_name", "") or ""))

    def v2_playbook_on_play_start(self, play: t.Any) -> None:
        play_vars = getattr(play, "vars", None) or {}
        self.recording = not _off(play_vars.get("fleetmesh_record", True))

    def v2_runner_on_ok(self, result: t.Any) -> None:
        host = self._host(result)
        if host is not None and result._result.get("changed", False):
            name = result.task_name or result._task.get_name()
            if name not in host["changed_tasks"]:
                host["changed_tasks"].append(str(name))

    def _failure(self, result: t.Any, default: str) -> None:
        host = self._host(result)
        if host is None:
            return
        res = result._result
        hidden = bool(res.get("censored") or res.get("_ansible_no_log") or getattr(result._task, "no_log", False))
        msg = HIDDEN if hidden else str(res.get("msg") or default)
        name = result.task_name or result._task.get_name()
        host["last_failure"] = f"{name}: {' '.join(msg.split())[:500]}"

    def v2_runner_on_failed(self, result: t.Any, ignore_errors: bool = False) -> None:
        if not ignore_errors:
            self._failure(result, "failed")

    def v2_runner_on_unreachable(self, result: t.Any) -> None:
        self._failure(result, "unreachable")

    def v2_runner_on_skipped(self, result: t.Any) -> None:
        self._host(result)

    def record(self, host: str, stats: t.Any, now: str, check: bool) -> dict[str, t.Any]:
        summary = {k: int(v) for k, v in stats.summarize(host).items()}
        seen = self.hosts[host]
        outcome = result_of(summary)
        return {
            "host": host,
            "playbook": self.playbook,
            "finished": now,
            "check": check,
            "stats": summary,
            "result": outcome,
            "changed_tasks": list(seen["changed_tasks"]),
            # A failure a rescue handled is history (counted under rescued), not the host's last result.
            "last_failure": seen["last_failure"] if outcome != "ok" else "",
        }

    def v2_playbook_on_stats(self, stats: t.Any) -> None:
        record_dir = os.path.expanduser(str(self.get_option("record_dir")))
        check = bool(context.CLIARGS.get("check", False))
        now = _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()
        for host in sorted(self.hosts):
            data = self.record(host, stats, now, check)
            path = os.path.join(record_dir, record_name(host, check))
            try:
                write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
            except OSError as exc:
                self._display.warning(f"fleet_record: could not write {path}: {exc}")
