# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read a device's Tailscale state (arch, installed version, backend state, node, prefs) in one shell round trip.

Read-only, for the fleet report (playbooks/report.yml). A missing binary or a stopped daemon is reported, not
failed. See the doc stub plugins/modules/node_status.py.
"""

from __future__ import annotations

import typing as t

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_script import (
    parse_sections,
    run_script,
    sh_quote,
)
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._prefs import PrefsError, parse_json

SCRIPT = r"""T=__T__
echo @@machine; uname -m 2>/dev/null
echo @@present; if [ -x "$T" ] || command -v "$T" >/dev/null 2>&1; then echo yes; fi
echo @@version; "$T" version 2>/dev/null | head -n 1
out=$("$T" __SOCKET__ status --json --peers=false 2>&1); rc=$?
echo @@status_rc; echo "$rc"
echo @@status; printf '%s\n' "$out"
out=$("$T" __SOCKET__ debug prefs 2>&1); rc=$?
echo @@prefs_rc; echo "$rc"
echo @@prefs; printf '%s\n' "$out"
echo @@end
"""

ARGUMENT_SPEC: dict[str, t.Any] = {
    "tailscale": {"type": "str", "required": True},
    "socket": {"type": "str"},
}


def render_script(tailscale: str, socket: str | None) -> str:
    sock = f"--socket={sh_quote(socket)}" if socket else ""
    return SCRIPT.replace("__T__", sh_quote(tailscale)).replace("__SOCKET__", sock)


def _json(text: str) -> dict[str, t.Any] | None:
    """The JSON object in a command's output (a warning line may come before it), or None."""
    try:
        return parse_json(text, "")
    except PrefsError:
        return None


def _rc(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else None


def _list(value: t.Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def build_status(output: str) -> dict[str, t.Any]:
    """The node's state from the script's sectioned output (pure: unit-tested on recorded outputs)."""
    sec = parse_sections(output)
    if "end" not in sec:
        raise AnsibleActionFail("node status: the device's output was cut short (no end marker)")
    installed = sec.get("present", "").strip() == "yes"
    version_line = sec.get("version", "").strip()
    version = version_line.split()[0].split("-", maxsplit=1)[0] if installed and version_line else ""
    status_rc, prefs_rc = _rc(sec.get("status_rc", "")), _rc(sec.get("prefs_rc", ""))
    status = _json(sec.get("status", "")) if status_rc == 0 else None
    prefs = _json(sec.get("prefs", "")) if prefs_rc == 0 else None
    self_node = (status or {}).get("Self") if isinstance((status or {}).get("Self"), dict) else {}
    if not installed:
        state, error = "NotInstalled", "no tailscale CLI on the device"
    elif status is None:
        state = "NoDaemon"
        error = (sec.get("status", "").strip().splitlines() or ["tailscale status failed"])[-1][:300]
    else:
        state, error = str(status.get("BackendState") or "Unknown"), ""
    tun = status.get("TUN") if status is not None else None
    return {
        "machine": sec.get("machine", "").strip(),
        "installed": installed,
        "version": version,
        "version_long": version_line if installed else "",
        "daemon_version": str((status or {}).get("Version") or "").split("-", maxsplit=1)[0],
        "backend_state": state,
        "error": error,
        "networking": "" if tun is None else ("kernel" if tun else "userspace"),
        "tailscale_ips": _list(self_node.get("TailscaleIPs")),
        "node_key": str(self_node.get("PublicKey") or ""),
        "hostname": str(self_node.get("HostName") or ""),
        "dns_name": str(self_node.get("DNSName") or ""),
        "online": self_node.get("Online") if isinstance(self_node.get("Online"), bool) else None,
        "primary_routes": _list(self_node.get("PrimaryRoutes")),
        "advertised_routes": sorted(_list((prefs or {}).get("AdvertiseRoutes"))),
        "prefs_read": prefs is not None,
    }


class ActionModule(ActionBase):
    """Read the node's state with one POSIX sh script over the connection (see plugins/modules/node_status.py)."""

    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp: str | None = None, task_vars: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
        result = super().run(tmp, task_vars)
        del tmp
        _spec, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        run = run_script(self, render_script(str(args["tailscale"]), args.get("socket")), "node status")
        result.update(changed=False, node=build_status(run.stdout))
        return result
