# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install controller files and symlinks on a device without Python: checksum-skipping, atomic, verified."""

from __future__ import annotations

import typing as t

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_paths import device_path, staging_root
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._install_pipeline import (
    Install,
    apply,
    check,
    remove,
)
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._install_plan import file_spec

ARGUMENT_SPEC: dict[str, t.Any] = {
    "files": {
        "type": "list",
        "elements": "dict",
        "default": [],
        "options": {
            "src": {"type": "path", "required": True},
            "dest": {"type": "str", "required": True},
            "mode": {"type": "str", "default": "0755"},
            "src_gzip": {"type": "path", "default": ""},
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
    "keep_stale": {"type": "bool", "default": False},
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
        files = [
            file_spec(str(item["src"]), item["dest"], str(item["mode"]), root, packed=str(item["src_gzip"] or ""))
            for item in args["files"]
        ]
        inst = Install.from_args("install_files", args, files, root=root, manifest=manifest)
        inst.keep_stale = bool(args["keep_stale"])
        plan, _sec = check(self, inst)
        result.update(
            changed=plan.changed,
            uploaded=[f.dest for f in plan.uploads],
            packed=[f.dest for f in plan.uploads if plan.unpacks(f)],
            linked=[lk.path for lk, _cur in plan.links],
            modes_fixed=[f.dest for f in plan.mode_fixes],
            # What each switched link pointed to before (a link that did not exist is left out).
            previous={lk.path: cur for lk, cur in plan.links if cur != "-"},
            kept=[path for _kind, path in plan.kept],
            verify_output="",
        )
        if not plan.changed or self._task.check_mode:
            return result

        sec = apply(
            self,
            inst,
            plan,
            verify=str(args["verify"]),
            verify_expect=str(args["verify_expect"]),
            verify_stage=str(args["verify_stage"]),
            remount_root=bool(args["remount_root"]),
            fail_on={
                "unpack": "a compressed upload (files.src_gzip) did not unpack to its files.src, nothing was changed: ",
                "verify": f"verification failed, previous state restored: {str(args['verify'])!r} said: ",
            },
        )
        result["verify_output"] = sec.get("verified", "")
        return result
