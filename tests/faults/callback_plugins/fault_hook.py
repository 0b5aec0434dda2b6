# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test-only callback of the fault suite (tests/faults): stops the play at a chosen task until the test acts.

When a task whose name matches FLEETMESH_FAULT_AT (a regular expression) starts for the FLEETMESH_FAULT_NTH-th
time (default: the first), the callback
writes the task name to FLEETMESH_FAULT_DIR/reached and waits (at most 120 s) until the test creates
FLEETMESH_FAULT_DIR/go; the task runs after that. v2_playbook_on_task_start runs in the controller's main process
before the task is queued to a worker, so the fault (a full disk, a killed daemon, a reboot that starts now) is in
place before the task's first command reaches the device.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: fault_hook
type: aggregate
short_description: Pause a play at a task so the fault suite can inject a fault (tests only)
description:
  - Test helper of the fleetmesh.tailscale fault suite; not part of the collection.
requirements:
  - FLEETMESH_FAULT_AT and FLEETMESH_FAULT_DIR in the environment
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "fault_hook"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        pattern = os.environ.get("FLEETMESH_FAULT_AT", "")
        self._at = re.compile(pattern) if pattern else None
        self._dir = Path(os.environ.get("FLEETMESH_FAULT_DIR", "."))
        self._nth = int(os.environ.get("FLEETMESH_FAULT_NTH") or 1)
        self._seen = 0
        self._fired = False

    def v2_playbook_on_task_start(self, task, is_conditional):  # noqa: ARG002 - the callback API's signature
        name = task.get_name()
        if self._fired or self._at is None or not self._at.search(name):
            return
        self._seen += 1
        if self._seen < self._nth:
            return
        self._fired = True
        (self._dir / "reached").write_text(name + "\n")
        deadline = time.monotonic() + 120
        while not (self._dir / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
