# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to the fleetmesh.tailscale collection: not a public API, may change without notice.

Run a POSIX sh script on a device through whatever connection the host has (telnet, adb, ssh, local), from an
action plugin, without Python on the device; and read back its sectioned output.

Scripts print sections: a line ``@@name`` starts section ``name``; the lines up to the next ``@@`` line are its
value. One script gathers many facts in one round trip.
"""

from __future__ import annotations

import typing as t

from ansible.errors import AnsibleActionFail

SECTION_MARK = "@@"


class ScriptResult(t.NamedTuple):
    rc: int
    stdout: str
    stderr: str


def run_script(action: t.Any, script: str, what: str) -> ScriptResult:
    """Run ``script`` with the device's /bin/sh through the action's connection; fail clearly if it cannot run."""
    # pylint: disable-next=protected-access
    res = action._low_level_execute_command(script, sudoable=False, executable="/bin/sh")
    rc = res.get("rc")
    if rc is None:
        raise AnsibleActionFail(f"{what}: the connection returned no exit status")
    return ScriptResult(int(rc), str(res.get("stdout", "")), str(res.get("stderr", "")))


def parse_sections(text: str) -> dict[str, str]:
    """Split ``@@name`` sectioned output into {name: value}; lines before the first mark are ignored."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith(SECTION_MARK) and len(line) > len(SECTION_MARK):
            current = sections.setdefault(line[len(SECTION_MARK) :].strip(), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines).strip("\n") for name, lines in sections.items()}


def sh_quote(value: str) -> str:
    """Quote a value for POSIX sh (single quotes; busybox ash and dash agree on this form)."""
    return "'" + str(value).replace("'", "'\"'\"'") + "'"


def mount_wait_script(mount: str, timeout: int) -> str:
    """Wait up to ``timeout`` s for ``mount`` in the device's mount table; when it never appears, print section
    unmounted and end the script (exit 0, nothing after it runs). Silent when mounted."""
    m = sh_quote(mount)
    return (
        f"i=0; while ! awk -v m={m} '$2 == m {{f = 1}} END {{exit !f}}' /proc/mounts; do "
        f'if [ "$i" -ge {int(timeout)} ]; then echo @@unmounted; echo @@end; exit 0; fi; sleep 1; i=$((i + 1)); done\n'
    )


def under_mount(mount: str, paths: t.Iterable[str]) -> bool:
    """Whether any of the paths is the storage mount or below it (a mount of '' or '/' never needs a check)."""
    mount = str(mount or "").rstrip("/")
    return bool(mount) and any(p == mount or p.startswith(mount + "/") for p in paths)


def mount_guard(mount: str, timeout: int, paths: t.Iterable[str]) -> str:
    """Shell for the head of an action's first device script (its read-only check, so no round trip of its own):
    before anything is written below a storage mount, wait (bounded) until the device's /proc/mounts lists it. The
    mount point existing as a directory proves nothing: writing there would fill the root filesystem and be hidden
    once the storage is mounted over it. Empty when none of the paths is below the mount."""
    mount = str(mount or "").rstrip("/")
    return mount_wait_script(mount, timeout) if under_mount(mount, paths) else ""


def raise_if_unmounted(stdout: str, mount: str, timeout: int) -> None:
    """Fail, with nothing written, when a script headed by mount_guard found the storage not mounted."""
    if "unmounted" in parse_sections(stdout):
        raise AnsibleActionFail(
            f"{str(mount).rstrip('/')} is not mounted (the device's /proc/mounts, checked for {int(timeout)}s): not "
            "mounted: is it in USB storage mode, or not mounted yet after boot? Nothing was written."
        )
