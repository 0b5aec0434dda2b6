# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to the fleetmesh.tailscale collection: not a public API, may change without notice.

The plan of an install (``fleetmesh.tailscale.install_files``, ``boot``): the wanted files and symlinks
(FileSpec, LinkSpec), the POSIX sh scripts (busybox ash compatible) that inspect, apply and remove them, the pure
functions that turn the inspection output into a Plan, and the manifest that records an install. Pure: the device
round trips are _install_pipeline.py's, so the planning is unit-tested without a device.
"""

from __future__ import annotations

import math
import os
import posixpath
import typing as t
from dataclasses import dataclass, field

from ansible.errors import AnsibleActionFail
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_paths import (
    NO_MODE_FS,
    device_path,
    mount_types,
    unroot,
)
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_script import parse_sections, sh_quote
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_shell import (
    ROOT_OPTIONS,
    TMP_SUFFIX,
    atomic_write,
    remount_rw,
    remount_rw_if_read_only,
    root_read_only,
)
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._digest import sha256_cmd, sha256_file

BAK_SUFFIX = ".fmbak"
# A compressed upload's temp name is the file's temp name plus this (the device unpacks it to the temp name).
GZ_SUFFIX = ".gz"
# The ways a device may unpack gzip to stdout, in the order tried; the check's probe keeps the first that unpacks a
# real gzip stream (a busybox may have the applet configured out although the name resolves).
GUNZIP_COMMANDS = ("gunzip -c", "gzip -dc", "busybox gunzip -c", "zcat")
# gzip of "A" (mtime 0), as printf octal escapes.
_GZIP_A = r"\037\213\010\000\000\000\000\000\002\003\163\004\000\213\236\331\323\001\000\000\000"
# Filesystems round each file up to blocks: count a 4 KiB block of slack per uploaded file.
SLACK_KB = 4

# sha256 of a file with whatever the device has; '-' when the file is absent or not regular.
_PRELUDE = f"""h() {{ [ -f "$1" ] && [ ! -L "$1" ] || {{ echo -; return; }}
  {sha256_cmd('"$1"')}; }}
l() {{ if [ -L "$1" ]; then readlink "$1"; elif [ -e "$1" ]; then echo '!notlink'; else echo -; fi; }}
"""


@dataclass
class FileSpec:
    src: str
    dest: str
    mode: str
    size: int
    sha256: str
    packed: str = ""  # a gzip copy of src on the controller, or ''
    packed_size: int = 0


@dataclass
class LinkSpec:
    path: str
    target: str


@dataclass
class Plan:
    uploads: list[FileSpec] = field(default_factory=list)
    links: list[tuple[LinkSpec, str]] = field(default_factory=list)  # (wanted, current value or '-')
    mode_fixes: list[FileSpec] = field(default_factory=list)
    manifest_stale: bool = False
    # Dirs the manifest records: the wanted ones, the missing parents this install creates, and parents an earlier
    # run created (so removal leaves the device's file list as it was before the first install).
    manifest_dirs: list[str] = field(default_factory=list)
    stale_items: list[tuple[str, str]] = field(default_factory=list)  # in the old manifest, no longer wanted
    # With keep_stale: what stale_items would have been, left on the device and in the manifest (a previous version
    # kept until the new one has passed its health gate).
    kept: list[tuple[str, str]] = field(default_factory=list)
    no_mode: set[str] = field(default_factory=set)  # dests on a filesystem without modes (FAT): never chmod-ed
    root_readonly: bool = False
    free: dict[str, tuple[int, int]] = field(default_factory=dict)  # mount -> (needed_kb, avail_kb)
    gunzip: str = ""  # the device's command that unpacks gzip to stdout (one of GUNZIP_COMMANDS), or ''

    @property
    def changed(self) -> bool:
        return bool(self.uploads or self.links or self.mode_fixes or self.manifest_stale)

    def unpacks(self, f: FileSpec) -> bool:
        """Whether f goes over compressed (it has a gzip copy and the device can unpack it)."""
        return bool(f.packed and self.gunzip)


def manifest_text(
    files: t.Sequence[FileSpec], links: t.Sequence[LinkSpec], dirs: t.Sequence[str], root: str = ""
) -> str:
    """What the device keeps to remove exactly this install later: one `kind path` line per item.

    Under a rootfs staging dir ``root`` the manifest lists in-image paths, so it stays right inside the image.
    """
    lines = (
        [f"dir {unroot(d, root)}" for d in dirs]
        + [f"file {unroot(f.dest, root)}" for f in files]
        + [f"link {unroot(lk.path, root)}" for lk in links]
    )
    return "\n".join(lines) + "\n"


def kept_text(plan: Plan, root: str = "") -> str:
    """The manifest lines of what the plan keeps (keep_stale), appended after the wanted items."""
    return "".join(f"{kind} {unroot(path, root)}\n" for kind, path in plan.kept)


def parse_manifest(text: str, root: str = "") -> list[tuple[str, str]]:
    items = []
    for line in text.splitlines():
        kind, _sep, path = line.partition(" ")
        if kind in ("dir", "file", "link") and path.startswith("/"):
            items.append((kind, root + path))
    return items


def _wanted_dirs(
    files: t.Sequence[FileSpec], dirs: t.Sequence[str], manifest: str, links: t.Sequence[LinkSpec] = ()
) -> list[str]:
    return sorted(
        {posixpath.dirname(lk.path) for lk in links}
        | set(dirs)
        | {posixpath.dirname(f.dest) for f in files}
        | ({posixpath.dirname(manifest)} if manifest else set())
    )


def _probe_dirs(files: t.Sequence[FileSpec], links: t.Sequence[LinkSpec]) -> list[str]:
    return sorted({posixpath.dirname(f.dest) for f in files} | {posixpath.dirname(lk.path) for lk in links})


def check_script(
    files: t.Sequence[FileSpec], links: t.Sequence[LinkSpec], manifest: str, dirs: t.Sequence[str] = ()
) -> str:
    """One round trip: the device copy's sha256 and mode per file, each link's value, free space, root mode, and
    which of the dirs (and their parents) do not exist yet."""
    out = [_PRELUDE]
    for i, f in enumerate(files):
        q = sh_quote(f.dest)
        out.append(f"echo @@f{i}; h {q}; stat -c %a {q} 2>/dev/null || echo -")
    for i, lk in enumerate(links):
        out.append(f"echo @@l{i}; l {sh_quote(lk.path)}")
    for i, d in enumerate(_probe_dirs(files, links)):
        out.append(
            f'echo @@d{i}; q={sh_quote(d)}; while [ ! -e "$q" ]; do q=$(dirname "$q"); done; '
            f"printf '%s\\t' {sh_quote(d)}; df -Pk \"$q\" | sed -n '$p'"
        )
    out.append(f"echo @@root; {ROOT_OPTIONS}")
    out.append("echo @@fstypes; awk '{print $2 \"\\t\" $3}' /proc/mounts")
    if any(f.packed for f in files):
        tries = " ".join(sh_quote(z) for z in GUNZIP_COMMANDS)
        out.append(
            f"echo @@gunzip; for z in {tries}; do [ \"$(printf '{_GZIP_A}' | $z 2>/dev/null)\" = A ] && "
            '{ echo "$z"; break; }; done'
        )
    if manifest:
        out.append(f"echo @@manifest; cat {sh_quote(manifest)} 2>/dev/null")
        wanted = " ".join(sh_quote(d) for d in _wanted_dirs(files, dirs, manifest, links))
        out.append(
            f'echo @@missing; for q in {wanted}; do while [ ! -e "$q" ]; do echo "$q"; q=$(dirname "$q"); done; done'
        )
    out.append("echo @@end")
    return "\n".join(out) + "\n"


def plan_from_output(
    output: str,
    files: t.Sequence[FileSpec],
    links: t.Sequence[LinkSpec],
    dirs: t.Sequence[str],
    manifest: str,
    *,
    root: str = "",
    keep_stale: bool = False,
) -> Plan:
    """Compare what the device reported with what is wanted; raise ValueError when the output is cut short.

    With ``keep_stale`` what the old manifest lists and is no longer wanted stays (``Plan.kept``) instead of being
    removed, and stays listed in the manifest after the wanted items.
    """
    sec = parse_sections(output)
    if "end" not in sec:
        raise ValueError("the device's answer was cut short (no end marker)")
    plan = Plan()
    for i, f in enumerate(files):
        lines = (sec.get(f"f{i}", "").splitlines() + ["-", "-"])[:2]
        digest, mode = lines[0].strip(), lines[1].strip()
        if digest != f.sha256:
            plan.uploads.append(f)
        elif mode != "-" and mode.lstrip("0") != f.mode.lstrip("0"):
            plan.mode_fixes.append(f)
    for i, lk in enumerate(links):
        current = sec.get(f"l{i}", "-").strip() or "-"
        if current == "!notlink":
            raise ValueError(f"{lk.path} exists and is not a symlink: refusing to replace it")
        if current != lk.target:
            plan.links.append((lk, current))
    mounts: dict[str, int] = {}
    needed: dict[str, int] = {}
    dir_mount: dict[str, str] = {}
    for key, value in sec.items():
        if not key.startswith("d") or not key[1:].isdigit():
            continue
        path, _sep, df_line = value.partition("\t")
        fields = df_line.split()
        if len(fields) >= 6 and fields[3].isdigit():
            dir_mount[path] = fields[5]
            # A filesystem that reports no blocks at all (some FUSE ones) says nothing about its free space.
            if fields[1] != "0":
                mounts[fields[5]] = int(fields[3])
    types = mount_types(sec.get("fstypes", ""))

    def fstype(path: str) -> str:
        return types.get(dir_mount.get(posixpath.dirname(path), ""), "")

    for lk in links:
        if fstype(lk.path) in NO_MODE_FS:
            raise ValueError(
                f"{lk.path} is on a {fstype(lk.path)} filesystem, which has no symlinks: "
                "put links on the root filesystem (the files they point to may stay there)"
            )
    plan.no_mode = {f.dest for f in files if fstype(f.dest) in NO_MODE_FS}
    # FAT is case-insensitive: libxt_MARK.so and libxt_mark.so would be one file there.
    folded: dict[str, str] = {}
    for dest in sorted(plan.no_mode):
        other = folded.setdefault(dest.lower(), dest)
        if other != dest:
            raise ValueError(
                f"{other} and {dest} differ only in case: on a {fstype(dest)} filesystem (case-insensitive) they are "
                "one file; put them on a case-sensitive filesystem"
            )
    plan.mode_fixes = [f for f in plan.mode_fixes if f.dest not in plan.no_mode]
    gunzip = (sec.get("gunzip", "").splitlines() or [""])[0].strip()
    plan.gunzip = gunzip if gunzip in GUNZIP_COMMANDS and not root else ""
    for f in plan.uploads:
        mount = dir_mount.get(posixpath.dirname(f.dest))
        if mount is not None and mount in mounts:
            # A compressed upload and what it unpacks to are both there for a moment.
            kb = math.ceil(f.size / 1024) + SLACK_KB
            if plan.unpacks(f):
                kb += math.ceil(f.packed_size / 1024) + SLACK_KB
            needed[mount] = needed.get(mount, 0) + kb
    plan.free = {m: (needed[m], mounts[m]) for m in needed}
    plan.root_readonly = root_read_only(sec.get("root", ""))
    if manifest:
        wanted_dirs = _wanted_dirs(files, dirs, manifest, links)
        missing = {d for d in sec.get("missing", "").split("\n") if d.startswith("/")}
        earlier = {p for k, p in parse_manifest(sec.get("manifest", ""), root) if k == "dir"}
        created = {
            d
            for d in missing | earlier
            if any(w == d or w.startswith(d + "/") for w in wanted_dirs) and (not root or d.startswith(root + "/"))
        }
        plan.manifest_dirs = sorted(created - set(dirs)) + list(dirs)
        body = manifest_text(files, links, plan.manifest_dirs, root)
        wanted = set(parse_manifest(body, root))
        plan.stale_items = [item for item in parse_manifest(sec.get("manifest", ""), root) if item not in wanted]
        if keep_stale:
            plan.kept, plan.stale_items = plan.stale_items, []
        plan.manifest_stale = sec.get("manifest", "").strip() != (body + kept_text(plan, root)).strip()
    return plan


def space_errors(plan: Plan) -> list[str]:
    return [
        f"needs {needed / 1024:.1f} MB, {avail / 1024:.1f} MB free on {mount}"
        for mount, (needed, avail) in sorted(plan.free.items())
        if needed > avail
    ]


def prepare_script(plan: Plan, dirs: t.Sequence[str]) -> str:
    """Create the parent dirs and drop stale temp files before the uploads (only run when something uploads)."""
    wanted = sorted(set(dirs) | {posixpath.dirname(f.dest) for f in plan.uploads})
    cmds = [f"mkdir -p {' '.join(sh_quote(d) for d in wanted)}"] if wanted else []
    # The glob also takes the connection's own temp copy of an earlier upload that a cut link or a power loss left
    # (put_file writes TMP.fmtmpXXXXXXXX and renames it to TMP only once its digest matched).
    for f in plan.uploads:
        tmp = tmp_name(f.dest)
        cmds.append(f"rm -f {sh_quote(tmp)} {sh_quote(tmp + TMP_SUFFIX)}*")
        if plan.unpacks(f):
            cmds.append(f"rm -f {sh_quote(tmp + GZ_SUFFIX)} {sh_quote(tmp + GZ_SUFFIX + TMP_SUFFIX)}*")
    return " && ".join(cmds) + "\n" if cmds else ""


def tmp_name(dest: str) -> str:
    return posixpath.join(posixpath.dirname(dest), f".{posixpath.basename(dest)}{TMP_SUFFIX}")


def upload_name(plan: Plan, f: FileSpec) -> tuple[str, str]:
    """(controller file, device temp name) of one upload: the gzip copy when the device unpacks it."""
    if plan.unpacks(f):
        return f.packed, tmp_name(f.dest) + GZ_SUFFIX
    return f.src, tmp_name(f.dest)


def unpack_lines(plan: Plan) -> list[str]:
    """Unpack each compressed upload to its temp name and check its sha256; on any failure drop every temp file of
    this run and stop (section ``unpack``, exit 5) before anything moved."""
    packed = [f for f in plan.uploads if plan.unpacks(f)]
    if not packed:
        return []
    drop = "; ".join(
        f"rm -f {sh_quote(tmp_name(f.dest))} {sh_quote(tmp_name(f.dest) + GZ_SUFFIX)}" for f in plan.uploads
    )
    out = []
    for f in packed:
        tmp, gz = sh_quote(tmp_name(f.dest)), sh_quote(tmp_name(f.dest) + GZ_SUFFIX)
        out.append(
            f"if ! uout=$({plan.gunzip} < {gz} 2>&1 > {tmp}); then {drop}; "
            f'echo @@unpack; echo {sh_quote(f.dest)}: "$uout"; echo @@end; exit 5; fi; rm -f {gz}; '
            f'got=$({sha256_cmd(tmp)}); if [ "$got" != {f.sha256} ]; then {drop}; echo @@unpack; '
            f'echo {sh_quote(f.dest)}: "sha256 $got, wanted {f.sha256}"; echo @@end; exit 5; fi'
        )
    return out


def apply_script(
    plan: Plan,
    dirs: t.Sequence[str],
    *,
    verify: str,
    verify_expect: str,
    verify_stage: str,
    remount_root: bool,
    manifest: str,
    manifest_body: str,
    syntax_check: t.Collection[str] = (),
    root: str = "",
) -> str:
    """Put uploaded files in place, verify, switch links; on a failed verify undo everything this run did.

    Uploaded files whose dest is in ``syntax_check`` are shell scripts: `sh -n` checks each temp copy before any
    file moves, so a broken script never replaces a working one (section ``syntax``, exit 4).
    """
    out = ["set -u", "rc=0", *unpack_lines(plan)]
    checks = [f for f in plan.uploads if f.dest in syntax_check]
    if checks:
        drop = "; ".join(f"rm -f {sh_quote(tmp_name(f.dest))}" for f in plan.uploads)
        for f in checks:
            out.append(
                f"if ! sout=$(sh -n {sh_quote(tmp_name(f.dest))} 2>&1); then {drop}; "
                f'echo @@syntax; echo {sh_quote(f.dest)}: "$sout"; echo @@end; exit 4; fi'
            )
    if dirs:
        out.append(f"mkdir -p {' '.join(sh_quote(d) for d in dirs)} || exit 1")
    undo_files: list[str] = []
    for f in plan.uploads:
        dest, tmp, bak = sh_quote(f.dest), sh_quote(tmp_name(f.dest)), sh_quote(f.dest + BAK_SUFFIX)
        # The atomic write's chmod, then the old copy kept as the backup, then the rename.
        *chmod, rename = atomic_write(dest, tmp, mode="" if f.dest in plan.no_mode else f.mode)
        out.append(
            "".join(f"{step} || exit 1; " for step in chmod) + f"rm -f {bak}; "
            f"if [ -e {dest} ] || [ -L {dest} ]; then mv -f {dest} {bak} || exit 1; fi; {rename} || exit 1"
        )
        undo_files.append(f"rm -f {dest}; if [ -e {bak} ] || [ -L {bak} ]; then mv -f {bak} {dest}; fi")
    out += [f"chmod {f.mode} {sh_quote(f.dest)} || exit 1" for f in plan.mode_fixes]
    undo_links = [
        f"ln -sfn {sh_quote(cur)} {sh_quote(lk.path)}" if cur != "-" else f"rm -f {sh_quote(lk.path)}"
        for lk, cur in plan.links
    ]
    remount = remount_root and plan.root_readonly and bool(plan.links or plan.stale_items)
    if remount:
        out += remount_rw("{ echo 'cannot remount / read-write'; exit 1; }")

    # Dirs this run may have created for the uploads go too when a failed verify leaves them empty.
    undo_dirs = [f"rmdir {sh_quote(d)} 2>/dev/null" for d in sorted({posixpath.dirname(f.dest) for f in plan.uploads})]

    def verify_block(undo_links: list[str]) -> list[str]:
        check = f"rc=0; vout=$( ({verify}) 2>&1) || rc=$?"
        expect = (
            f'; [ "$rc" = 0 ] && case "$vout" in *{sh_quote(verify_expect)}*) ;; *) rc=99;; esac'
            if verify_expect
            else ""
        )
        undo = "; ".join([*undo_links, *undo_files, *undo_dirs]) or ":"
        return [
            check + expect,
            f'if [ "$rc" != 0 ]; then {undo}; sync; echo @@verify; echo "rc=$rc"; echo "$vout"; echo @@end; exit 3; fi',
            # What the check printed, for the caller (install_files returns it as verify_output).
            'echo @@verified; printf "%s\\n" "$vout"',
        ]

    if verify and verify_stage == "files":
        out += verify_block([])
    link_dirs = sorted({posixpath.dirname(lk.path) for lk, _cur in plan.links})
    if link_dirs:
        # Present on any device; missing in a fresh rootfs staging tree (recorded in the manifest when made).
        out.append(f"mkdir -p {' '.join(sh_quote(d) for d in link_dirs)} || exit 1")
    for lk, _cur in plan.links:
        out.append(f"ln -sfn {sh_quote(lk.target)} {sh_quote(lk.path)} || exit 1")
    if verify and verify_stage == "links":
        out += verify_block(undo_links)
    out += [f"rm -f {sh_quote(f.dest + BAK_SUFFIX)}" for f in plan.uploads]
    # What an earlier run installed and this one no longer wants (an old version): removed once the new one works.
    for kind, path in plan.stale_items:
        if kind == "file":
            out.append(f"rm -f {sh_quote(path)}")
        elif kind == "link":
            out.append(f"if [ -L {sh_quote(path)} ]; then rm -f {sh_quote(path)}; fi")
    stale_dirs = sorted((p for k, p in plan.stale_items if k == "dir"), reverse=True)
    # A stale dir that is not empty yet (a FUSE filesystem keeps a deleted file that a running program still has
    # open as .fuse_hidden*) stays in the manifest, so the next run removes it.
    out.append('keep=""')
    for d in stale_dirs:
        q = sh_quote(d)
        line = sh_quote("dir " + unroot(d, root) + "\n")
        out.append(f'rmdir {q} 2>/dev/null || {{ [ ! -d {q} ] || keep="$keep"{line}; }}')
    if manifest and (plan.manifest_stale or plan.changed):
        mtmp = sh_quote(manifest + TMP_SUFFIX)
        *write, rename = atomic_write(
            sh_quote(manifest),
            mtmp,
            f'printf %s%s {sh_quote(manifest_body)} "$keep" > {mtmp}',
            mkdir=sh_quote(posixpath.dirname(manifest)),
        )
        out.append(" && ".join(write))
        out.append(f"{rename} || exit 1")
    out.append("sync")
    out.append("echo @@end")
    return "\n".join(out) + "\n"


def remove_script(manifest: str, remount_root: bool, check_only: bool, root: str = "") -> str:
    """Remove exactly what the manifest lists (files; links only while they are links; dirs only when empty).

    ``root``: a rootfs staging dir; the manifest's in-image paths are removed below it.
    """
    m = sh_quote(manifest)
    r = sh_quote(root)
    out = [f"[ -f {m} ] || {{ echo @@absent; echo @@end; exit 0; }}", f"echo @@manifest; cat {m}"]
    if not check_only:
        if remount_root:
            out.append(remount_rw_if_read_only())
        out += [
            f"R={r}; dirs=$(sed -n 's/^dir //p' {m} | sort -r)",
            f'while read -r kind path; do case $kind in file) rm -f "$R$path";; '
            f'link) if [ -L "$R$path" ]; then rm -f "$R$path"; fi;; esac; done < {m}',
            f"rm -f {m}",
            'printf \'%s\\n\' "$dirs" | while read -r d; do [ -n "$d" ] && rmdir "$R$d" 2>/dev/null; done',
            "sync",
        ]
    out.append("echo @@end")
    return "\n".join(out) + "\n"


def file_spec(src: str, dest: str, mode: str, root: str = "", packed: str = "") -> FileSpec:
    """A controller file to install at dest (checked: the file exists, mode is octal, dest is absolute), with an
    optional gzip copy ``packed`` to send instead (not under a rootfs staging ``root``)."""
    if not os.path.isfile(src):
        raise AnsibleActionFail(f"files.src {src!r} is not a file on the controller")
    if not mode.isdigit() or len(mode) not in (3, 4) or any(c > "7" for c in mode):
        raise AnsibleActionFail(f"files.mode {mode!r} must be octal like '0755'")
    if packed and not os.path.isfile(packed):
        raise AnsibleActionFail(f"files.src_gzip {packed!r} is not a file on the controller")
    spec = FileSpec(src, device_path(dest, "files.dest", root), mode, os.path.getsize(src), sha256_file(src))
    if packed and not root:
        spec.packed, spec.packed_size = packed, os.path.getsize(packed)
    return spec


def link_specs(items: t.Iterable[dict[str, t.Any]], files: t.Sequence[FileSpec], root: str = "") -> list[LinkSpec]:
    """The wanted symlinks (path below root, target as in the image), checked against each other and the files."""
    links = [LinkSpec(device_path(item["path"], "links.path", root), str(item["target"]).strip()) for item in items]
    if any(not lk.target or "\n" in lk.target for lk in links):
        raise AnsibleActionFail("links.target must be a non-empty single line")
    if len({f.dest for f in files} | {lk.path for lk in links}) != len(files) + len(links):
        raise AnsibleActionFail("files.dest and links.path must all be different paths")
    return links
