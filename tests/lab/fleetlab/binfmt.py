"""binfmt_misc handler for 32-bit ARM ELF binaries (qemu-user-static), needed by the armv7l devices.

The handler is registered with the F (fix-binary) flag so the kernel opens the interpreter at registration time
and it keeps working inside a device's chroot, where /usr/libexec/qemu-binfmt does not exist.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fleetlab.state import LabError

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
HANDLER = BINFMT_DIR / "qemu-arm"
# Shipped by Debian's qemu-user-static in systemd's binfmt.d format: ":name:type:offset:magic:mask:interp:flags".
QEMU_ARM_CONF = Path("/usr/lib/binfmt.d/qemu-arm.conf")


def _flags() -> str:
    for line in HANDLER.read_text().splitlines():
        if line.startswith("flags:"):
            return line.split(":", 1)[1].strip()
    return ""


def ensure_qemu_arm() -> None:
    """Mount binfmt_misc and register qemu-arm if missing; say so on stderr when the host is changed."""
    if not (BINFMT_DIR / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], check=True)
        print(f"fleetlab: mounted binfmt_misc on {BINFMT_DIR}", file=sys.stderr)
    if HANDLER.exists():
        if (BINFMT_DIR / "status").read_text().strip() != "enabled":
            raise LabError("binfmt_misc is disabled on this host (echo 1 > /proc/sys/fs/binfmt_misc/status)")
        if "F" not in _flags():
            raise LabError(
                f"{HANDLER} is registered without the F (fix-binary) flag, so ARM binaries cannot run inside a "
                "chroot; remove it (echo -1 > /proc/sys/fs/binfmt_misc/qemu-arm) and run fleetlab again"
            )
        return
    if not QEMU_ARM_CONF.exists():
        raise LabError(f"{QEMU_ARM_CONF} missing: apt-get install qemu-user-static")
    line = QEMU_ARM_CONF.read_text().strip()
    fields = line.split(":")
    if "F" not in fields[-1]:
        line += "F"
    (BINFMT_DIR / "register").write_text(line)
    print(f"fleetlab: registered the qemu-arm binfmt_misc handler ({HANDLER}, flags {_flags()})", file=sys.stderr)
