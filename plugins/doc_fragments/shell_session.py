# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options of the shared byte-stream shell session: the login in plugins/plugin_utils/_shell_session.py, the command
framing in _shell_framing.py."""

from __future__ import annotations


class ModuleDocFragment:
    """Login prompt regexes and command timeout, shared by the telnet and adb connection plugins."""

    DOCUMENTATION = r"""
options:
  login_prompt_re:
    description:
      - Python regex matched against the end of the device's output (colour codes and CRs removed) that means
        "type the user name now".
    type: str
    default: '(?i)(?:login|user ?name)\s*:\s*$'
    vars:
      - name: fleetmesh_login_prompt_re
    env:
      - name: FLEETMESH_LOGIN_PROMPT_RE
    ini:
      - section: fleetmesh_shell_session
        key: login_prompt_re
  password_prompt_re:
    description:
      - Python regex for the password prompt, matched like O(login_prompt_re). With no password set, an empty
        line is sent when it appears.
    type: str
    default: '(?i)password\s*:\s*$'
    vars:
      - name: fleetmesh_password_prompt_re
    env:
      - name: FLEETMESH_PASSWORD_PROMPT_RE
    ini:
      - section: fleetmesh_shell_session
        key: password_prompt_re
  shell_prompt_re:
    description:
      - "Python regex that recognises the shell prompt after login (C(# ), C($ ), C(~ # ), C(root@kobo:~# ),
        coloured or not, after any MOTD banner). It is only needed once per login: afterwards the plugin sets an
        empty prompt and frames every command with random markers."
    type: str
    default: '[#$>%][ \t]*$'
    vars:
      - name: fleetmesh_shell_prompt_re
    env:
      - name: FLEETMESH_SHELL_PROMPT_RE
    ini:
      - section: fleetmesh_shell_session
        key: shell_prompt_re
  login_failure_re:
    description:
      - Python regex that, once credentials were sent, means they were refused (busybox C(login) prints
        C(Login incorrect)).
    type: str
    default: '(?i)login incorrect|incorrect password|authentication fail|login failed|access denied'
    vars:
      - name: fleetmesh_login_failure_re
    env:
      - name: FLEETMESH_LOGIN_FAILURE_RE
    ini:
      - section: fleetmesh_shell_session
        key: login_failure_re
  command_timeout:
    description:
      - Seconds one command may run before the plugin gives up and drops the session (its state is then unknown);
        C(0) waits as long as the connection lives (TCP keepalive notices a dead link within about 30 seconds).
    type: int
    default: 0
    vars:
      - name: fleetmesh_command_timeout
    env:
      - name: FLEETMESH_COMMAND_TIMEOUT
    ini:
      - section: fleetmesh_shell_session
        key: command_timeout
"""
