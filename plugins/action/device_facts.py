# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Gather what the roles need to know about a device, in one shell round trip, without Python on the device."""

from __future__ import annotations

import contextlib
import re
import typing as t

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._arch import (
    ElfIdent,
    parse_od_hex,
    tailscale_arch,
)
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_script import (
    parse_sections,
    run_script,
    sh_quote,
)
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_shell import root_read_only

FACTS_NAMESPACE = "fleetmesh_device"

# Commands whose presence the roles care about (path reported, or absent).
COMMANDS = (
    "iptables ip6tables nft tailscale tailscaled python3 python start-stop-daemon setsid sha256sum md5sum base64 "
    "uudecode wget curl insmod modprobe mknod ip ifconfig sysctl busybox"
)

SCRIPT = r"""exec 2>/dev/null
echo @@uname; uname -s; uname -r; uname -m; uname -p
echo @@elf; od -An -tx1 -N20 /bin/sh
echo @@libc
getconf GNU_LIBC_VERSION || for f in /lib/libc.so.6 /lib/*/libc.so.6 /usr/lib/*/libc.so.6; do
  [ -x "$f" ] && "$f" | sed -n 1p && break; done
ls /lib/ld-musl-* /usr/lib/ld-musl-* 2>/dev/null
echo @@init
[ -d /run/systemd/system ] && echo systemd
[ -d /etc/init.d ] && echo initd
for d in /etc/rc.d/rc[0-6S].d /etc/rc[0-6S].d; do [ -d "$d" ] && echo "rcdir $d"; done
[ -d /etc/udev/rules.d ] && echo udev
[ -x /sbin/procd ] && echo procd
[ -f /etc/rc.subr ] && echo netbsd_rcd
echo @@applets; busybox --list
echo @@commands; for c in __COMMANDS__; do p=$(command -v "$c") && echo "$c $p"; done
echo @@mounts; cat /proc/mounts || mount
echo @@df
for p in __PATHS__; do q=$p; while [ ! -e "$q" ]; do q=$(dirname "$q"); done
  printf '%s\t' "$p"; df -Pk "$q" | sed -n '$p'; done
echo @@tun
[ -c /dev/net/tun ] && echo node
grep -qw tun /proc/misc && echo misc
[ -e /sys/class/misc/tun ] && echo sysfs
grep -q '^tun ' /proc/modules && echo module_loaded
echo @@end
"""

DEFAULT_PATHS = ("/", "/tmp")


def _libc(text: str) -> dict[str, str]:
    version = re.search(r"(?:glibc|GLIBC|version)[ _]+(\d+\.\d+)", text)
    if "ld-musl" in text:
        return {"name": "musl", "version": ""}
    if version:
        return {"name": "glibc", "version": version.group(1)}
    return {"name": "unknown", "version": ""}


def _mounts(text: str) -> list[dict[str, str]]:
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1].startswith("/"):
            mounts.append({"device": fields[0], "mount": fields[1], "fstype": fields[2], "options": fields[3]})
    return mounts


def _storage(text: str) -> dict[str, dict[str, t.Any]]:
    storage = {}
    for line in text.splitlines():
        path, _sep, df_line = line.partition("\t")
        fields = df_line.split()
        # Filesystem 1024-blocks Used Available Capacity Mounted-on
        if len(fields) >= 6 and fields[1].isdigit() and fields[3].isdigit():
            storage[path] = {"mount": fields[5], "total_kb": int(fields[1]), "avail_kb": int(fields[3])}
    return storage


def build_facts(output: str) -> dict[str, t.Any]:
    """Turn the script's sectioned output into the fact dictionary (pure: unit-tested on recorded outputs)."""
    sec = parse_sections(output)
    if "end" not in sec:
        raise AnsibleActionFail("device facts: the device's output was cut short (no end marker)")
    uname = (sec.get("uname", "").splitlines() + ["", "", "", ""])[:4]
    kernel, release, machine, processor = (value.strip() for value in uname)
    elf = None
    with contextlib.suppress(ValueError):  # no readable /bin/sh header: arch falls back to uname alone
        elf = ElfIdent(parse_od_hex(sec.get("elf", "")))
    try:
        arch, arch_error = tailscale_arch(kernel, machine, processor, elf), ""
    except ValueError as exc:
        arch, arch_error = "", str(exc)
    init_lines = sec.get("init", "").splitlines()
    rc_dirs = sorted(line.split(None, 1)[1] for line in init_lines if line.startswith("rcdir "))
    init_systems = [name for name in ("systemd", "udev", "procd", "netbsd_rcd") if name in init_lines]
    if "initd" in init_lines and rc_dirs:
        init_systems.append("sysvinit")
    commands = dict(line.split(" ", 1) for line in sec.get("commands", "").splitlines() if " " in line)
    mounts = _mounts(sec.get("mounts", ""))
    root = [m for m in mounts if m["mount"] == "/"]
    tun_lines = sec.get("tun", "").splitlines()
    return {
        "kernel": kernel,
        "kernel_release": release,
        "machine": machine,
        "processor": processor if processor != "unknown" else "",
        "elf_bits": elf.bits if elf else None,
        "elf_little_endian": elf.little_endian if elf else None,
        "tailscale_arch": arch,
        "tailscale_arch_error": arch_error,
        "libc": _libc(sec.get("libc", "")),
        "init_systems": init_systems,
        "rc_dirs": rc_dirs,
        "busybox_applets": sorted(set(sec.get("applets", "").split())),
        "commands": commands,
        "python": commands.get("python3") or commands.get("python") or "",
        "iptables": "iptables" in commands,
        "nft": "nft" in commands,
        "mounts": mounts,
        "root_readonly": bool(root) and root_read_only(root[-1]["options"]),
        "storage": _storage(sec.get("df", "")),
        "tun": {
            "node": "node" in tun_lines,
            "kernel": "misc" in tun_lines or "sysfs" in tun_lines,
            "module_loaded": "module_loaded" in tun_lines,
        },
    }


def render_script(paths: t.Iterable[str]) -> str:
    quoted = " ".join(sh_quote(p) for p in paths)
    return SCRIPT.replace("__COMMANDS__", COMMANDS).replace("__PATHS__", quoted)


ARGUMENT_SPEC: dict[str, t.Any] = {"paths": {"type": "list", "elements": "path", "default": []}}


class ActionModule(ActionBase):
    """Gather device facts with one POSIX sh script over the connection."""

    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp: str | None = None, task_vars: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
        result = super().run(tmp, task_vars)
        del tmp
        _spec, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        paths = list(dict.fromkeys([*DEFAULT_PATHS, *(str(p) for p in args["paths"])]))
        for path in paths:
            if not path.startswith("/"):
                raise AnsibleActionFail(f"paths: {path!r} is not absolute")
        run = run_script(self, render_script(paths), "device facts")
        facts = build_facts(run.stdout)
        result.update(changed=False, ansible_facts={FACTS_NAMESPACE: facts})
        return result
