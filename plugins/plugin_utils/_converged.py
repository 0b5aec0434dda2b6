# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to the fleetmesh.tailscale collection: not a public API, may change without notice.

The converged stamp (``fleetmesh.tailscale.converged``): what lets a re-run that would change nothing skip every
role after one device round trip (issue 17).

At the end of a full ``site.yml`` run that succeeded, the device gets a stamp file with

- ``inputs <sha256>``: the digest of everything the run's outcome depends on, on the controller: this collection's
  code (roles, plugins, playbooks) and every variable of the collection's prefixes (``fleetmesh_``, ``binary_``,
  ``iptables_shim_``, ``state_dir_``, ``networking_``, ``boot_``, ``login_``, ``routing_``, ``device_``) as
  templated for the host (but the doors' options and the release cache), secrets left out by name, plus the size
  and mtime of the controller files the run sends (binary_src, iptables_shim_bundles, networking_tun_module);
- ``observed <sha256>``: the digest of what the device showed right after that run, and
- ``obs <kind> <arg>`` lines: what to look at (the roles' manifests and every item they list, other paths, the
  forwarding sysctls, the tailscale CLI and its socket).

The check (first task of a run) prints the stamp and the same observation in one round trip. The host is converged
when the inputs digest and the observation digest both match: nothing the run would decide differs from the run
that wrote the stamp. Anything else (no stamp, other inputs, a file changed, removed or added to a manifest, the
node logged out, a pref changed by hand, the daemon down) runs every role as before.

Pure: the device round trips are the action's, so this is unit-tested without a device.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import typing as t

from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_script import parse_sections, sh_quote
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._prefs import PrefsError, parse_json

STAMP_MAGIC = "fleetmesh-converged 1"
STAMP_NAME = ".fleetmesh-converged"
# The variables a run's outcome depends on: the collection's prefixes (house style: role vars carry the role name).
PREFIXES = (
    "fleetmesh_",
    "binary_",
    "iptables_shim_",
    "state_dir_",
    "networking_",
    "boot_",
    "login_",
    "routing_",
    "device_",
)
# What the collection itself sets during a run (set_fact, register, include_vars, the actions' facts): outputs,
# not inputs. A second play of the same run sees them; they must not make its check differ. A unit test keeps this
# list complete against the roles and playbooks.
SET_BY_RUN = frozenset(
    (
        "binary_health",
        "binary_health_online",
        "binary_health_passed",
        "binary_health_seen",
        "binary_install",
        "binary_release",
        "binary_rollback_from",
        "binary_rollback_to",
        "boot_commands",
        "boot_files",
        "boot_path",
        "boot_release_version",
        "boot_result",
        "boot_spec",
        "boot_systemd_release_unit",
        "boot_tailscaled_args",
        "boot_tailscaled_environment",
        "device_profile_data",
        "device_profile_base",
        "device_profile_keys",
        "device_profile_overrides",
        "fleetmesh_binary",
        "fleetmesh_binary_pin",
        "fleetmesh_boot",
        "fleetmesh_iptables_shim",
        "fleetmesh_login",
        "fleetmesh_report",
        "fleetmesh_report_control",
        "fleetmesh_report_host",
        "fleetmesh_report_status",
        "fleetmesh_routing",
        "fleetmesh_state_dir",
        "fleetmesh_device",
        "fleetmesh_networking",
        "fleetmesh_converged",
        "fleetmesh_converged_done",
        "iptables_shim_bundle",
        "iptables_shim_manifest",
        "iptables_shim_plan",
        "iptables_shim_wanted",
        "login_identity",
        "login_result",
        "routing_advertised",
    )
)
# Not inputs: how the controller reaches the device (the doors' options) and the controller's release cache.
NOT_INPUTS_RE = re.compile(r"^(fleetmesh_(telnet|adb|ssh)_|binary_cache_dir$)")
# The variables that name files on the controller whose contents the run sends (a local tarball or build dir, the
# iptables bundles, a tun.ko): their files' size and mtime count too.
CONTROLLER_FILE_VARS = ("binary_src", "iptables_shim_bundles", "networking_tun_module")
# Names (at any depth) whose values are secrets: their presence counts, never their value.
SECRET_RE = re.compile(r"(pass(word|wd)?|secret|token|auth_?key|api_?key|private|credential)", re.I)
# Code whose change may change a run's outcome (not the doors, the callbacks or the inventory plugins: how the
# controller reaches and reports on a device is not an input, like the doors' options).
CODE_DIRS = ("roles", "playbooks", "plugins/action", "plugins/filter", "plugins/modules", "plugins/plugin_utils")
# Files above this size are compared by `ls -ln` (mode, owner, size, mtime), smaller ones by their checksum too:
# a no-op must not read the 30+ MB programs from flash on every run.
SUM_MAX_BYTES = 65536
# status --json fields that say the node is the same and up (Online, LastSeen, Health... change on their own).
STATUS_KEYS = ("BackendState", "Version")
SELF_KEYS = ("PublicKey", "TailscaleIPs", "HostName")


class StampError(Exception):
    """The inputs cannot be digested (a variable does not template): the run takes the full path."""


def secret_name(name: str) -> bool:
    return bool(SECRET_RE.search(name))


def input_names(names: t.Iterable[str]) -> list[str]:
    """The variable names whose values are the run's inputs."""
    return sorted(n for n in names if n.startswith(PREFIXES) and n not in SET_BY_RUN and not NOT_INPUTS_RE.search(n))


def scrub(value: t.Any) -> t.Any:
    """A JSON-able copy of value with secret-named keys' values replaced by a marker."""
    if isinstance(value, dict):
        return {str(k): ("<secret>" if secret_name(str(k)) else scrub(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)


def controller_paths(value: t.Any) -> list[str]:
    """Absolute paths among the string leaves of value."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in controller_paths(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in controller_paths(v)]
    if isinstance(value, str) and value.startswith("/") and "\n" not in value and len(value) < 4096:
        return [value]
    return []


def path_identity(path: str) -> str:
    """Size and mtime of a controller file; of a dir, of every file under it. '' when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    if not os.path.isdir(path):
        return f"{st.st_size}:{st.st_mtime_ns}"
    entries = []
    for base, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(base, name)
            try:
                fst = os.stat(full)
            except OSError:
                continue
            entries.append(f"{os.path.relpath(full, path)}:{fst.st_size}:{fst.st_mtime_ns}")
    return "dir " + " ".join(entries)


def code_digest(root: str) -> str:
    """sha256 over the collection's code (relative paths and contents) under root."""
    h = hashlib.sha256()
    for top in CODE_DIRS:
        for base, dirs, files in os.walk(os.path.join(root, top)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if name.endswith((".pyc", ".pyo")):
                    continue
                path = os.path.join(base, name)
                h.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as f:
                    h.update(f.read())
                h.update(b"\0")
    return h.hexdigest()


def inputs_digest(values: dict[str, t.Any], code: str, omit_token: str = "") -> str:
    """sha256 of the templated input variables (secrets scrubbed), the controller files they name, and the code."""
    clean = {name: scrub(value) for name, value in values.items()}
    text = json.dumps(clean, sort_keys=True, default=str)
    if omit_token:
        text = text.replace(omit_token, "<omit>")
    files = sorted({p for name in CONTROLLER_FILE_VARS for p in controller_paths(clean.get(name))})
    ident = {p: path_identity(p) for p in files}
    return hashlib.sha256(json.dumps({"code": code, "vars": text, "files": ident}, sort_keys=True).encode()).hexdigest()


def entries(
    manifests: t.Sequence[str],
    paths: t.Sequence[str],
    *,
    proc: t.Sequence[str] = (),
    tailscale: str = "",
    socket: str = "",
    metas: t.Sequence[str] = (),
) -> list[str]:
    """The stamp's ``obs`` lines: what the check looks at. ``metas``: files observed by ``ls -lnd`` only, never
    read (the node's state file, a config file that may hold a key)."""
    lines = [f"obs manifest {m}" for m in manifests if m]
    lines += [f"obs path {p}" for p in paths if p]
    lines += [f"obs meta {p}" for p in metas if p]
    lines += [f"obs proc {p}" for p in proc if p]
    if tailscale:
        lines += [f"obs cli {tailscale}", f"obs socket {socket}"]
    for line in lines:
        if "\n" in line or "\r" in line:
            raise StampError(f"a path with a line break cannot be observed: {line!r}")
    return lines


# One item: its `ls -lnd` line (a dir: mode and owner only, its mtime moves with its entries) and, for a small
# regular file, its checksum (cksum, else md5sum, else sha256sum: whichever the device has, the same each time).
_OBSERVE = r"""set -f
o() { f=$1
  if [ -d "$f" ] && [ ! -L "$f" ]; then set -- $(ls -lnd "$f"); echo "d $f $1 $3 $4"; return; fi
  l=$(ls -lnd "$f" 2>/dev/null) || { echo "- $f"; return; }; echo "$l"
  if [ -f "$f" ] && [ ! -L "$f" ]; then set -- $l; if [ "$5" -le __MAX__ ] 2>/dev/null; then
    cksum < "$f" 2>/dev/null || md5sum < "$f" 2>/dev/null || sha256sum < "$f"; fi; fi; }
"""


def observe_script(stamp: str) -> str:
    """POSIX sh (busybox ash): look at every ``obs`` item the file ``stamp`` lists, print it under @@obs (the CLI's
    answers under @@status and @@prefs)."""
    s = sh_quote(stamp)
    return (
        _OBSERVE.replace("__MAX__", str(SUM_MAX_BYTES))
        + "echo @@obs; uname -srm; [ -c /dev/net/tun ] && echo tun\n"
        + f"sed -n 's/^obs //p' {s} | while read -r k a; do echo \"== $k $a\"; case $k in\n"
        + '  manifest) cat "$a" 2>/dev/null || echo "- $a"\n'
        + '    [ -f "$a" ] && while read -r kind p; do [ -n "$p" ] && o "$p"; done < "$a";;\n'
        + '  path) o "$a";;\n'
        + '  meta) ls -lnd "$a" 2>/dev/null || echo "- $a";;\n'
        + '  proc) cat "$a" 2>/dev/null || echo "- $a";;\n'
        + "  cli) T=$a;;\n"
        + '  socket) echo @@status; "$T" --socket="$a" status --json --peers=false 2>/dev/null\n'
        + '    echo; echo @@prefs; "$T" --socket="$a" debug prefs 2>/dev/null; echo; echo @@obs;;\n'
        + "esac; done\n"
    )


def check_script(stamp: str) -> str:
    """One round trip: the stamp (or @@none) and the observation of what it lists."""
    s = sh_quote(stamp)
    return (
        f"[ -f {s} ] || {{ echo @@none; echo @@end; exit 0; }}\n"
        f"echo @@stamp; cat {s}\n" + observe_script(stamp) + "echo @@end\n"
    )


def record_scripts(stamp: str, lines: t.Sequence[str]) -> tuple[str, str]:
    """Round trip 1 writes the obs lines to the stamp's temp file and prints the observation of them; round trip 2
    (given the two digests) completes the temp file and renames it over the stamp."""
    tmp = sh_quote(stamp + ".tmp")
    body = "".join(f"{line}\n" for line in lines)
    first = (
        f"mkdir -p {sh_quote(os.path.dirname(stamp))} && printf %s {sh_quote(body)} > {tmp} || exit 1\n"
        + observe_script(stamp + ".tmp")
        + "echo @@end\n"
    )
    return first, tmp


def finish_script(stamp: str, inputs: str, observed: str) -> str:
    tmp = sh_quote(stamp + ".tmp")
    head = f"{STAMP_MAGIC}\ninputs {inputs}\nobserved {observed}\n"
    return f"{{ printf %s {sh_quote(head)}; cat {tmp}; }} > {tmp}.2 && mv -f {tmp}.2 {sh_quote(stamp)} && rm -f {tmp}\n"


def remove_script(stamp: str) -> str:
    return f"rm -f {sh_quote(stamp)} {sh_quote(stamp + '.tmp')} {sh_quote(stamp + '.tmp.2')}\n"


def _json(text: str) -> dict[str, t.Any] | None:
    """The CLI's JSON object (a warning line may come first), or None when it did not answer with one."""
    try:
        return parse_json(text, "")
    except PrefsError:
        return None


def _status_part(text: str) -> dict[str, t.Any]:
    value = _json(text)
    if value is None:
        return {"answer": "none"}
    me = value.get("Self") if isinstance(value.get("Self"), dict) else {}
    return {
        **{k: value.get(k) for k in STATUS_KEYS},
        **{f"Self.{k}": me.get(k) for k in SELF_KEYS},
    }


def _prefs_part(text: str) -> t.Any:
    value = _json(text)
    if value is None:
        return "none"
    # Persist holds the node's keys (and changes with a key renewal that is not drift): left out.
    return {k: v for k, v in value.items() if k != "Persist"}


def observation(output: str) -> tuple[dict[str, t.Any], str]:
    """The normalised observation (items as printed; status and prefs reduced to what a run decides) and its
    digest, from a check's or a record's round trip output."""
    items: list[str] = []
    status: list[dict[str, t.Any]] = []
    prefs: list[t.Any] = []
    current: list[str] | None = None
    kind = ""

    def close() -> None:
        if kind == "status":
            status.append(_status_part("\n".join(current or [])))
        elif kind == "prefs":
            prefs.append(_prefs_part("\n".join(current or [])))

    for line in output.replace("\r\n", "\n").split("\n"):
        if line.startswith("@@") and len(line) > 2:
            close()
            kind = line[2:].strip()
            current = items if kind == "obs" else []
            if kind == "end":
                break
            continue
        if current is not None:
            current.append(line)
    else:
        close()
    normal = {"items": "\n".join(items).strip("\n"), "status": status, "prefs": prefs}
    return normal, hashlib.sha256(json.dumps(normal, sort_keys=True).encode()).hexdigest()


def parse_stamp(output: str) -> dict[str, str]:
    """inputs and observed of the stamp printed by the check ({} when there is none or it is not one of ours)."""
    sec = parse_sections(output)
    text = sec.get("stamp", "")
    lines = text.splitlines()
    if not lines or lines[0].strip() != STAMP_MAGIC:
        return {}
    out = {}
    for line in lines[1:]:
        key, _sep, value = line.partition(" ")
        if key in ("inputs", "observed"):
            out[key] = value.strip()
    return out


def advertised_routes(normal: dict[str, t.Any]) -> list[str]:
    """The routes the node advertises per the observed prefs (for the route approval a converged run still does)."""
    for prefs in normal.get("prefs", []):
        if isinstance(prefs, dict):
            return [str(r) for r in prefs.get("AdvertiseRoutes") or []]
    return []


def node_key(normal: dict[str, t.Any]) -> str:
    for status in normal.get("status", []):
        return str(status.get("Self.PublicKey") or "")
    return ""


def backend_state(normal: dict[str, t.Any]) -> str:
    for status in normal.get("status", []):
        return str(status.get("BackendState") or "")
    return ""
