# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to the fleetmesh.tailscale collection: not a public API, may change without notice.

The one install pipeline of the actions that install files (``install_files``, ``boot``), in the device round trips
it takes: ``check`` (storage-mount guard and inspection in one script, the plan, the space check), ``apply`` (the
upload of what differs, then one script that puts it in place, plus what the action appends) and ``remove``
(exactly what the manifest lists). The scripts and the planning are _install_plan.py's.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

from ansible.errors import AnsibleActionFail
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_paths import device_path
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_script import (
    mount_guard,
    parse_sections,
    raise_if_unmounted,
    run_script,
)
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._install_plan import (
    FileSpec,
    LinkSpec,
    Plan,
    apply_script,
    check_script,
    kept_text,
    link_specs,
    manifest_text,
    parse_manifest,
    plan_from_output,
    prepare_script,
    remove_script,
    space_errors,
    upload_name,
)

END = "echo @@end\n"


@dataclass
class Install:
    """What one install task wants on the device; ``label`` names the task in its errors and script names."""

    label: str
    files: list[FileSpec]
    links: list[LinkSpec]
    dirs: list[str]
    manifest: str  # '' for none
    root: str = ""  # a rootfs staging dir, or ''
    storage_mount: str = ""
    storage_mount_timeout: int = 30
    keep_stale: bool = False  # leave what the old manifest lists and is no longer wanted (Plan.kept)

    @classmethod
    def from_args(
        cls, label: str, args: dict[str, t.Any], files: list[FileSpec], *, root: str, manifest: str
    ) -> Install:
        """The links, dirs and storage mount from the task's arguments (the files and manifest are the caller's)."""
        return cls(
            label,
            files,
            link_specs(args["links"], files, root),
            [device_path(d, "dirs", root) for d in args["dirs"]],
            manifest,
            root,
            str(args["storage_mount"]),
            int(args["storage_mount_timeout"]),
        )


def check(action: t.Any, inst: Install, extra: str = "") -> tuple[Plan, dict[str, str]]:
    """One round trip: the device as it is (``extra`` adds the action's own sections), the plan of what differs,
    and the space check; returns the plan and the script's sections."""
    mount, wait = inst.storage_mount, inst.storage_mount_timeout
    written = [f.dest for f in inst.files] + inst.dirs + ([inst.manifest] if inst.manifest else [])
    guard = "" if inst.root else mount_guard(mount, wait, written)
    script = guard + check_script(inst.files, inst.links, inst.manifest, inst.dirs).removesuffix(END) + extra + END
    run = run_script(action, script, f"{inst.label} check")
    raise_if_unmounted(run.stdout, mount, wait)
    try:
        plan = plan_from_output(
            run.stdout, inst.files, inst.links, inst.dirs, inst.manifest, root=inst.root, keep_stale=inst.keep_stale
        )
    except ValueError as exc:
        raise AnsibleActionFail(f"{inst.label}: {exc}; device said: {run.stderr.strip()[:400]}") from exc
    errors = space_errors(plan)
    if errors:
        raise AnsibleActionFail(f"not enough space: {'; '.join(errors)}; nothing was changed")
    return plan, parse_sections(run.stdout)


def upload(action: t.Any, plan: Plan, dirs: t.Sequence[str], label: str) -> None:
    """Create the target dirs, then put every file that differs at its temp name (apply_script renames them), as
    its gzip copy where the device unpacks one (apply_script unpacks it first)."""
    if not plan.uploads:
        return
    prep = run_script(action, prepare_script(plan, dirs), f"{label} prepare")
    if prep.rc != 0:
        raise AnsibleActionFail(f"cannot prepare the target dirs: {(prep.stdout + prep.stderr).strip()}")
    for f in plan.uploads:
        src, dest = upload_name(plan, f)
        action._connection.put_file(src, dest)  # pylint: disable=protected-access


def apply(
    action: t.Any,
    inst: Install,
    plan: Plan,
    *,
    remount_root: bool,
    verify: str = "",
    verify_expect: str = "",
    verify_stage: str = "links",
    syntax_check: t.Collection[str] = (),
    after: str = "",
    fail_on: t.Mapping[str, str] | None = None,
    failure: str = "install failed",
) -> dict[str, str]:
    """Upload what differs and put the plan in place (nothing of that when the plan is unchanged), then ``after``,
    in one script; returns its sections.

    Fails on the first section of ``fail_on`` (section -> message prefix) the script printed, then with
    ``failure`` when the script failed or was cut short.
    """
    script = ""
    if plan.changed:
        upload(action, plan, inst.dirs, inst.label)
        script = apply_script(
            plan,
            inst.dirs,
            verify=verify,
            verify_expect=verify_expect,
            verify_stage=verify_stage,
            remount_root=remount_root,
            manifest=inst.manifest,
            manifest_body=manifest_text(inst.files, inst.links, plan.manifest_dirs or inst.dirs, inst.root)
            + kept_text(plan, inst.root),
            syntax_check=syntax_check,
            root=inst.root,
        ).removesuffix(END)
    done = run_script(action, script + after + END, f"{inst.label} apply")
    sec = parse_sections(done.stdout)
    for name, message in (fail_on or {}).items():
        if name in sec:
            raise AnsibleActionFail(f"{message}{sec[name]}")
    if done.rc != 0 or "end" not in sec:
        raise AnsibleActionFail(f"{failure} (rc={done.rc}): {(done.stdout + done.stderr).strip()[:800]}")
    return sec


def remove(action: t.Any, manifest: str, *, remount_root: bool, root: str, label: str, before: str = "") -> dict:
    """Remove what the manifest lists (check mode: only say so); `before` runs first in the same round trip."""
    check_only = bool(action._task.check_mode)  # pylint: disable=protected-access
    run = run_script(action, before + remove_script(manifest, remount_root, check_only, root), label)
    sec = parse_sections(run.stdout)
    if "end" not in sec:
        raise AnsibleActionFail(f"removal failed (rc={run.rc}): {(run.stdout + run.stderr).strip()[:800]}")
    removed = [path for _kind, path in parse_manifest(sec.get("manifest", ""), root)]
    return {"changed": "absent" not in sec, "removed": removed}
