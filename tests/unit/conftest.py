"""Fixtures for the collection's unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from repo_checkout import copy_checkout


@pytest.fixture(scope="session")
def fresh_clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_checkout(tmp_path_factory.mktemp("clone") / "fleetmesh-tailscale")
