# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter: turn an iptables bundle manifest into files and links for fleetmesh.tailscale.install_files."""

from __future__ import annotations

import typing as t

from ansible.errors import AnsibleFilterError
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._iptables_bundle import BundleError, bundle_plan

DOCUMENTATION = r"""
name: iptables_bundle_plan
short_description: Files and links that install an iptables bundle
version_added: 0.1.0
description:
  - Validates an iptables bundle manifest (C(binary), C(libs), C(soname_links), C(commands), C(xtables_libdir)) and
    returns the C(files), C(links) and C(dirs) for M(fleetmesh.tailscale.install_files), the C(command) that proves
    the install, and the C(environment) tailscaled needs (C(XTABLES_LIBDIR) when extensions are installed).
  - Fails on a manifest whose paths leave the bundle or whose soname links point at no library of the bundle.
options:
  _input:
    description: The parsed C(manifest.json).
    type: dict
    required: true
  bundle_dir:
    description: Bundle directory on the controller.
    type: str
    required: true
  install_dir:
    description: Device directory that receives the binary, libraries and extensions.
    type: str
    required: true
  lib_dir:
    description: Device directory on the loader's search path that receives the soname links.
    type: str
    required: true
  sbin_dir:
    description: Device directory on PATH that receives the command links.
    type: str
    required: true
  extensions:
    description: Extension files (from C(xtables_libdir)) to install.
    type: list
    elements: str
    default: []
  xtables_dir:
    description:
      - Device directory for the extensions (default C(<install_dir>/<xtables_libdir>)). Their names differ only in
        case (C(libxt_MARK.so), C(libxt_mark.so)), so for a FAT install dir point this at a case-sensitive filesystem.
    type: str
    default: ""
author:
  - fleetmesh developers !UNKNOWN
"""

EXAMPLES = r"""
- name: Plan the shim
  ansible.builtin.set_fact:
    shim_plan: "{{ lookup('ansible.builtin.file', bundle ~ '/manifest.json') | from_json
      | fleetmesh.tailscale.iptables_bundle_plan(bundle, '/opt/ipt', '/lib', '/usr/sbin',
          extensions=['libxt_mark.so']) }}"
"""

RETURN = r"""
_value:
  description: C(files), C(links), C(dirs), C(command) and C(environment).
  type: dict
"""


def iptables_bundle_plan(
    manifest: t.Any,
    bundle_dir: str,
    install_dir: str,
    lib_dir: str,
    sbin_dir: str,
    *,
    extensions: t.Sequence[str] = (),
    xtables_dir: str = "",
) -> dict[str, t.Any]:
    try:
        return bundle_plan(
            dict(manifest),
            str(bundle_dir),
            str(install_dir),
            str(lib_dir),
            str(sbin_dir),
            extensions=[str(e) for e in extensions],
            xtables_dir=str(xtables_dir or ""),
        )
    except (BundleError, TypeError) as exc:
        raise AnsibleFilterError(f"iptables bundle {bundle_dir}: {exc}") from exc


class FilterModule:
    """iptables bundle filters."""

    def filters(self) -> dict[str, t.Callable[..., t.Any]]:
        return {"iptables_bundle_plan": iptables_bundle_plan}
