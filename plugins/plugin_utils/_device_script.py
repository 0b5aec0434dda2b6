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
