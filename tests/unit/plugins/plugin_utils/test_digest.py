"""_digest: the controller's sha256 of a file and the device's (sha256sum, else busybox's applet) agree."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_script import sh_quote
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._digest import sha256_cmd, sha256_file

BUSYBOX = shutil.which("busybox")


def test_sha256_file_reads_in_blocks(tmp_path: Path) -> None:
    data = os.urandom((1 << 20) + 17)  # more than one 1 MiB block
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("only_busybox", [False, True], ids=["sha256sum", "busybox-fallback"])
def test_device_digest_matches_the_controllers(tmp_path: Path, only_busybox: bool) -> None:
    if BUSYBOX is None:
        pytest.skip("busybox (Debian busybox-static) is not installed")
    f = tmp_path / "with space.bin"
    f.write_bytes(b"\x7fELF module")
    env = dict(os.environ)
    if only_busybox:  # a device without sha256sum on PATH: only busybox (and sed) there
        bindir = tmp_path / "bin"
        bindir.mkdir()
        for tool in ("busybox", "sed"):
            (bindir / tool).symlink_to(BUSYBOX)
        env["PATH"] = str(bindir)
    out = subprocess.run(
        [BUSYBOX, "sh", "-c", sha256_cmd(sh_quote(str(f)))], capture_output=True, text=True, env=env, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == sha256_file(f) + "\n"
