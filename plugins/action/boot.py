# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install tailscaled's boot integration (scripts, units, rules, links) and keep the daemon running, without Python."""

from __future__ import annotations

import os
import shutil
import tempfile
import typing as t

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_paths import device_path, staging_root
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_script import sh_quote
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._install_pipeline import (
    Install,
    apply,
    check,
    remove,
)
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._install_plan import FileSpec, file_spec

ARGUMENT_SPEC: dict[str, t.Any] = {
    "files": {
        "type": "list",
        "elements": "dict",
        "default": [],
        "options": {
            "dest": {"type": "str", "required": True},
            "content": {"type": "str"},
            "src": {"type": "path"},
            "mode": {"type": "str", "default": "0644"},
            "shell": {"type": "bool", "default": False},
        },
        "required_one_of": [["content", "src"]],
        "mutually_exclusive": [["content", "src"]],
    },
    "links": {
        "type": "list",
        "elements": "dict",
        "default": [],
        "options": {"path": {"type": "str", "required": True}, "target": {"type": "str", "required": True}},
    },
    "dirs": {"type": "list", "elements": "str", "default": []},
    "manifest": {"type": "str", "required": True},
    "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
    "root": {"type": "str", "default": ""},
    "remount_root": {"type": "bool", "default": False},
    "service": {
        "type": "dict",
        "default": {},
        "options": {
            "running": {"type": "str", "default": ""},
            "start": {"type": "str", "default": ""},
            "stop": {"type": "str", "default": ""},
            "wait_path": {"type": "str", "default": ""},
            "log": {"type": "str", "default": ""},
        },
    },
    "restart": {"type": "bool", "default": False},
    "wait_timeout": {"type": "int", "default": 30},
    "storage_mount": {"type": "str", "default": ""},
    "storage_mount_timeout": {"type": "int", "default": 30},
}


def service_script(service: dict[str, str], *, restart: bool, wait_timeout: int) -> str:
    """Stop (when restarting) and start the daemon, then wait until it runs and its socket exists.

    A daemon that is still not running 5 s after its start has exited (bad flags, missing iptables...): the wait
    ends there instead of at the timeout, and the log's tail tells why.
    """
    running = f"( {service['running']} ) >/dev/null 2>&1"
    wait = service["wait_path"]
    up = f"[ -e {sh_quote(wait)} ]" if wait else "true"
    log = f"echo @@log; tail -n 20 {sh_quote(service['log'])} 2>&1; " if service["log"] else ""
    out = ["echo @@service"]
    if restart:
        out.append(f"( {service['stop']} ) 2>&1; echo stopped")
    out += [
        f"if ! {running}; then ( {service['start']} ) 2>&1; echo started; fi",
        "pause() { sleep 0.2 2>/dev/null || sleep 1; }",
        f"i=0; down=0; while :; do if {running}; then down=0; {up} && break; else down=$((down + 1)); fi; "
        f"i=$((i + 1)); if [ $down -ge 25 ] || [ $i -ge {int(wait_timeout) * 5} ]; then "
        f"echo @@failed; if [ $down -ge 25 ]; then echo 'not running after its start'; "
        f"else echo 'not ready {int(wait_timeout)}s after its start'; fi; {log}break; fi; pause; done",
    ]
    return "\n".join(out) + "\n"


class ActionModule(ActionBase):
    """Boot files like install_files (plus `sh -n` before scripts go live), then start or restart tailscaled once."""

    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp: str | None = None, task_vars: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
        result = super().run(tmp, task_vars)
        del tmp
        _spec, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        root = staging_root(args["root"])
        manifest = device_path(args["manifest"], "manifest", root)
        service = {k: str(v or "") for k, v in (args["service"] or {}).items()}
        has_service = bool(service.get("running") and service.get("start") and service.get("stop"))
        if any(service.get(k) for k in ("running", "start", "stop")) and not has_service:
            raise AnsibleActionFail("service needs all of running, start and stop (or none: files only)")
        if root and has_service:
            raise AnsibleActionFail("a rootfs staging dir (root) starts nothing: leave service empty")
        if args["state"] == "absent":
            # Stop through the installed scripts while they still exist; only when this role installed them.
            stop = (
                ""
                if self._task.check_mode or not has_service
                else (f"if [ -f {sh_quote(manifest)} ]; then ( {service['stop']} ) >/dev/null 2>&1; fi\n")
            )
            result.update(
                remove(
                    self, manifest, remount_root=bool(args["remount_root"]), root=root, label="boot remove", before=stop
                )
            )
            return result

        workdir = tempfile.mkdtemp(prefix="fleetmesh-boot-")
        try:
            return self._present(
                result, args=args, root=root, manifest=manifest, service=service if has_service else {}, workdir=workdir
            )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _present(
        self,
        result: dict[str, t.Any],
        *,
        args: dict[str, t.Any],
        root: str,
        manifest: str,
        service: dict[str, str],
        workdir: str,
    ) -> dict[str, t.Any]:
        files: list[FileSpec] = []
        shell: set[str] = set()
        for i, item in enumerate(args["files"]):
            src = str(item["src"] or "")
            if item.get("content") is not None:  # rendered content: a controller file for the shared install code
                src = os.path.join(workdir, f"f{i}")
                with open(src, "w", encoding="utf-8", newline="\n") as fh:
                    fh.write(str(item["content"]))
            files.append(file_spec(src, item["dest"], str(item["mode"]), root))
            if item["shell"]:
                shell.add(files[-1].dest)
        inst = Install.from_args("boot", args, files, root=root, manifest=manifest)
        running_check = (
            f"echo @@running; if ( {service['running']} ) >/dev/null 2>&1; then echo yes; else echo no; fi\n"
            if service
            else ""
        )
        plan, sec = check(self, inst, running_check)
        running = sec.get("running", "").strip() == "yes"
        files_changed = bool(plan.uploads or plan.links or plan.mode_fixes)
        restart = bool(service) and running and (files_changed or bool(args["restart"]))
        start = bool(service) and not running
        result.update(
            changed=plan.changed or restart or start,
            uploaded=[f.dest for f in plan.uploads],
            linked=[lk.path for lk, _cur in plan.links],
            restarted=restart,
            started=start,
            was_running=running,
        )
        if not result["changed"] or self._task.check_mode:
            return result

        sec = apply(
            self,
            inst,
            plan,
            remount_root=bool(args["remount_root"]),
            syntax_check=shell,
            after=(
                service_script(service, restart=restart, wait_timeout=int(args["wait_timeout"]))
                if service and (restart or start)
                else ""
            ),
            fail_on={"syntax": "a boot script failed `sh -n` on the device, nothing was changed: "},
            failure="boot install failed",
        )
        if "failed" in sec:
            log = f"; log: {sec['log']}" if sec.get("log") else ""
            raise AnsibleActionFail(f"tailscaled is {sec['failed']}; start said: {sec.get('service', '')}{log}")
        return result
