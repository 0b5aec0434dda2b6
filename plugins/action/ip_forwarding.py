# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Enable IP forwarding for the address families of the advertised routes, read before write, kept across reboot.

Like containerboot's ensureIPForwarding: only the families present, and a sysctl already at 1 is not written (so a
device that denies the write but was set up by other means is fine). Persistence in the device's own way:
`sysctl_file` (a drop-in that systemd-sysctl / OpenWrt's sysctl init read at boot), `rc_script` (a tiny sysvinit
script linked into the rc dirs, for busybox boxes whose init never reads sysctl.conf) or `none` (the boot
integration applies the sysctls the routing role publishes). No Python on the device: two shell round trips at most.
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
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_shell import (
    ROOT_OPTIONS,
    WRITE_TMP_SUFFIX,
    atomic_write,
    remount_rw,
    root_read_only,
)

SYSCTLS = {4: "net.ipv4.ip_forward", 6: "net.ipv6.conf.all.forwarding"}

ARGUMENT_SPEC: dict[str, t.Any] = {
    "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
    "families": {"type": "list", "elements": "int", "default": []},
    "persist": {"type": "str", "default": "none", "choices": ["none", "sysctl_file", "rc_script"]},
    "sysctl_file": {"type": "str", "default": "/etc/sysctl.d/99-fleetmesh-tailscale.conf"},
    "rc_script": {"type": "str", "default": "/etc/init.d/fleetmesh-ipforward"},
    "rc_links": {"type": "list", "elements": "str", "default": []},
    "remount_rw": {"type": "bool", "default": False},
}


# First line of everything this action writes after the shebang: absent removes only files that carry it.
MARK = "# Managed by fleetmesh.tailscale (routing role)"


def proc_path(sysctl: str) -> str:
    return "/proc/sys/" + sysctl.replace(".", "/")


def sysctl_file_text(families: list[int]) -> str:
    lines = "".join(f"{SYSCTLS[f]} = 1\n" for f in families)
    return f"{MARK}: forwarding for advertised subnet routes.\n{lines}"


def rc_script_text(families: list[int]) -> str:
    writes = "".join(f"\t[ -w {proc_path(SYSCTLS[f])} ] && echo 1 > {proc_path(SYSCTLS[f])}\n" for f in families)
    return (
        "#!/bin/sh\n"
        f"{MARK}: forwarding for advertised subnet routes, at every boot.\n"
        'case "${1:-start}" in\n'
        "start)\n"
        f"{writes}"
        "\t;;\n"
        "esac\n"
        "exit 0\n"
    )


class ActionModule(ActionBase):
    """Read-before-write IP forwarding per family, persisted (see the doc stub plugins/modules/ip_forwarding.py)."""

    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_diff = True

    def run(self, tmp: str | None = None, task_vars: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
        result = super().run(tmp, task_vars)
        del tmp
        _spec, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        if args["state"] == "absent":
            return self._absent(args, result)
        families = sorted({int(f) for f in args["families"]})
        bad = [f for f in families if f not in SYSCTLS]
        if bad:
            raise AnsibleActionFail(f"families: {bad} are not IP versions (use 4 and/or 6)")
        persist = str(args["persist"])
        target = {"sysctl_file": str(args["sysctl_file"]), "rc_script": str(args["rc_script"])}.get(persist, "")
        want_text = {"sysctl_file": sysctl_file_text, "rc_script": rc_script_text}.get(persist, lambda _f: "")(families)
        links = [str(link) for link in args["rc_links"]] if persist == "rc_script" else []

        read = "".join(f"echo @@v{f}; cat {proc_path(SYSCTLS[f])} 2>&1\n" for f in families)
        read += f"echo @@rootopts; {ROOT_OPTIONS} 2>/dev/null\n"
        if target:
            read += f"echo @@file; cat {sh_quote(target)} 2>/dev/null\n"
        for i, link in enumerate(links):
            read += f"echo @@link{i}; readlink {sh_quote(link)} 2>/dev/null\n"
        sec = parse_sections(run_script(self, read + "echo @@end\n", "ip_forwarding (read)").stdout)
        if "end" not in sec:
            raise AnsibleActionFail("ip_forwarding: the device's output was cut short")
        before = {SYSCTLS[f]: sec.get(f"v{f}", "").strip() for f in families}
        for name, value in before.items():
            if value not in ("0", "1", "2"):
                raise AnsibleActionFail(f"cannot read {proc_path(name)} on the device: {value!r}")
        to_write = [f for f in families if before[SYSCTLS[f]] != "1"]
        file_stale = bool(target) and sec.get("file", "").strip() != want_text.strip()
        link_target = f"../init.d/{target.rsplit('/', 1)[-1]}" if target else ""
        stale_links = [link for i, link in enumerate(links) if sec.get(f"link{i}", "").strip() != link_target]
        changed = bool(to_write or file_stale or stale_links)
        result.update(
            changed=changed,
            sysctls=[SYSCTLS[f] for f in families],
            enabled=[SYSCTLS[f] for f in to_write],
            persisted_in=target or None,
        )
        if self._task.diff and changed:
            result["diff"] = {
                "before": "".join(f"{k} = {v}\n" for k, v in before.items()) + sec.get("file", ""),
                "after": "".join(f"{k} = 1\n" for k in before) + want_text,
            }
        if not changed or self._task.check_mode:
            return result

        root_ro = root_read_only(sec.get("rootopts", ""))
        writes_root = bool(file_stale or stale_links)
        if writes_root and root_ro and not args["remount_rw"]:
            raise AnsibleActionFail(
                f"/ is mounted read-only, so {target} cannot be written: set remount_rw (the profile's readonly_root)"
            )
        script = "set -e\n"
        if writes_root and root_ro:
            # QuecOpen: / is read-only; open it for the write only, then sync and close it again whatever happens.
            script += "".join(f"{line}\n" for line in remount_rw())
        for f in to_write:
            path = proc_path(SYSCTLS[f])
            script += f'echo 1 > {path}\n[ "$(cat {path})" = 1 ]\n'
        if file_stale:
            dest, tmp_path = sh_quote(target), sh_quote(target + WRITE_TMP_SUFFIX)
            rc_script = persist == "rc_script"
            steps = atomic_write(
                dest,
                tmp_path,
                f"printf '%s' {sh_quote(want_text)} > {tmp_path}",
                mkdir=f'"$(dirname {dest})"',
                # A boot script is checked before it goes live: a broken one would stop the device's boot.
                checks=[f"sh -n {tmp_path}"] if rc_script else [],
                mode="755" if rc_script else "",
            )
            script += "".join(f"{step}\n" for step in steps)
        for link in stale_links:
            script += f'mkdir -p "$(dirname {sh_quote(link)})"\nln -sf {sh_quote(link_target)} {sh_quote(link)}\n'
        done = run_script(self, script, "ip_forwarding (write)")
        if done.rc != 0:
            raise AnsibleActionFail(
                f"could not enable forwarding {[SYSCTLS[f] for f in to_write]} or persist it in {target or '-'}: "
                f"{(done.stdout + done.stderr).strip()[:800]}"
            )
        return result

    def _absent(self, args: dict[str, t.Any], result: dict[str, t.Any]) -> dict[str, t.Any]:
        """Remove the persistence this action wrote (files carrying MARK, links to its rc script); the running
        sysctls stay as they are: the device's value before the role was never recorded."""
        files = [str(args["sysctl_file"]), str(args["rc_script"])]
        links = [str(link) for link in args["rc_links"]]
        link_target = f"../init.d/{files[1].rsplit('/', 1)[-1]}"
        read = f"echo @@rootopts; {ROOT_OPTIONS} 2>/dev/null\n"
        for i, path in enumerate(files):
            read += f"echo @@file{i}; [ -f {sh_quote(path)} ] && grep -c {sh_quote('^' + MARK)} {sh_quote(path)}\n"
        for i, link in enumerate(links):
            read += f"echo @@link{i}; readlink {sh_quote(link)} 2>/dev/null\n"
        sec = parse_sections(run_script(self, read + "echo @@end\n", "ip_forwarding (read)").stdout)
        if "end" not in sec:
            raise AnsibleActionFail("ip_forwarding: the device's output was cut short")
        ours = [path for i, path in enumerate(files) if sec.get(f"file{i}", "").strip() not in ("", "0")]
        ours += [link for i, link in enumerate(links) if sec.get(f"link{i}", "").strip() == link_target]
        result.update(changed=bool(ours), removed=ours)
        if not ours or self._task.check_mode:
            return result
        root_ro = root_read_only(sec.get("rootopts", ""))
        if root_ro and not args["remount_rw"]:
            raise AnsibleActionFail(
                f"/ is mounted read-only, so {ours} cannot be removed: set remount_rw (the profile's readonly_root)"
            )
        script = "set -e\n"
        if root_ro:
            script += "".join(f"{line}\n" for line in remount_rw())
        script += "rm -f " + " ".join(sh_quote(path) for path in ours) + "\n"
        done = run_script(self, script, "ip_forwarding (remove)")
        if done.rc != 0:
            raise AnsibleActionFail(f"could not remove {ours}: {(done.stdout + done.stderr).strip()[:800]}")
        return result
