# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to the fleetmesh.tailscale collection: not a public API, may change without notice.

An iptables bundle is data: a directory on the controller with ``manifest.json``::

    {"binary": "sbin/xtables-legacy-multi",
     "libs": ["lib/libxtables.so.12.7.0", ...],
     "soname_links": {"libxtables.so.12": "libxtables.so.12.7.0", ...},
     "commands": ["iptables", "ip6tables", ...],
     "xtables_libdir": "xtables"}            # optional: match/target extensions

This turns a manifest into what ``fleetmesh.tailscale.install_files`` installs: the files under one install dir,
the soname links in a loader directory, the command links in an sbin directory on PATH.
"""

from __future__ import annotations

import os
import posixpath
import re
import typing as t

NAME_RE = re.compile(r"^[A-Za-z0-9._+-]+$")


class BundleError(ValueError):
    """The bundle manifest is not usable; the message says what is wrong."""


def _rel(value: t.Any, what: str) -> str:
    value = str(value)
    parts = value.split("/")
    if not value or value.startswith("/") or any(p in ("", ".", "..") or not NAME_RE.match(p) for p in parts):
        raise BundleError(f"{what}: {value!r} must be a relative path inside the bundle")
    return value


def bundle_plan(
    manifest: dict[str, t.Any],
    bundle_dir: str,
    install_dir: str,
    lib_dir: str,
    sbin_dir: str,
    *,
    extensions: t.Sequence[str] = (),
    xtables_dir: str = "",
) -> dict[str, t.Any]:
    """Files, links, dirs and the proof command for one bundle; raises BundleError on a bad manifest."""
    if not isinstance(manifest, dict):
        raise BundleError("the manifest must be a JSON object")
    for key in ("binary", "libs", "soname_links", "commands"):
        if key not in manifest:
            raise BundleError(f"the manifest has no {key!r}")
    binary = _rel(manifest["binary"], "binary")
    libs = [_rel(lib, "libs") for lib in manifest["libs"]]
    lib_names = {posixpath.basename(lib): lib for lib in libs}
    links = manifest["soname_links"]
    if not isinstance(links, dict) or not isinstance(manifest["commands"], list) or not manifest["commands"]:
        raise BundleError("soname_links must map names to library files and commands must be a non-empty list")
    files = [{"src": os.path.join(bundle_dir, binary), "dest": posixpath.join(install_dir, binary), "mode": "0755"}]
    files += [
        {"src": os.path.join(bundle_dir, lib), "dest": posixpath.join(install_dir, lib), "mode": "0755"} for lib in libs
    ]
    out_links = []
    for soname, target in sorted(links.items()):
        if not NAME_RE.match(str(soname)) or str(target) not in lib_names:
            raise BundleError(f"soname link {soname!r} -> {target!r}: the target must be one of the bundle's libs")
        out_links.append(
            {
                "path": posixpath.join(lib_dir, str(soname)),
                "target": posixpath.join(install_dir, lib_names[str(target)]),
            }
        )
    for command in manifest["commands"]:
        if not NAME_RE.match(str(command)):
            raise BundleError(f"command {command!r} is not a plain name")
        out_links.append(
            {"path": posixpath.join(sbin_dir, str(command)), "target": posixpath.join(install_dir, binary)}
        )
    env: dict[str, str] = {}
    if extensions:
        xdir = _rel(manifest.get("xtables_libdir", ""), "xtables_libdir")
        # The extensions' names differ only in case (libxt_MARK.so, libxt_mark.so): on a FAT install dir they go to
        # xtables_dir, a case-sensitive filesystem.
        dest_dir = xtables_dir or posixpath.join(install_dir, xdir)
        for ext in extensions:
            src = os.path.join(bundle_dir, xdir, _rel(ext, "extension"))
            if not os.path.isfile(src):
                raise BundleError(f"extension {ext!r} is not in the bundle ({src})")
            files.append({"src": src, "dest": posixpath.join(dest_dir, str(ext)), "mode": "0644"})
        env["XTABLES_LIBDIR"] = dest_dir
    first = str(manifest["commands"][0])
    return {
        "files": files,
        "links": out_links,
        "dirs": [install_dir],
        "command": posixpath.join(sbin_dir, first),
        "environment": env,
    }
