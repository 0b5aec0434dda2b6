"""Fixtures of the fault suite: the rig (fault_rig.Rig) is made once per session; see fault_rig.py."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_rig import NAME, PROFILE, Rig
from provision_lab import release_mirror

from fleetlab import control, lab
from repo_checkout import REPO

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE) and "rig" in getattr(item, "fixturenames", ()) and os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason="the fault suite drives lab devices: needs root"))


@pytest.fixture(scope="session")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("faults")
    start = time.monotonic()
    with release_mirror(work / "mirror") as url:
        lab.down(NAME)
        control.forget([NAME])
        device = lab.up(NAME, PROFILE)
        rig = Rig(device=device, work=work, mirror=url, baseline=work / "baseline", outcomes=work / "outcomes.jsonl")
        try:
            rig.provision_baseline()
            rig.timings["setup"] = time.monotonic() - start
            yield rig
        finally:
            rig.end_sessions()
            lab.down(NAME)
            control.forget([NAME])
            summary = REPO / "tests" / "output" / "faults-outcomes.jsonl"
            with contextlib.suppress(OSError):
                summary.parent.mkdir(parents=True, exist_ok=True)
                if rig.outcomes.exists():
                    summary.write_text(rig.outcomes.read_text())
