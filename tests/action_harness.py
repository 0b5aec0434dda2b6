"""Run a collection action plugin in-process against a fake device, as Ansible would for one task.

The device object answers `execute(cmd, ...)` like ActionBase._low_level_execute_command; an optional
`put_file(local, remote)` receives uploads.
"""

from __future__ import annotations

import typing as t
from unittest import mock

from ansible.parsing.dataloader import DataLoader
from ansible.playbook.play_context import PlayContext
from ansible.playbook.task import Task
from ansible.plugins.loader import action_loader


def run_action(name: str, device: t.Any, args: dict[str, t.Any], *, check: bool = False, diff: bool = False) -> dict:
    """The result of fleetmesh.tailscale.<name> with these args (check/diff mode as asked)."""
    task = Task()
    task.action = f"fleetmesh.tailscale.{name}"
    task.args = args
    task.check_mode = check
    task.diff = diff
    connection = mock.MagicMock()
    if hasattr(device, "put_file"):
        connection.put_file.side_effect = device.put_file
    action = action_loader.get(
        task.action,
        task=task,
        connection=connection,
        play_context=PlayContext(),
        loader=DataLoader(),
        templar=None,
        shared_loader_obj=None,
    )
    action._low_level_execute_command = device.execute  # pylint: disable=protected-access
    return action.run(task_vars={})
