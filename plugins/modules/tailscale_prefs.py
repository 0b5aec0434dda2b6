# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This file only documents the action plugin of the same name: the work is done on the controller, over the
# connection, with the device's own POSIX shell. Nothing of it runs on the device as a module.

from __future__ import annotations

DOCUMENTATION = r"""
module: tailscale_prefs
short_description: Idempotent Tailscale login and prefs on devices without Python
version_added: 0.1.0
description:
  - Reads the node's truth (C(tailscale status --json) and C(tailscale debug prefs)) in one shell round trip,
    compares it with the options given, and does the least that closes the gap.
  - Nothing when every managed pref matches. C(tailscale set) with only the differing flags when the node is logged
    in (no re-authentication). C(tailscale up) with the auth key only when the node needs login (C(NeedsLogin),
    C(NoState), logged out) or when the login server or the advertised tags must change; that C(up) mentions every
    managed flag and every other non-default pref of the node, so Tailscale's "requires mentioning all non-default
    flags" check passes and unmanaged prefs are kept; a login-server change adds C(--force-reauth).
  - A stopped node (C(WantRunning=false)) is brought up with C(tailscale up) and no key.
  - An option left unset is not managed. C(advertise_routes=[]) advertises none.
  - The auth key is written to a 0600 file in a fresh 0700 temp dir on the device with the connection's
    C(put_file), passed as C(--auth-key=file:PATH) and removed in the same shell line as the command (and again if
    the round trip broke). It never appears on a command line, in the result or in an error.
  - C(NeedsMachineAuth) after login is reported (C(machine_auth_pending), a warning) and fails only with
    O(fail_on_machine_auth).
  - With O(mode=config), renders tailscaled's declarative C(--config) file (C(version alpha0)) from the same options
    and installs it atomically with mode 0600; the daemon reads it at its next start.
options:
  mode:
    description: C(cli) drives the running daemon with C(tailscale up/set); C(config) writes the C(--config) file.
    type: str
    choices: [cli, config]
    default: cli
  tailscale:
    description: The tailscale CLI on the device (name on PATH or absolute path).
    type: str
    default: tailscale
  socket:
    description: tailscaled's socket, passed as the global C(--socket) flag when set.
    type: str
  auth_key:
    description:
      - Auth key (C(tskey-auth-...)) or OAuth client secret (C(tskey-client-...), needs O(advertise_tags)).
      - Used only when a login is needed. Mark it C(no_log) in your play as well.
    type: str
  key_dir:
    description: Directory on the device in which the private temp dir for the key file is made.
    type: str
    default: /tmp
  login_server:
    description: Control server URL (headscale). C(https://login.tailscale.com) and the default are the same.
    type: str
  hostname:
    description: Hostname the node asks for.
    type: str
  accept_dns:
    description: Accept the tailnet's DNS settings (rewrites C(/etc/resolv.conf) without a DNS manager).
    type: bool
  accept_routes:
    description: Accept subnet routes advertised by other nodes.
    type: bool
  ssh:
    description: Run the Tailscale SSH server.
    type: bool
  shields_up:
    description: Block incoming connections.
    type: bool
  advertise_routes:
    description:
      - Subnet routes to advertise. Validated (CIDR, no host bits, no overlap) before anything runs.
      - An empty list advertises none; unset leaves the node's routes alone.
    type: list
    elements: str
  advertise_exit_node:
    description: Offer the node as an exit node.
    type: bool
  advertise_tags:
    description:
      - ACL tags (C(tag:NAME)), compared with the tags the control server granted the node (C(Self.Tags)).
      - Changing them re-authenticates with O(auth_key) and C(--force-reauth); the task fails when the server does
        not grant them (headscale gives a node the tags of its pre-auth key, so leave this unset there).
    type: list
    elements: str
  snat_subnet_routes:
    description: Source-NAT traffic to advertised subnets (Tailscale's default is true).
    type: bool
  netfilter_mode:
    description: tailscaled's netfilter mode.
    type: str
    choices: ["on", nodivert, "off"]
  extra_up_args:
    description: Extra arguments added to C(tailscale up) only (never to C(set)); not compared with the node.
    type: list
    elements: str
    default: []
  reset:
    description: Add C(--reset) to C(tailscale up), resetting unmentioned prefs to their defaults.
    type: bool
    default: false
  timeout:
    description: C(--timeout) of C(tailscale up), always passed (Tailscale's default waits forever).
    type: str
    default: 60s
  fail_on_machine_auth:
    description: Fail when the node ends in C(NeedsMachineAuth) instead of warning.
    type: bool
    default: false
  config_path:
    description: With O(mode=config), where tailscaled's C(--config) file goes on the device.
    type: str
  config_auth_key_file:
    description:
      - With O(mode=config), a device path holding the auth key, written into the file as C(AuthKey=file:PATH).
        The key itself is never written into the config file.
      - Without it, O(mode=config) with O(auth_key) logs a running daemon that reports C(NeedsLogin) in once with the
        CLI (C(tailscale up), the key in a task-only file), as O(mode=cli) does; tailscaled reads C(AuthKey) at
        every start, so a key named in the file would have to outlive the task.
    type: str
  connection_address:
    description:
      - The address this play reaches the device at (the role passes C(ansible_host)). When it is a Tailscale
        address (100.64.0.0/10 or fd7a:115c:a1e0::/48) and the plan needs a login, the re-authentication would cut the
        connection it runs on, so the action fails before changing anything unless O(allow_reauth_over_tailnet).
      - Not a Tailscale address (a LAN address, an adb serial, a name), or unset, changes nothing.
    type: str
  allow_reauth_over_tailnet:
    description:
      - Allow a login or re-authentication while O(connection_address) is a Tailscale address. The CLI then runs
        detached on the device (ignoring SIGHUP), the result carries C(detached=true) and a warning, and the next
        run verifies the outcome.
    type: bool
    default: false
  mint_key:
    description:
      - Mint the login key from the control server (O(control)) instead of taking O(auth_key). Only when the node
        needs a login is a single-use pre-auth key minted with O(mint_key.tags), valid O(mint_key.expiry) seconds,
        handed over as a file like O(auth_key), and expired through the API as soon as the command returned
        (RV(minted_key) says what the server reports of it then). A node already logged in gets none.
      - With a login that runs detached (over the tailnet), the key is not expired by the task but expires by
        itself.
    type: dict
    suboptions:
      tags:
        description: ACL tags of the key (headscale gives the node the tags of the key it registered with).
        type: list
        elements: str
        default: []
      expiry:
        description: Seconds the key is valid if it is not spent.
        type: int
        default: 600
      ephemeral:
        description: Register an ephemeral node.
        type: bool
        default: false
      description:
        description: Key description (Tailscale only).
        type: str
        default: fleetmesh login
extends_documentation_fragment:
  - fleetmesh.tailscale.control_api
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
author:
  - fleetmesh developers !UNKNOWN
"""

EXAMPLES = r"""
- name: Log in once and keep the prefs as declared
  fleetmesh.tailscale.tailscale_prefs:
    auth_key: "{{ login_auth_key }}"
    login_server: https://headscale.example.org
    hostname: kobo-sage
    accept_dns: false
    advertise_routes:
      - 192.168.225.0/24
    timeout: 60s
  no_log: false  # the action never returns the key; keep task output visible

- name: Render tailscaled's declarative config file instead
  fleetmesh.tailscale.tailscale_prefs:
    mode: config
    config_path: /usrdata/tailscale/tailscaled.conf
    hostname: quec1
    accept_dns: false
"""

RETURN = r"""
command:
  description: What was (or, in check mode, would be) run.
  returned: cli mode
  type: str
  sample: set
argv:
  description: The CLI arguments, the key file shown as a placeholder.
  returned: cli mode
  type: list
  elements: str
  sample: [set, --hostname=kobo-sage]
reason:
  description: Why that command.
  returned: cli mode
  type: str
changes:
  description: Managed flags that differed, with before and after values.
  returned: cli mode
  type: dict
backend_state:
  description: The node's BackendState after the task.
  returned: cli mode
  type: str
  sample: Running
machine_auth_pending:
  description: The node waits for a tailnet admin to approve it.
  returned: cli mode
  type: bool
output:
  description: The CLI's output (redacted), when a command ran.
  returned: when a command ran
  type: str
config_path:
  description: Path of the config file on the device.
  returned: config mode
  type: str
node:
  description: Who the node is after the task (C(node_key), tailnet C(addresses), C(hostname), C(dns_name)).
  returned: cli mode
  type: dict
minted_key:
  description:
    - With O(mint_key), the minted key's id, tags, expiration and the server's C(used)/C(expired) after the task
      (never the key itself); null when no login needed one.
  returned: with mint_key
  type: dict
login_pending:
  description:
    - With O(mode=config) and O(auth_key), true while the node still needs its login (tailscaled not running yet, or
      the detached login not verified yet).
  returned: config mode with auth_key
  type: bool
"""
