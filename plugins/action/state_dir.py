# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prepare tailscaled's state dir on a device without Python; move old state there once, never overwrite any."""

from __future__ import annotations

import posixpath
import typing as t

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_paths import NO_MODE_FS, staging_root
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_script import (
    mount_guard,
    parse_sections,
    raise_if_unmounted,
    run_script,
    sh_quote,
)
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_shell import TMP_SUFFIX, atomic_write

FACTS_NAMESPACE = "fleetmesh_state_dir"
STATE_FILE = "tailscaled.state"
MIGRATED_SUFFIX = ".migrated"

# One round trip does check and change. Old state is copied, compared, renamed into place, and the old file is
# renamed to <old>.migrated (kept, never deleted): a second run finds nothing to move.
SCRIPT = r"""dry=__DRY__; sd=__SD__; logs=__LOGS__; new="$sd/__FILE__"; bk=__BACKUP__
say() { echo "$1"; }
perm() { stat -c %a "$1" 2>/dev/null || echo -; }
fstype() { q=$1; while [ ! -e "$q" ]; do q=$(dirname "$q"); done
  mp=$(df -P "$q" 2>/dev/null | sed -n '$p' | awk '{print $NF}')
  awk -v m="$mp" '$2 == m {t = $3} END {print t}' /proc/mounts; }
t=$(fstype "$sd")
case " __NOMODE__ " in *" $t "*)
  echo @@nomode; echo "$t"; echo @@end; exit 1;; esac
echo @@changes
for d in "$sd" "$logs"; do
  if [ ! -d "$d" ]; then say "mkdir $d"
    [ "$dry" = 1 ] || mkdir -p "$d" || { echo @@error; echo "cannot create $d"; exit 1; }; fi
  if [ -d "$d" ] && [ "$(perm "$d")" != 700 ]; then say "chmod 0700 $d"
    [ "$dry" = 1 ] || chmod 700 "$d" || { echo @@error; echo "cannot chmod 0700 $d"; exit 1; }; fi
done
moved=""
for o in __OLD__; do
  [ -f "$o" ] && [ "$o" != "$new" ] || continue
  if [ -e "$new" ]; then echo "@@warn"; echo "$o"; echo @@changes; continue; fi
  say "move $o"; moved="$o"
  if [ "$dry" != 1 ]; then
    __MOVE__ \
      && mv "$o" "$o__MIGRATED__" || { rm -f "$new__TMP__"; echo @@error; echo "cannot move $o to $new"; exit 1; }
  fi
done
if [ -n "$bk" ] && [ -z "$moved" ] && [ ! -e "$new" ] && [ -s "$bk" ]; then
  say "restore $bk"
  if [ "$dry" != 1 ]; then
    __RESTORE__ \
      || { rm -f "$new__TMP__"; echo @@error; echo "cannot restore $bk to $new"; exit 1; }
  fi
fi
if [ -f "$new" ] && [ "$(perm "$new")" != 600 ]; then say "chmod 0600 $new"
  [ "$dry" = 1 ] || chmod 600 "$new" || { echo @@error; echo "cannot chmod 0600 $new"; exit 1; }; fi
echo @@backup
if [ -n "$bk" ] && [ "$dry" != 1 ] && [ -s "$new" ] && ! cmp -s "$new" "$bk"; then
  # A plain copy (the storage may be FAT: no chmod), renamed into place.
  __REFRESH__ && echo refreshed \
    || { rm -f "$bk__TMP__"; echo @@error; echo "cannot copy $new to $bk"; exit 1; }
fi
echo @@status
[ -f "$new" ] && echo state_present
[ -z __ROOT__ ] && pidof tailscaled >/dev/null 2>&1 && echo daemon_running
echo @@end
"""
# The atomic writes (_device_shell): the state copied (or restored) and compared before it is renamed into place.
_NEW, _NEW_TMP, _BK_TMP = '"$new"', f'"$new{TMP_SUFFIX}"', f'"$bk{TMP_SUFFIX}"'
SCRIPT = (
    SCRIPT.replace(
        "__MOVE__",
        " && ".join(
            atomic_write(_NEW, _NEW_TMP, f'cp -p "$o" {_NEW_TMP}', checks=[f'cmp -s "$o" {_NEW_TMP}'], mode="600")
        ),
    )
    .replace(
        "__RESTORE__",
        " && ".join(
            atomic_write(_NEW, _NEW_TMP, f'cat "$bk" > {_NEW_TMP}', checks=[f'cmp -s "$bk" {_NEW_TMP}'], mode="600")
        ),
    )
    .replace(
        "__REFRESH__",
        " && ".join(atomic_write('"$bk"', _BK_TMP, f'cat "$new" > {_BK_TMP}', mkdir='"$(dirname "$bk")"')),
    )
    .replace("__TMP__", TMP_SUFFIX)
)


def _abs(value: str, what: str) -> str:
    value = str(value).rstrip("/") or "/"
    if not value.startswith("/") or "\n" in value or "/../" in f"{value}/":
        raise AnsibleActionFail(f"{what}: {value!r} must be an absolute path without '..' or newline")
    return value


def render(
    state_dir: str, logs_dir: str, old_paths: t.Sequence[str], dry: bool, root: str = "", *, backup: str = ""
) -> str:
    """The device script; under a rootfs staging dir ``root`` it works on ``root + path`` and moves nothing."""
    if root:
        state_dir, logs_dir, old_paths, backup = root + state_dir, root + logs_dir, [], ""
    return (
        SCRIPT.replace("__DRY__", "1" if dry else "0")
        .replace("__BACKUP__", sh_quote(backup))
        .replace("__NOMODE__", " ".join(sorted(NO_MODE_FS)))
        .replace("__ROOT__", sh_quote(root))
        .replace("__SD__", sh_quote(state_dir))
        .replace("__LOGS__", sh_quote(logs_dir))
        .replace("__FILE__", STATE_FILE)
        .replace("__MIGRATED__", MIGRATED_SUFFIX)
        .replace("__OLD__", " ".join(sh_quote(p) for p in old_paths) or "''")
    )


def interpret(
    output: str, state_dir: str, logs_dir: str, backup: str = "", old_paths: t.Sequence[str] = ()
) -> dict[str, t.Any]:
    """The facts and change list from the script's output (pure: unit-tested on recorded outputs)."""
    sec = parse_sections(output)
    if "nomode" in sec:
        raise AnsibleActionFail(
            f"state dir: {state_dir} is on a {sec['nomode'].strip()} filesystem, which keeps no Unix modes: tailscaled "
            "chmods its state file to 0600 and, where that fails, runs on an in-memory store (a new node at every "
            "start). Put the state dir on a filesystem with modes (the root filesystem) and keep a copy on the "
            "storage with state_dir_backup. Nothing was changed."
        )
    if "error" in sec:
        raise AnsibleActionFail(f"state dir: {sec['error']}")
    if "end" not in sec:
        raise AnsibleActionFail("state dir: the device's answer was cut short (no end marker)")
    changes = [line for line in sec.get("changes", "").splitlines() if line.strip()]
    moved = [line[5:] for line in changes if line.startswith("move ")]
    restored = [line[8:] for line in changes if line.startswith("restore ")]
    status = sec.get("status", "").split()
    state_file = posixpath.join(state_dir, STATE_FILE)
    return {
        "changes": changes,
        "both_exist": [line for line in sec.get("warn", "").splitlines() if line.strip()],
        "facts": {
            "state_dir": state_dir,
            "state_file": state_file,
            "logs_dir": logs_dir,
            # The copy of the state on other storage ('' for none): the boot role's watchdog keeps it up to date.
            "backup": backup,
            # Where a state is moved from when the state dir has none (site.yml's converged stamp watches them).
            "old_paths": list(old_paths),
            "state_present": "state_present" in status,
            "moved_from": moved[0] if moved else "",
            "restored_from": restored[0] if restored else "",
            # The copy on the storage was brought up to date (not a change of the device's configuration).
            "backup_refreshed": "refreshed" in sec.get("backup", ""),
            "daemon_running": "daemon_running" in status,
            # A daemon started with the old state path must restart to pick the moved state up (boot role).
            "restart_needed": bool(moved or restored) and "daemon_running" in status,
            "tailscaled_args": [f"--statedir={state_dir}", f"--state={state_file}"],
            "environment": {"TS_LOGS_DIR": logs_dir},
        },
    }


ARGUMENT_SPEC: dict[str, t.Any] = {
    "path": {"type": "str", "required": True},
    "logs_dir": {"type": "str", "default": ""},
    "old_paths": {"type": "list", "elements": "str", "default": []},
    "root": {"type": "str", "default": ""},
    "backup": {"type": "str", "default": ""},
    "storage_mount": {"type": "str", "default": ""},
    "storage_mount_timeout": {"type": "int", "default": 30},
}


class ActionModule(ActionBase):
    """State dir preparation and one-time move of old state, in one POSIX sh round trip."""

    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp: str | None = None, task_vars: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
        result = super().run(tmp, task_vars)
        del tmp
        _spec, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        root = staging_root(args["root"])
        state_dir = _abs(args["path"], "path")
        logs_dir = _abs(args["logs_dir"], "logs_dir") if args["logs_dir"] else posixpath.join(state_dir, "logs")
        old = [_abs(p, "old_paths") for p in args["old_paths"]]
        backup = _abs(args["backup"], "backup") if args["backup"] else ""
        mount, wait = str(args["storage_mount"]), int(args["storage_mount_timeout"])
        guard = "" if root else mount_guard(mount, wait, [state_dir, logs_dir] + ([backup] if backup else []))
        script = render(state_dir, logs_dir, old, bool(self._task.check_mode), root, backup=backup)
        run = run_script(self, guard + script, "state dir")
        raise_if_unmounted(run.stdout, mount, wait)
        info = interpret(run.stdout, state_dir, logs_dir, backup, [] if root else old)
        if root:
            info["changes"] = [change.replace(root + "/", "/") for change in info["changes"]]
        for path in info["both_exist"]:
            self._display.warning(
                f"{self._task.get_name()}: state exists both at {path} and in {state_dir}: "
                f"kept {state_dir}, left {path} untouched"
            )
        result.update(
            changed=bool(info["changes"]),
            changes=info["changes"],
            both_exist=info["both_exist"],
            ansible_facts={FACTS_NAMESPACE: info["facts"]},
        )
        return result
