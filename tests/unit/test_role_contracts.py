"""Each role publishes one contract fact, fleetmesh_<role>; where a role's contract is also planned without the role's
device work (state_dir's plan entry point, for the boot role on its own), the plan and the action agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from ansible_collections.fleetmesh.tailscale.plugins.action.state_dir import interpret

from repo_checkout import REPO, run_playbook

pytestmark = pytest.mark.slow

PLAY = """\
- name: Plan the state dir without the device
  hosts: all
  gather_facts: false
  roles:
    - role: fleetmesh.tailscale.device
  tasks:
    - name: Plan
      ansible.builtin.include_role:
        name: fleetmesh.tailscale.state_dir
        tasks_from: plan
    - name: Keep the fact
      ansible.builtin.copy:
        content: "{{ fleetmesh_state_dir | to_json }}"
        dest: "{{ out }}"
        mode: "0600"
"""


@pytest.mark.parametrize(
    ("profile", "extra"),
    [
        ("kobo", {}),
        ("quecopen", {"state_dir_path": "/data/ts", "state_dir_logs_dir": "/data/ts-logs"}),
    ],
)
def test_state_dir_plan_publishes_what_the_action_does(tmp_path: Path, profile: str, extra: dict) -> None:
    out = tmp_path / "fact.json"
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "device_profile": profile,
        "out": str(out),
        **extra,
    }
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"all": {"hosts": {"box": host}}}))
    play = tmp_path / "play.yml"
    play.write_text(PLAY)
    proc = run_playbook(["-i", str(inventory), str(play)], tmp_path / "home")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    planned = json.loads(out.read_text())
    data = yaml.safe_load((REPO / f"roles/device/vars/profiles/{profile}.yml").read_text())
    profile_data = data["device_profile_base"]
    state_dir = extra.get("state_dir_path", profile_data["state_dir"])
    logs_dir = extra.get("state_dir_logs_dir", state_dir + "/logs")
    backup = profile_data.get("state_backup", "")
    # What the action publishes for the same dirs on a device with no state and no daemon yet.
    old_paths = yaml.safe_load((REPO / "roles/state_dir/defaults/main.yml").read_text())["state_dir_old_paths"]
    acted = interpret("@@status\n@@end\n", state_dir, logs_dir, backup, old_paths)["facts"]
    assert planned == acted


def test_boot_init_system_choices_are_the_init_specs() -> None:
    """The boot role checks boot_init_system only through its argument spec's choices: they must be exactly the init
    systems boot_init_specs has data for (an init system added to one and not the other fails here)."""
    spec = yaml.safe_load((REPO / "roles/boot/meta/argument_specs.yml").read_text())
    choices = spec["argument_specs"]["main"]["options"]["boot_init_system"]["choices"]
    specs = yaml.safe_load((REPO / "roles/boot/vars/main.yml").read_text())["boot_init_specs"]
    assert sorted(choices) == sorted(specs)
