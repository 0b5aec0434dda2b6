# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetmesh.tailscale: the errors of the shell session over a byte stream (telnet, adb).

SessionError and its kinds, raised by the session (_shell_session.py), its framing (_shell_framing.py), its file
transfers (_transfer.py) and the telnet client (_telnet_client.py). The session daemon sends a kind back by its class
name, which the connection plugins map to UNREACHABLE or a task failure. Pure Python with no Ansible import.
"""

from __future__ import annotations


class SessionError(Exception):
    """Base of everything the shell session and its streams raise."""


class ConnectError(SessionError):
    """The device could not be reached (refused, no route, timeout)."""


class LoginError(SessionError):
    """The device answered but did not give a shell (wrong credentials, no prompt in time)."""


class SessionLost(SessionError):
    """The stream ended while a command ran: it may have run partly."""

    def __init__(self, msg: str, started: bool = True) -> None:
        super().__init__(msg)
        self.started = started  # False: the shell never printed the start marker, so the command never ran


class CommandTimeout(SessionError):
    """A command did not finish in time; the session was dropped because its state is unknown."""


class TransferError(SessionError):
    """A file did not arrive intact."""
