"""Fixtures shared by the lab integration tests: a module's work dir and its loopback release mirror.

`work` is a temp dir per test module (its name is the module's); the telnet/adb plugins' background sessions that
the module's runs start under `work/cp` are stopped at the end. `mirror` serves the lab's real Tailscale builds
from there (provision_lab.release_mirror). A module that needs something else defines its own fixture of the name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from provision_lab import release_mirror, stop_sessions


@pytest.fixture(scope="module")
def work(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_"))
    yield path
    stop_sessions(path / "cp")


@pytest.fixture(scope="module")
def mirror(work: Path) -> Iterator[str]:
    with release_mirror(work / "mirror") as url:
        yield url
