"""Test-wide set-up: Ansible's collection loader sees this checkout as fleetmesh.tailscale.

Installed before any test module imports ansible_collections.*, so plugins load by FQCN through Ansible's own
loaders (connection_loader.get("fleetmesh.tailscale.adb")) exactly as they do under ansible-playbook.
"""

from __future__ import annotations

from pathlib import Path

from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder

_COLLECTIONS = Path(__file__).resolve().parents[1] / ".collections"
_AnsibleCollectionFinder(paths=[str(_COLLECTIONS)], scan_sys_paths=False)._install()  # pylint: disable=protected-access
