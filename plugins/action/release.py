# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Resolve, fetch (once, into a controller cache), verify and unpack a Tailscale release, on the controller only."""

from __future__ import annotations

import typing as t
from pathlib import Path

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._arch import RELEASE_ARCHES
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._release import (
    TRACKS,
    VERSION_RE,
    ReleaseError,
    download,
    extract,
    from_directory,
    latest_version,
    packed,
    parse_checksum,
    sha256_file,
    verify_checksum,
    version_from_name,
)

ARGUMENT_SPEC: dict[str, t.Any] = {
    "arch": {"type": "str", "required": True},
    "version": {"type": "str", "default": ""},
    "track": {"type": "str", "default": "stable", "choices": list(TRACKS)},
    "base_url": {"type": "str", "default": "https://pkgs.tailscale.com"},
    "cache_dir": {"type": "path", "default": "~/.cache/fleetmesh/tailscale"},
    "checksum": {"type": "str", "default": ""},
    "src": {"type": "path", "default": ""},
    "systemd_files": {"type": "bool", "default": False},
}

display = Display()


class ActionModule(ActionBase):
    """Controller-side release handling; sends nothing to the device."""

    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp: str | None = None, task_vars: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
        result = super().run(tmp, task_vars)
        del tmp
        self._host_label = str((task_vars or {}).get("inventory_hostname", "controller"))
        _spec, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        arch, version, src = str(args["arch"]), str(args["version"]), str(args["src"] or "")
        if arch not in RELEASE_ARCHES:
            raise AnsibleActionFail(f"arch {arch!r} is not a Tailscale release arch ({', '.join(RELEASE_ARCHES)})")
        if version not in ("", "latest") and not VERSION_RE.match(version):
            raise AnsibleActionFail(f"version {version!r} must be X.Y.Z or 'latest'")
        try:
            if args["checksum"]:
                parse_checksum(str(args["checksum"]), "checksum")
            info = self._resolve(args, arch, version, src)
        except ReleaseError as exc:
            raise AnsibleActionFail(str(exc)) from exc
        result.update(changed=False, **info)
        return result

    def _progress(self, line: str) -> None:
        """A long download's progress: stderr at default verbosity, like the connection plugins' put_file."""
        display.display(f"{self._host_label}: {line}", stderr=True)

    def _resolve(self, args: dict[str, t.Any], arch: str, version: str, src: str) -> dict[str, t.Any]:
        cache = Path(str(args["cache_dir"]))
        downloaded = False
        if src:
            path = Path(src)
            named = version_from_name(path.name)
            # A local build named like a release must match the device: a wrong-arch tarball is refused here.
            if path.name.startswith("tailscale_") and not path.name.startswith(f"tailscale_{named}_{arch}"):
                raise ReleaseError(f"{path.name} is not a build for arch {arch}: refusing it")
            version = version if version not in ("", "latest") else named
            if not version:
                raise ReleaseError(f"{path}: cannot tell the version from the name; set the version")
            if path.is_dir():
                files = from_directory(path, bool(args["systemd_files"]))
                tarball = ""
            elif path.is_file():
                if args["checksum"]:
                    verify_checksum(path, parse_checksum(str(args["checksum"]), "checksum"))
                out = cache / "local" / f"{path.name}.{sha256_file(path)[:16]}"
                files = extract(path, out, bool(args["systemd_files"]))
                tarball = str(path)
            else:
                raise ReleaseError(f"src {path} does not exist on the controller")
        else:
            if version in ("", "latest"):
                version = latest_version(str(args["base_url"]), str(args["track"]))
            tar_path, downloaded = download(
                str(args["base_url"]),
                str(args["track"]),
                version,
                arch,
                cache_dir=cache,
                checksum=str(args["checksum"]),
                progress=self._progress,
            )
            files = extract(
                tar_path, cache / str(args["track"]) / tar_path.name.removesuffix(".tgz"), bool(args["systemd_files"])
            )
            tarball = str(tar_path)
        return {
            "version": version,
            "arch": arch,
            "tarball": tarball,
            "downloaded": downloaded,
            "files": {name: str(p) for name, p in files.items()},
            "packed": {name: str(p) for name, p in packed(files).items()},
        }
