# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This file only documents the action plugin of the same name: the work is done on the controller, over the
# connection, with the device's own POSIX shell. Nothing of it runs on the device as a module.

from __future__ import annotations

DOCUMENTATION = r"""
module: boot
short_description: Install tailscaled's boot integration on a device without Python and keep the daemon running
version_added: 0.1.0
description:
  - One shell round trip compares each boot file (sha256) and link with what is wanted, reads the manifest, and
    asks the init system whether tailscaled runs. A no-op run sends that one command and transfers nothing.
  - Differing files are uploaded to a temporary name beside their destination. Files marked O(files[].shell) are
    checked with C(sh -n) on the device before anything moves, so a broken script never replaces a working one.
    Then everything is renamed into place, links are switched, and a manifest of what was installed is written.
  - When files or links changed (or O(restart)) and tailscaled runs, it is restarted once (O(service.stop) then
    O(service.start)); when it does not run, it is started. The task then waits until O(service.running) succeeds
    and O(service.wait_path) exists, and fails with the tail of O(service.log) otherwise.
  - O(state=absent) stops tailscaled (when the manifest exists) and removes exactly what the manifest lists
    (files, links that are still links, dirs that are empty). Nothing else, in particular never the state file.
  - Used by the fleetmesh.tailscale.boot role, which renders the files per init system.
options:
  files:
    description: Files to install (rendered content, or a file on the controller).
    type: list
    elements: dict
    default: []
    suboptions:
      dest:
        description: Absolute path on the device.
        type: str
        required: true
      content:
        description: Content of the file (mutually exclusive with O(files[].src)).
        type: str
      src:
        description: File on the controller (mutually exclusive with O(files[].content)).
        type: path
      mode:
        description: Octal mode.
        type: str
        default: '0644'
      shell:
        description: A shell script, checked with C(sh -n) on the device before it goes live.
        type: bool
        default: false
  links:
    description: Symlinks to create or correct (a path that exists and is not a symlink is refused).
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path of the link.
        type: str
        required: true
      target:
        description: Link target (verbatim).
        type: str
        required: true
  dirs:
    description: Directories to create (removed on O(state=absent) when empty).
    type: list
    elements: str
    default: []
  manifest:
    description: Device path of the manifest listing what was installed.
    type: str
    required: true
  state:
    description: V(present) installs and starts; V(absent) stops and removes what the manifest lists.
    type: str
    default: present
    choices: [present, absent]
  root:
    description:
      - Rootfs staging dir (a firmware image tree, with a C(local) connection). Every written path goes below it,
        link targets and the manifest keep in-image paths. Nothing is started (O(service) must be empty).
    type: str
    default: ''
  remount_root:
    description: When C(/) is mounted read-only, remount it read-write around link changes.
    type: bool
    default: false
  service:
    description: How the init system drives tailscaled; empty for files only.
    type: dict
    default: {}
    suboptions:
      running:
        description: Shell command that exits 0 while tailscaled runs.
        type: str
        default: ''
      start:
        description: Shell command that starts tailscaled in the background.
        type: str
        default: ''
      stop:
        description: Shell command that stops tailscaled and waits for it.
        type: str
        default: ''
      wait_path:
        description: Path that must exist after a start (tailscaled's socket).
        type: str
        default: ''
      log:
        description: Log whose tail is reported when the start fails.
        type: str
        default: ''
  restart:
    description: Restart a running tailscaled even when no file changed (e.g. its state file moved).
    type: bool
    default: false
  wait_timeout:
    description: Seconds to wait after a start.
    type: int
    default: 30
  storage_mount:
    description:
      - Mount point that must be in the device's C(/proc/mounts) before anything below it is written (checked only
        when a file, dir or the manifest is below it); waited for up to O(storage_mount_timeout) seconds, then the
        task fails with nothing written. Empty or C(/) skips it.
    type: str
    default: ''
  storage_mount_timeout:
    description: Seconds to wait for O(storage_mount).
    type: int
    default: 30
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
notes:
  - The device needs only a POSIX shell (busybox ash is enough) with C(sha256sum) (or busybox's), C(stat) and C(df).
author:
  - fleetmesh developers !UNKNOWN
"""

EXAMPLES = r"""
- name: Install a sysvinit script and start tailscaled
  fleetmesh.tailscale.boot:
    files:
      - dest: /opt/tailscale/boot/tailscaled.init
        content: "{{ lookup('ansible.builtin.template', 'tailscaled.init.j2') }}"
        mode: "0755"
        shell: true
    links:
      - path: /etc/init.d/tailscaled
        target: /opt/tailscale/boot/tailscaled.init
      - path: /etc/rc5.d/S99tailscaled
        target: ../init.d/tailscaled
    dirs:
      - /opt/tailscale/boot
    manifest: /opt/tailscale/boot/.fleetmesh-boot.manifest
    service:
      running: /etc/init.d/tailscaled status
      start: /etc/init.d/tailscaled start
      stop: /etc/init.d/tailscaled stop
      wait_path: /var/run/tailscale/tailscaled.sock

- name: Stop tailscaled and remove what was installed
  fleetmesh.tailscale.boot:
    state: absent
    manifest: /opt/tailscale/boot/.fleetmesh-boot.manifest
    service:
      running: /etc/init.d/tailscaled status
      start: /etc/init.d/tailscaled start
      stop: /etc/init.d/tailscaled stop
"""

RETURN = r"""
uploaded:
  description: Files uploaded (changed or new).
  returned: state=present
  type: list
  elements: str
linked:
  description: Links created or corrected.
  returned: state=present
  type: list
  elements: str
restarted:
  description: tailscaled was restarted (it ran, and its files changed or O(restart) was set).
  returned: state=present
  type: bool
started:
  description: tailscaled was started (it did not run).
  returned: state=present
  type: bool
was_running:
  description: tailscaled ran before the task.
  returned: state=present
  type: bool
removed:
  description: Paths of the manifest (removed unless check mode).
  returned: state=absent
  type: list
  elements: str
"""
