"""Verification of a Molecule scenario through the fleetmesh testinfra backend (extensions/testinfra).

Molecule runs pytest here with --connection=fleetmesh --hosts=all --ansible-inventory=<scenario inventory>; the
backend runs each command through the host's own connection plugin (telnet, adb, ssh, local), so these tests also
verify a real fleet: pytest -p fleetmesh_testinfra --connection=fleetmesh --ansible-inventory=<inventory> --hosts=all.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "extensions" / "testinfra"))

import fleetmesh_testinfra  # noqa: E402 - importable only once its directory is on sys.path

fleetmesh_testinfra.register()  # --connection=fleetmesh (Molecule's verifier options) now names our backend
