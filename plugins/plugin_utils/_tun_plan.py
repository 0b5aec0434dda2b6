# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to the fleetmesh.tailscale collection: not a public API, may change without notice.

The planner of ``fleetmesh.tailscale.tun_device``: the probe script and its reading (Probe), the pure decision of
tailscaled's networking mode (kernel TUN or userspace) and what to change (Decision), the boot lines, the apply and
remove scripts and their reading, and the proxy listen address check. No I/O: the action runs the scripts.
"""

from __future__ import annotations

import ipaddress
import re
import typing as t
from dataclasses import dataclass, field

from ansible.errors import AnsibleActionFail
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_script import parse_sections, sh_quote
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_shell import TMP_SUFFIX
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._digest import sha256_cmd

NODE = "/dev/net/tun"
USERSPACE_FLAG = "--tun=userspace-networking"

# What the device has, in one round trip. $R is a root prefix: always empty on devices; unit tests point it at a
# fake tree to play kernels with and without tun.
PROBE = r"""R=__ROOT__; node="$R__NODE__"; mod=__MOD__
exec 2>/dev/null
echo @@os; uname -s
echo @@tun
if [ -c "$node" ]; then
  set -- $(ls -lL "$node"); [ "$5" = "10," ] && [ "$6" = 200 ] && echo node_tun || echo node_other
  (exec 3<>"$node") && echo node_opens
elif [ -e "$node" ] || [ -L "$node" ]; then echo node_other; fi
grep -qw tun "$R/proc/misc" && echo misc
[ -e "$R/sys/class/misc/tun" ] && echo sysfs
grep -q '^tun ' "$R/proc/modules" && echo module_loaded
for c in mknod insmod ip ifconfig; do command -v "$c" >/dev/null && echo "cmd_$c"; done
echo @@lo
if command -v ip >/dev/null; then
  ip -4 addr show dev lo | grep -q 'inet 127\.0\.0\.1/' && echo addr
  ip link show dev lo | grep -q '[<,]UP[,>]' && echo up
else
  ifconfig lo | grep -q -e 'inet addr:127\.0\.0\.1 ' -e 'inet 127\.0\.0\.1 ' && echo addr
  ifconfig lo | grep -q -e '[< ]UP[ ,>]' && echo up
fi
echo @@module
if [ -n "$mod" ] && [ -f "$mod" ]; then
  __MODULE_SHA256__
fi
echo @@end
""".replace("__MODULE_SHA256__", sha256_cmd('"$mod"'))

# Lines the boot integration runs before tailscaled at every boot (and this action runs now). Each is one
# self-guarded POSIX sh command: a no-op when there is nothing to do, so running it twice changes nothing.
NODE_LINE = "[ -c /dev/net/tun ] || { mkdir -p /dev/net && mknod /dev/net/tun c 10 200 && chmod 600 /dev/net/tun; }"
INSMOD_LINE = "grep -qw tun /proc/misc || insmod {path}"
LO_LINE = (
    "if command -v ip >/dev/null 2>&1; then"
    " ip -4 addr show dev lo | grep -q 'inet 127\\.0\\.0\\.1/' || ip addr add 127.0.0.1/8 dev lo;"
    " ip link set dev lo up; else ifconfig lo 127.0.0.1 netmask 255.0.0.0 up; fi"
)

USERSPACE_WARNING = (
    "tailscaled runs with userspace networking ({why}): there is no tailscale0 interface and no kernel routes, so "
    "programs on this device reach tailnet addresses only through the proxies ({proxies}); routes and DNS "
    "accepted from the tailnet are not installed in the system; incoming tailnet connections still reach the "
    "device's listening services, and advertised subnet routes / exit node are served by tailscaled itself "
    "(no IP forwarding, always source-NATed). See docs/networking.md."
)


@dataclass
class Probe:
    """What the probe script found on the device."""

    node_tun: bool = False  # /dev/net/tun is a char device 10,200
    node_other: bool = False  # something else sits at /dev/net/tun
    node_opens: bool = False
    misc: bool = False  # /proc/misc lists tun
    sysfs: bool = False  # /sys/class/misc/tun exists
    module_loaded: bool = False  # tun is a loaded module (so it is not built in)
    commands: set[str] = field(default_factory=set)
    lo_addr: bool = False
    lo_up: bool = False
    module_sha256: str = ""  # sha256 of the device's copy of the user's tun.ko, "" when absent
    os: str = "Linux"  # uname -s: the tun node, /proc/misc, insmod and the lo line are Linux's

    @property
    def kernel_tun(self) -> bool:
        return self.misc or self.sysfs

    @property
    def node_usable(self) -> bool:
        return self.node_tun and self.node_opens


@dataclass
class Decision:
    mode: str  # kernel | userspace
    branch: str  # node | mknod | module | userspace | image
    actions: list[str] = field(default_factory=list)  # what changes now, in order (see apply_script)
    boot_commands: list[str] = field(default_factory=list)
    tailscaled_args: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    upload: bool = False


def parse_probe(output: str) -> Probe:
    """The probe script's output as a Probe (pure); ValueError when it was cut short."""
    sec = parse_sections(output)
    if "end" not in sec:
        raise ValueError("the device's answer was cut short (no end marker)")
    tun = set(sec.get("tun", "").split())
    lo = set(sec.get("lo", "").split())
    sha = sec.get("module", "").strip()
    return Probe(
        node_tun="node_tun" in tun,
        node_other="node_other" in tun,
        node_opens="node_opens" in tun,
        misc="misc" in tun,
        sysfs="sysfs" in tun,
        module_loaded="module_loaded" in tun,
        commands={w[4:] for w in tun if w.startswith("cmd_")},
        lo_addr="addr" in lo,
        lo_up="up" in lo,
        module_sha256=sha if re.fullmatch(r"[0-9a-f]{64}", sha) else "",
        os=sec.get("os", "").strip() or "Linux",
    )


def proxy_args(socks5: str, http: str) -> list[str]:
    args = [USERSPACE_FLAG]
    if socks5:
        args.append(f"--socks5-server={socks5}")
    if http:
        args.append(f"--outbound-http-proxy-listen={http}")
    return args


def decide(
    probe: Probe | None,
    mode: str,
    *,
    module: str = "",
    module_sha256: str = "",
    socks5: str = "",
    http: str = "",
) -> Decision:
    """Pick the networking mode and what to change (pure). ``probe`` None: a firmware image, nothing to probe.

    Order for ``auto`` (issue 10): a usable node -> kernel; the kernel has tun but the node is missing -> create
    it; a user tun.ko -> load it, then as before; otherwise userspace. ``kernel`` fails when none of the first
    three can work, before anything changes. Boot lines are the same whatever was done now, so the decision is
    stable from run to run.
    """
    proxies = ", ".join(p for p in (f"SOCKS5 {socks5}" if socks5 else "", f"HTTP {http}" if http else "") if p)
    userspace_boot = [LO_LINE]

    linux = probe is None or probe.os == "Linux"

    def userspace(why: str, branch: str = "userspace") -> Decision:
        actions = [] if probe is None or not linux or (probe.lo_addr and probe.lo_up) else ["lo"]
        return Decision(
            "userspace",
            branch,
            actions=actions,
            boot_commands=userspace_boot if linux else [],
            tailscaled_args=proxy_args(socks5, http),
            warnings=[USERSPACE_WARNING.format(why=why, proxies=proxies or "none configured")],
        )

    if mode == "userspace":
        return userspace("networking_mode=userspace")
    if probe is None:  # a firmware rootfs: the target kernel is unknown until it boots, so the boot line decides
        if module:
            raise AnsibleActionFail(
                "a tun.ko cannot be loaded into a firmware image from here: ship it in the image's "
                "/lib/modules, or leave networking_tun_module empty"
            )
        return Decision("kernel", "image", boot_commands=[NODE_LINE])
    if not linux:  # NetBSD and friends: tailscaled opens the system's own tun devices, nothing to prepare here
        if module:
            raise AnsibleActionFail(f"networking_tun_module is for Linux kernels, and this device runs {probe.os}")
        return Decision("kernel", "os")
    # The user's module is needed unless tun is built in (listed by the kernel and not as a loaded module).
    built_in = probe.kernel_tun and not probe.module_loaded
    if module and not built_in:
        actions = []
        upload = probe.module_sha256 != module_sha256
        if upload:
            actions.append("upload")
        if not probe.kernel_tun or upload:
            actions.append("insmod")
        if upload:
            actions.append("install")
        if "insmod" not in probe.commands and "insmod" in actions:
            raise AnsibleActionFail("the device has no insmod: cannot load the tun.ko from networking_tun_module")
        actions += _node_actions(probe)
        return Decision(
            "kernel",
            "module",
            actions=actions,
            boot_commands=[INSMOD_LINE.format(path=sh_quote(module)), NODE_LINE],
            upload=upload,
        )
    if probe.node_usable:
        return Decision("kernel", "node", boot_commands=[NODE_LINE])
    problem = _kernel_problem(probe)
    if not problem:
        return Decision("kernel", "mknod", actions=_node_actions(probe), boot_commands=[NODE_LINE])
    if mode == "kernel":
        raise AnsibleActionFail(
            f"networking_mode=kernel cannot work on this device: {problem}. Nothing was changed. Supply a tun.ko "
            "built for this kernel (networking_tun_module), or use networking_mode=userspace (or auto)."
        )
    return userspace(problem)


def _kernel_problem(probe: Probe) -> str:
    """Why kernel mode cannot work without a module ('' when a node can be made)."""
    if not probe.kernel_tun:
        return "the kernel has no tun driver (/proc/misc lists no tun, no /sys/class/misc/tun)"
    if probe.node_tun and not probe.node_opens:
        return "/dev/net/tun exists but cannot be opened (no permission for the device here)"
    if "mknod" not in probe.commands:
        return "the kernel has tun but /dev/net/tun is missing and the device has no mknod"
    return ""


def _node_actions(probe: Probe) -> list[str]:
    if probe.node_usable:
        return []
    return ["replace_node" if probe.node_other else "mknod"]


APPLY_HEAD = r"""R=__ROOT__; node="$R__NODE__"; mod=__MOD__; tmp="$mod__TMP__"; sha=__SHA__
fail() { echo @@error; echo "$*"; exit 1; }
say() { echo "$1"; }
echo @@changes
"""

APPLY_STEPS = {
    "insmod": r"""src=__SRC__
if [ "$src" = "$tmp" ]; then
  got=$(__TMP_SHA256__)
  [ "$got" = "$sha" ] || { rm -f "$tmp"; fail "the uploaded tun.ko does not match (sha256 $got): removed"; }
fi
if ! grep -qw tun "$R/proc/misc"; then say "insmod $mod"
  out=$(insmod "$src" 2>&1) || { rm -f "$tmp"; fail "insmod $src failed: $out"; }
fi
""".replace("__TMP_SHA256__", sha256_cmd('"$tmp"')),
    "install": r"""say "install $mod"; mv -f "$tmp" "$mod" || { rm -f "$tmp"; fail "cannot rename $tmp to $mod"; }
""",
    "replace_node": r"""say "replace $node"; rm -f "$node" || fail "cannot remove the foreign $node"
mkdir -p "$R/dev/net" && mknod "$node" c 10 200 && chmod 600 "$node" || fail "cannot create $node"
(exec 3<>"$node") 2>/dev/null || fail "created $node but it cannot be opened"
""",
    "mknod": r"""if [ ! -c "$node" ]; then say "mknod $node"
  mkdir -p "$R/dev/net" && mknod "$node" c 10 200 && chmod 600 "$node" || fail "cannot create $node (mknod failed)"
  (exec 3<>"$node") 2>/dev/null || { rm -f "$node"; fail "created $node but it cannot be opened: removed it again"; }
fi
""",
    "lo": r"""say "lo 127.0.0.1 up"
( __LO__ ) || fail "cannot give lo 127.0.0.1 and bring it up"
""",
}


def describe(action: str, module: str) -> str:
    """One line per change, as the apply script says it (check mode reports these without running it)."""
    return {
        "upload": f"upload {module}",
        "insmod": f"insmod {module}",
        "install": f"install {module}",
        "mknod": f"mknod {NODE}",
        "replace_node": f"replace {NODE}",
        "lo": "lo 127.0.0.1 up",
    }[action]


def render_probe(module: str, root: str = "") -> str:
    return PROBE.replace("__ROOT__", sh_quote(root)).replace("__NODE__", NODE).replace("__MOD__", sh_quote(module))


def apply_script(actions: t.Sequence[str], *, module: str = "", module_sha256: str = "", root: str = "") -> str:
    """The script that carries out ``actions`` (never "upload": that is put_file, between probe and apply)."""
    body = "".join(APPLY_STEPS[a] for a in actions if a != "upload")
    return (
        (APPLY_HEAD + body + "echo @@end\n")
        .replace("__ROOT__", sh_quote(root))
        .replace("__NODE__", NODE)
        .replace("__MOD__", sh_quote(module))
        .replace("__TMP__", TMP_SUFFIX)
        .replace("__SHA__", sh_quote(module_sha256))
        .replace("__SRC__", '"$tmp"' if "upload" in actions else '"$mod"')
        .replace("__LO__", LO_LINE)
    )


def remove_script(module: str, dry: bool) -> str:
    """Absent: remove the uploaded tun.ko (and a stale temp copy); /dev and loaded modules are left alone."""
    return (
        f"dry={int(dry)}; echo @@changes; for f in {sh_quote(module)} {sh_quote(module + TMP_SUFFIX)}; do\n"
        '  [ -f "$f" ] || continue; echo "remove $f"\n'
        '  [ "$dry" = 1 ] || rm -f "$f" || { echo @@error; echo "cannot remove $f"; exit 1; }\n'
        "done; echo @@end\n"
    )


def interpret_apply(output: str) -> list[str]:
    sec = parse_sections(output)
    if "error" in sec:
        raise AnsibleActionFail(f"networking: {sec['error']}")
    if "end" not in sec:
        raise AnsibleActionFail(f"networking: the device's answer was cut short: {output.strip()[-400:]}")
    return [line for line in sec.get("changes", "").splitlines() if line.strip()]


def check_listen(value: str, what: str) -> tuple[str, bool]:
    """Validate a HOST:PORT listen address; return it and whether it is on loopback."""
    value = str(value).strip()
    if not value:
        return "", True
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]*):(\d{1,5})", value)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise AnsibleActionFail(f"{what}: {value!r} must be HOST:PORT with a port 1-65535, e.g. 127.0.0.1:1055")
    host = m.group(1).strip("[]")
    if host == "localhost":
        return value, True
    try:
        return value, ipaddress.ip_address(host).is_loopback
    except ValueError:
        return value, False
