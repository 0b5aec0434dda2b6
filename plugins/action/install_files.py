# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install controller files and symlinks on a device without Python: checksum-skipping, atomic, verified."""

from __future__ import annotations

import typing as t

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_script import (
    mount_guard,
    parse_sections,
    raise_if_unmounted,
    run_script,
)
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._install_plan import (
    apply_script,
    check_script,
    device_path,
    file_spec,
    link_specs,
    manifest_text,
    plan_from_output,
    remove,
    space_errors,
    staging_root,
    upload,
)

ARGUMENT_SPEC: dict[str, t.Any] = {
    "files": {
        "type": "list",
        "elements": "dict",
        "default": [],
        "options": {
            "src": {"type": "path", "required": True},
            "dest": {"type": "str", "required": True},
            "mode": {"type": "str", "default": "0755"},
        },
    },
    "links": {
        "type": "list",
        "elements": "dict",
        "default": [],
        "options": {"path": {"type": "str", "required": True}, "target": {"type": "str", "required": True}},
    },
    "dirs": {"type": "list", "elements": "str", "default": []},
    "verify": {"type": "str", "default": ""},
    "verify_expect": {"type": "str", "default": ""},
    "verify_stage": {"type": "str", "default": "links", "choices": ["files", "links"]},
    "remount_root": {"type": "bool", "default": False},
    "manifest": {"type": "str", "default": ""},
    "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
    "root": {"type": "str", "default": ""},
    "storage_mount": {"type": "str", "default": ""},
    "storage_mount_timeout": {"type": "int", "default": 30},
}


class ActionModule(ActionBase):
    """Upload only what differs (sha256 on the device), rename into place, verify, then switch symlinks."""

    # Files go straight to a temp name beside their destination: no remote tmp dir (saves 3 round trips).
    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp: str | None = None, task_vars: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
        result = super().run(tmp, task_vars)
        del tmp
        _spec, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        root = staging_root(args["root"])
        manifest = device_path(args["manifest"], "manifest", root) if args["manifest"] else ""
        if args["state"] == "absent":
            if not manifest:
                raise AnsibleActionFail("state=absent needs manifest: it removes exactly what the manifest lists")
            result.update(
                remove(self, manifest, remount_root=bool(args["remount_root"]), root=root, label="install_files")
            )
            return result
        files = [file_spec(str(item["src"]), item["dest"], str(item["mode"]), root) for item in args["files"]]
        links = link_specs(args["links"], files, root)
        dirs = [device_path(d, "dirs", root) for d in args["dirs"]]
        mount, wait = str(args["storage_mount"]), int(args["storage_mount_timeout"])
        written = [f.dest for f in files] + dirs + ([manifest] if manifest else [])
        guard = "" if root else mount_guard(mount, wait, written)
        run = run_script(self, guard + check_script(files, links, manifest, dirs), "install_files check")
        raise_if_unmounted(run.stdout, mount, wait)
        try:
            plan = plan_from_output(run.stdout, files, links, dirs, manifest, root=root)
        except ValueError as exc:
            raise AnsibleActionFail(f"install_files: {exc}; device said: {run.stderr.strip()[:400]}") from exc
        result.update(
            changed=plan.changed,
            uploaded=[f.dest for f in plan.uploads],
            linked=[lk.path for lk, _cur in plan.links],
            modes_fixed=[f.dest for f in plan.mode_fixes],
        )
        errors = space_errors(plan)
        if errors:
            raise AnsibleActionFail(f"not enough space: {'; '.join(errors)}; nothing was changed")
        if not plan.changed or self._task.check_mode:
            return result

        upload(self, plan, dirs, "install_files")
        script = apply_script(
            plan,
            dirs,
            verify=str(args["verify"]),
            verify_expect=str(args["verify_expect"]),
            verify_stage=str(args["verify_stage"]),
            remount_root=bool(args["remount_root"]),
            manifest=manifest,
            manifest_body=manifest_text(files, links, plan.manifest_dirs or dirs, root),
            root=root,
        )
        done = run_script(self, script, "install_files apply")
        sec = parse_sections(done.stdout)
        if "verify" in sec:
            raise AnsibleActionFail(
                f"verification failed, previous state restored: {str(args['verify'])!r} said: {sec['verify']}"
            )
        if done.rc != 0 or "end" not in sec:
            raise AnsibleActionFail(f"install failed (rc={done.rc}): {(done.stdout + done.stderr).strip()[:800]}")
        return result
