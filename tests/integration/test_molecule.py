"""Every Molecule scenario (molecule/<family>/) end to end: `molecule test -s <family>` against a lab device.

Each scenario creates its own lab device (mol-<family>), converges playbooks/site.yml, checks idempotence, verifies
with testinfra through the collection's connection plugins, removes Tailscale (side_effect) and verifies that, then
destroys the device. Molecule's ephemeral files go to a temporary HOME, so nothing lands in the user's ~/.ansible.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repo_checkout import REPO, ansible_env

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
]

SCENARIOS = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))
MOLECULE = Path(sys.executable).with_name("molecule")
RECAP_RE = re.compile(r"^(\S+)\s+: actions=(\d+)\s+successful=(\d+).*missing=(\d+)\s+failed=(\d+)", re.MULTILINE)
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


def test_every_family_has_a_scenario() -> None:
    assert SCENARIOS == ["kobo", "quecopen", "rootfs", "systemd", "sysvinit"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(scenario: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = ansible_env(home, PY_COLORS="0", NO_COLOR="1", MOLECULE_NO_LOG="false")
    start = time.monotonic()
    proc = subprocess.run(
        [str(MOLECULE), "test", "-s", scenario],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    elapsed = time.monotonic() - start
    out = ANSI_RE.sub("", proc.stdout + proc.stderr)
    print(f"molecule test -s {scenario}: rc {proc.returncode} in {elapsed:.1f} s")
    assert proc.returncode == 0, out[-6000:]
    recap = {m.group(1): m for m in RECAP_RE.finditer(out)}[scenario]
    # destroy, create, converge, idempotence, verify, side_effect, verify, destroy: all ran, none missing.
    assert (recap.group(2), recap.group(5)) == ("8", "0"), recap.group(0)
    assert re.search(rf"{scenario} \S+ idempotence: Executed: Successful", out), "idempotence did not pass"
    assert len(re.findall(r"=+ \d+ passed", out)) == 2, "both verify runs must pass tests"
