# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetmesh.tailscale: the connection plugins' options that make a shell session's settings.

login_settings() reads the login options of the shared doc fragment (shell_session) into the "login" part of the
settings the session daemon (_session_daemon.py) gets; control_socket() names the unix socket of a host's session
in the plugin's control_path_dir. Used by the telnet and adb connection plugins, on the controller.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any


def login_settings(plugin: Any, **extra: Any) -> dict[str, Any]:
    """The login part of a session's settings, from the options of the shared doc fragment (shell_session)."""
    password = plugin.get_option("password")
    return {
        "user": str(plugin.get_option("remote_user") or "root"),
        "password": None if password is None else str(password),
        "login_re": str(plugin.get_option("login_prompt_re")),
        "password_re": str(plugin.get_option("password_prompt_re")),
        "prompt_re": str(plugin.get_option("shell_prompt_re")),
        "failure_re": str(plugin.get_option("login_failure_re")),
        "timeout": float(plugin.get_option("timeout")),
        **extra,
    }


def control_socket(plugin: Any, prefix: str, *identity: Any) -> str:
    """The session's unix socket in the plugin's control_path_dir, named after what identifies the session.

    Short and fixed-length: unix socket paths are limited to 108 bytes.
    """
    directory = os.path.expanduser(str(plugin.get_option("control_path_dir")))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key = "\0".join(str(part) for part in identity).encode()
    return os.path.join(directory, f"{prefix}-{hashlib.sha256(key).hexdigest()[:20]}")
