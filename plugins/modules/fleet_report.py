# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This file only documents the action plugin of the same name: it runs on the controller (the control servers'
# APIs and the report files). Nothing of it runs on a device.

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_report
short_description: Write the fleet report (HTML page, JSON file) and return its terminal table
version_added: 0.1.0
description:
  - Runs on the controller, once for the fleet (C(run_once)), as the last step of C(playbooks/report.yml)
    (docs/report.md).
  - Lists the nodes of every control server once (O(controls)), matches each host's node by its node key, and
    merges what C(fleetmesh.tailscale.node_status) read on each device with the last records of the
    C(fleetmesh.tailscale.fleet_record) callback (the last real run, and the last C(--check) run).
  - Writes C(<dest>/<name>.html), one self-contained page (inline CSS, no script, no external resource, every
    value HTML-escaped) with the summary (up, behind, failing, drifted) on top, and C(<dest>/<name>.json), each
    atomically (a temp file and a rename). In check mode nothing is written (RV(written) false).
  - C(changed) is always false, the report is the controller's output, not a change to the fleet.
  - No credential of O(controls) is ever written to the report or returned.
options:
  hosts:
    description:
      - One entry per host (what C(playbooks/report.yml) gathers into C(fleetmesh_report_host)).
      - Keys C(host) (inventory name, required), C(profile), C(connection) (C(ansible_connection)), C(pin)
        (C(version), C(track)), C(node) (RV(fleetmesh.tailscale.node_status#module:node)), C(skipped) (not a
        device, e.g. the rootfs profile), C(unreachable), C(error), C(routes_wanted) (C(routing_routes), null if
        unmanaged), C(networking_wanted) (C(networking_mode)).
    type: list
    elements: dict
    required: true
  controls:
    description:
      - The control server API of each host, by inventory name (the O(fleetmesh.tailscale.control_node#module:control)
        option's form, what C(login_control) or C(fleetmesh_control) holds). Hosts with the same server share one
        node listing. A host without one has no online column.
      - Holds credentials; never logged, returned or written.
    type: dict
    default: {}
  dest:
    description: Directory of the report files (relative to the directory ansible-playbook runs in).
    type: path
    default: fleet-report
  name:
    description: File name stem of the two files.
    type: str
    default: fleet-report
  record_dir:
    description:
      - Where the fleet_record callback keeps its records. Unset, the callback's own C(record_dir) setting
        (C(FLEETMESH_RECORD_DIR), C(record_dir) in the C([callback_fleet_record]) section of ansible.cfg,
        default C(~/.cache/fleetmesh/records)).
    type: path
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
author:
  - fleetmesh developers !UNKNOWN
"""

EXAMPLES = r"""
- name: Write the fleet report
  fleetmesh.tailscale.fleet_report:
    hosts: "{{ ansible_play_hosts_all | map('extract', hostvars, 'fleetmesh_report_host') | list }}"
    dest: /srv/www/fleet
  run_once: true
  register: fleet_report

- name: Show the table
  ansible.builtin.debug:
    msg: "{{ fleet_report.table }}"
  run_once: true
"""

RETURN = r"""
written:
  description: Whether the files were written (false in check mode).
  returned: always
  type: bool
files:
  description: Paths of the report files, C(html) and C(json).
  returned: always
  type: dict
  sample: {"html": "/home/ops/fleet-report/fleet-report.html", "json": "/home/ops/fleet-report/fleet-report.json"}
record_dir:
  description: Where the records were read.
  returned: always
  type: str
summary:
  description: Counts of C(hosts), C(up), C(down), C(behind), C(failing), C(drifted), C(not_applicable).
  returned: always
  type: dict
  sample: {"hosts": 4, "up": 3, "down": 1, "behind": 1, "failing": 0, "drifted": 1, "not_applicable": 0}
table:
  description: The terminal table, one line per element (the summary line first, drift lines after the rows).
  returned: always
  type: list
  elements: str
text:
  description: RV(table) and the two file paths as one string of lines (what C(playbooks/report.yml) shows).
  returned: always
  type: str
report:
  description:
    - The whole report, as written to the JSON file (C(version), C(generated), C(summary), C(servers), C(hosts)).
  returned: always
  type: dict
"""
