"""site.yml's converged re-runs on a real lab device (a sysvinit box over telnet, the real Tailscale logged in to
the lab's headscale): a re-run of a device the last full run left as it is takes one device command and skips every
role; each kind of drift the roles repair (a pref changed by hand, a boot file rewritten to the same size, a node
logged out, a changed input) makes the next run a full one that repairs it, and the run after that is converged
again; --check on a converged device changes nothing; fleetmesh_fast_noop=false runs every role; the removal play
removes the stamp with the rest.

The device is torn down and its node deleted from headscale at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
]

lab = pytest.importorskip("fleetlab.lab", reason="the fleetlab package (tests/lab) is not installed")

from provision_lab import Run, run_site  # noqa: E402

from fleetlab import control  # noqa: E402

NAME = "conv-a"
STAMP = "/opt/tailscale/.fleetmesh-converged"
CHECK_TASK = "Check whether the device is as the last full run with these inputs left it"


def sh(script: str) -> str:
    proc = lab.exec_(NAME, ["sh", "-c", script], timeout=120)
    return proc.stdout + proc.stderr


def status() -> dict[str, Any]:
    return json.loads(sh("tailscale status --json"))


def prefs() -> dict[str, Any]:
    return json.loads(sh("tailscale debug prefs"))


@pytest.fixture(scope="module")
def box(work: Path) -> Iterator[Any]:
    lab.down(NAME)
    control.up()
    device = lab.up(NAME, "sysvinit")
    try:
        yield device
    finally:
        with contextlib.suppress(Exception):
            control.delete_node(int(status()["Self"]["ID"]))
        lab.down(NAME)


def reason(run: Run) -> str:
    """The check's reason line (converged, or why the run is a full one)."""
    found = re.search(r"reason: '?((?:converged|full run)[^\n']*)", run.output)
    assert found, run.output[-3000:]
    return found.group(1)


def converged(run: Run) -> bool:
    return reason(run).startswith("converged")


def assert_converged(run: Run) -> None:
    assert run.rc == 0 and run.changed == 0, run.output[-3000:]
    assert converged(run), reason(run)
    # One device command (the check) and no role task ran: nothing was sent.
    assert run.execs == 1 and run.puts == 0, (run.execs, run.puts)
    assert "fleetmesh.tailscale.binary : Install the release" not in run.output


def test_a_re_run_of_a_provisioned_device_is_one_command(box: Any, tmp_path: Path, mirror: str) -> None:
    first = run_site(box, tmp_path, mirror)
    assert first.rc == 0 and first.changed > 0, first.output[-3000:]
    assert reason(first).startswith("full run: no stamp"), reason(first)
    assert sh(f"head -n 1 {STAMP}").strip() == "fleetmesh-converged 1"
    assert status()["BackendState"] == "Running"
    assert_converged(run_site(box, tmp_path, mirror))


def test_check_mode_on_a_converged_device_changes_nothing(box: Any, tmp_path: Path, mirror: str) -> None:
    stamp = sh(f"cat {STAMP}")
    checked = run_site(box, tmp_path, mirror, check=True)
    assert checked.rc == 0 and checked.changed == 0 and converged(checked), reason(checked)
    assert sh(f"cat {STAMP}") == stamp


@pytest.mark.parametrize(
    ("drift", "repaired"),
    [
        # a pref changed by hand: the login role sets it back on the same node (the profile's accept_dns: false)
        ("tailscale set --accept-dns=true", lambda: prefs()["CorpDNS"] is False),
        # the init script rewritten with the same size in the same minute: only its checksum tells
        (
            "f=/etc/init.d/tailscaled; sed 's/^#!\\/bin\\/sh/#!\\/bin\\/SH/' $f > $f.x && cat $f.x > $f && rm $f.x",
            lambda: sh("head -n 1 /etc/init.d/tailscaled").strip() == "#!/bin/sh",
        ),
        # the daemon stopped: the boot role starts it again
        ("/etc/init.d/tailscaled stop", lambda: status()["BackendState"] == "Running"),
    ],
    ids=["pref-by-hand", "same-size-boot-file", "daemon-stopped"],
)
def test_drift_makes_a_full_run_that_repairs_it(
    box: Any, tmp_path: Path, mirror: str, drift: str, repaired: Any
) -> None:
    key = status()["Self"]["PublicKey"]
    sh(drift)
    run = run_site(box, tmp_path, mirror)
    assert run.rc == 0 and run.changed > 0, run.output[-3000:]
    assert reason(run).startswith("full run: the device changed"), reason(run)
    assert repaired()
    assert status()["Self"]["PublicKey"] == key  # the same node, no re-authentication
    assert_converged(run_site(box, tmp_path, mirror))


def test_a_changed_input_makes_a_full_run(box: Any, tmp_path: Path, mirror: str) -> None:
    run = run_site(box, tmp_path, mirror, {"boot_tailscaled_extra_args": ["--verbose=1"]})
    assert run.rc == 0 and run.changed > 0, run.output[-3000:]
    assert reason(run).startswith("full run: the inputs changed"), reason(run)
    assert "--verbose=1" in sh('cat "$(dirname "$(readlink -f /etc/init.d/tailscaled)")/tailscaled.defaults"')
    assert_converged(run_site(box, tmp_path, mirror, {"boot_tailscaled_extra_args": ["--verbose=1"]}))


def test_fast_noop_off_runs_every_role(box: Any, tmp_path: Path, mirror: str) -> None:
    run = run_site(box, tmp_path, mirror, {"boot_tailscaled_extra_args": ["--verbose=1"], "fleetmesh_fast_noop": False})
    assert run.rc == 0 and run.changed == 0, run.output[-3000:]
    assert f"skipping: [{NAME}]" in run.output.split(CHECK_TASK, 1)[1].split("TASK [", 1)[0]
    assert "fleetmesh.tailscale.binary : Install the release" in run.output and run.execs >= 7


def test_removal_removes_the_stamp_with_the_rest(box: Any, tmp_path: Path, mirror: str) -> None:
    run = run_site(box, tmp_path, mirror, {"fleetmesh_state": "absent"})
    assert run.rc == 0, run.output[-3000:]
    assert sh(f"[ -e {STAMP} ] && echo yes || echo no").strip() == "no"
    assert sh("[ -e /opt/tailscale ] && echo yes || echo no").strip() == "no"
