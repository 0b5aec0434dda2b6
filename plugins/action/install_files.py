# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install controller files and symlinks on a device without Python: checksum-skipping, atomic, verified."""

from __future__ import annotations

import hashlib
import os
import typing as t

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_script import parse_sections, run_script
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._install_plan import (
    FileSpec,
    LinkSpec,
    apply_script,
    check_script,
    device_path,
    manifest_text,
    parse_manifest,
    plan_from_output,
    prepare_script,
    remove_script,
    space_errors,
    staging_root,
    tmp_name,
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
}


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
            return self._remove(result, manifest, bool(args["remount_root"]), root)
        files = [self._file_spec(item, root) for item in args["files"]]
        links = [
            LinkSpec(device_path(item["path"], "links.path", root), str(item["target"]).strip())
            for item in args["links"]
        ]
        dirs = [device_path(d, "dirs", root) for d in args["dirs"]]
        if any(not lk.target or "\n" in lk.target for lk in links):
            raise AnsibleActionFail("links.target must be a non-empty single line")
        if len({f.dest for f in files} | {lk.path for lk in links}) != len(files) + len(links):
            raise AnsibleActionFail("files.dest and links.path must all be different paths")

        run = run_script(self, check_script(files, links, manifest, dirs), "install_files check")
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

        if plan.uploads:
            prep = run_script(self, prepare_script(plan, dirs), "install_files prepare")
            if prep.rc != 0:
                raise AnsibleActionFail(f"cannot prepare the target dirs: {(prep.stdout + prep.stderr).strip()}")
            for f in plan.uploads:
                self._connection.put_file(f.src, tmp_name(f.dest))
        script = apply_script(
            plan,
            dirs,
            verify=str(args["verify"]),
            verify_expect=str(args["verify_expect"]),
            verify_stage=str(args["verify_stage"]),
            remount_root=bool(args["remount_root"]),
            manifest=manifest,
            manifest_body=manifest_text(files, links, plan.manifest_dirs or dirs, root),
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

    def _file_spec(self, item: dict[str, t.Any], root: str) -> FileSpec:
        src = str(item["src"])
        if not os.path.isfile(src):
            raise AnsibleActionFail(f"files.src {src!r} is not a file on the controller")
        mode = str(item["mode"])
        if not mode.isdigit() or len(mode) not in (3, 4) or any(c > "7" for c in mode):
            raise AnsibleActionFail(f"files.mode {mode!r} must be octal like '0755'")
        return FileSpec(src, device_path(item["dest"], "files.dest", root), mode, os.path.getsize(src), _sha256(src))

    def _remove(self, result: dict[str, t.Any], manifest: str, remount_root: bool, root: str) -> dict[str, t.Any]:
        script = remove_script(manifest, remount_root, bool(self._task.check_mode), root)
        run = run_script(self, script, "install_files")
        sec = parse_sections(run.stdout)
        if "end" not in sec:
            raise AnsibleActionFail(f"removal failed (rc={run.rc}): {(run.stdout + run.stderr).strip()[:800]}")
        removed = [path for _kind, path in parse_manifest(sec.get("manifest", ""), root)]
        result.update(changed="absent" not in sec, removed=removed)
        return result
