# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to the fleetmesh.tailscale collection: not a public API, may change without notice.

A thin wrapper over the stock `adb` client (Debian's 1.0.41 and current platform-tools) for the adb connection
plugin: device selection by serial (USB serial or host:port), `adb connect` for TCP serials with the device's
answer turned into a clear error, features, one-shot shell, push and pull.
"""

from __future__ import annotations

import re
import subprocess
import typing as t

# What `adb get-state` / `adb connect` print, and what each means for the user.
STATE_ERRORS = {
    "unauthorized": "the device has not authorized this computer's adb key (accept the prompt on the device, or put "
    "~/.android/adbkey.pub in the device's /data/misc/adb/adb_keys)",
    "offline": "the device is offline (adbd not answering: replug it, or restart adbd on the device)",
    "no permissions": "no permission to open the USB device (udev rules for adb, or run as root)",
}


class AdbError(Exception):
    """The adb client or the device refused; the message says why in the user's terms."""


class AdbClient:
    """One device, addressed by serial, through one adb server."""

    def __init__(self, adb_path: str, serial: str, server_port: int | None = None, timeout: float = 30) -> None:
        self.adb_path = adb_path
        self.serial = serial
        self.server_port = server_port
        self.timeout = timeout

    @property
    def is_tcp(self) -> bool:
        return re.fullmatch(r"[^:\s]+:\d+", self.serial) is not None

    def argv(self, *args: str, device: bool = True) -> list[str]:
        cmd = [self.adb_path]
        if self.server_port:
            cmd += ["-P", str(self.server_port)]
        if device:
            cmd += ["-s", self.serial]
        return cmd + list(args)

    def run(
        self, *args: str, device: bool = True, timeout: float | None = None, data: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        cmd = self.argv(*args, device=device)
        try:
            return subprocess.run(cmd, input=data, capture_output=True, timeout=timeout or self.timeout, check=False)
        except FileNotFoundError as exc:
            raise AdbError(f"adb client not found at {self.adb_path!r} (install it, or set adb_path)") from exc
        except subprocess.TimeoutExpired as exc:
            raise AdbError(f"adb {' '.join(args[:2])} on {self.serial} timed out after {exc.timeout:.0f} s") from exc

    def state(self) -> str:
        """The device's state as the adb server sees it (device, offline, unauthorized, ...), or '' if unknown."""
        proc = self.run("get-state")
        text = (proc.stdout + proc.stderr).decode(errors="replace").strip()
        if proc.returncode == 0:
            return text.splitlines()[-1].strip() if text else ""
        for state in STATE_ERRORS:
            if state in text:
                return state
        return ""

    def ensure_ready(self) -> None:
        """Make the device usable (adb connect for TCP serials) or raise AdbError naming the cause."""
        state = self.state()
        if state == "device":
            return
        if self.is_tcp and state == "":
            proc = self.run("connect", self.serial, device=False)
            answer = (proc.stdout + proc.stderr).decode(errors="replace").strip()
            if "connected to" not in answer or "failed" in answer or "unable" in answer:
                raise AdbError(f"adb connect {self.serial} failed: {answer or 'no answer'}")
            state = self.state()
        if state == "device":
            return
        if state in STATE_ERRORS:
            raise AdbError(f"{self.serial}: {STATE_ERRORS[state]}")
        raise AdbError(f"{self.serial}: device not found by the adb server (not plugged in, or wrong serial)")

    def features(self) -> set[str]:
        proc = self.run("features")
        if proc.returncode != 0:
            return set()
        return {f.strip() for f in re.split(r"[\s,]+", proc.stdout.decode(errors="replace")) if f.strip()}

    def disconnect(self) -> None:
        if self.is_tcp:
            self.run("disconnect", self.serial, device=False)

    def shell(self, command: str, shell_v2: bool, timeout: float | None = None) -> subprocess.CompletedProcess[bytes]:
        # Without shell_v2 the device runs the command under a pty (CRLF, stderr merged) and adb exits 0 anyway;
        # with it, -T keeps the output raw and adb returns the remote exit status.
        args = ["shell", "-T", command] if shell_v2 else ["shell", command]
        return self.run(*args, timeout=timeout)

    def push(self, local: str, remote: str) -> None:
        proc = self.run("push", local, remote, timeout=max(self.timeout, 600))
        if proc.returncode != 0:
            raise AdbError(f"adb push to {remote} failed: {_tail(proc)}")

    def pull(self, remote: str, local: str) -> None:
        proc = self.run("pull", remote, local, timeout=max(self.timeout, 600))
        if proc.returncode != 0:
            raise AdbError(f"adb pull of {remote} failed: {_tail(proc)}")


def _tail(proc: subprocess.CompletedProcess[bytes], limit: int = 400) -> str:
    text = (proc.stderr + proc.stdout).decode(errors="replace").strip()
    return text[-limit:] if text else f"exit status {proc.returncode}"


def feature_list(features: t.Iterable[str]) -> str:
    return ",".join(sorted(features)) or "none"
