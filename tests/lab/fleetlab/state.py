"""Where the lab keeps its runtime state: one directory and one device.json per device under /run/fleetlab/.

Every helper of the lab reads devices through this module, so the layout of device.json lives in one place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RUN_DIR = Path(os.environ.get("FLEETLAB_RUN_DIR", "/run/fleetlab"))
DEVICES_DIR = RUN_DIR / "devices"
CACHE_DIR = Path(os.environ.get("FLEETLAB_CACHE_DIR", "/var/cache/fleetlab"))

BRIDGE = "fleetlab0"
SUBNET = ipaddress.IPv4Network("198.18.0.0/15")
GATEWAY = ipaddress.IPv4Address("198.18.0.1")
FIRST_DEVICE_INDEX = 10
MIRROR_PORT = 8080

# The host end of a veth is "flv-<name>" and interface names are at most 15 bytes, hence 11 characters.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,10}$")


class LabError(Exception):
    """An error the lab reports to its user as one line (no traceback)."""


@dataclasses.dataclass
class ProcRef:
    """A process the lab started, identified by pid plus kernel start time so a reused pid is never killed."""

    pid: int
    starttime: int

    @classmethod
    def of(cls, pid: int) -> ProcRef:
        return cls(pid=pid, starttime=proc_starttime(pid))

    def alive(self) -> bool:
        """Running (a zombie only waits for its parent to reap it: it counts as gone)."""
        try:
            fields = _stat_fields(self.pid)
        except (FileNotFoundError, ProcessLookupError):
            return False
        return int(fields[19]) == self.starttime and fields[0] != "Z"


@dataclasses.dataclass
class Device:
    """One lab device as recorded in /run/fleetlab/devices/<name>/device.json."""

    name: str
    profile: str
    index: int
    hostname: str
    arch: str = ""  # Debian architecture of the userland (`up --arch`); "" in records made before: the profile's
    password: str = ""
    login_prompt: bool = False
    readonly_root: bool = False
    tun_node: bool = True
    hide_tun: bool = False  # the kernel view (/proc/misc, /sys/class/misc) lacks tun
    template: str = ""
    host_mounts: list[str] = dataclasses.field(default_factory=list)
    init: ProcRef | None = None
    launcher: ProcRef | None = None
    services: dict[str, int] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def address(self) -> str:
        return str(SUBNET.network_address + self.index)

    @property
    def netns(self) -> str:
        return f"fleetlab-{self.name}"

    @property
    def veth_host(self) -> str:
        return f"flv-{self.name}"

    @property
    def dir(self) -> Path:
        return DEVICES_DIR / self.name

    @property
    def root(self) -> Path:
        """The device's / as the host sees it (an overlay over the profile's template)."""
        return self.dir / "root"

    @property
    def log(self) -> Path:
        return self.dir / "console.log"

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "device.json.tmp"
        # The record may hold the device's login password: keep it root-only.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(dataclasses.asdict(self), fh, indent=2, sort_keys=True)
        tmp.replace(self.dir / "device.json")

    @classmethod
    def load(cls, name: str) -> Device:
        path = DEVICES_DIR / name / "device.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(f"no lab device named {name!r} (see `fleetlab list`)") from None
        for key in ("init", "launcher"):
            if data.get(key):
                data[key] = ProcRef(**data[key])
        return cls(**data)


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat from field 3 (state) on."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces and parentheses: split after its closing parenthesis.
    return stat[stat.rindex(")") + 2 :].split()


def proc_starttime(pid: int) -> int:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot)."""
    return int(_stat_fields(pid)[19])


# Names of the lab's own services' namespaces (fleetlab-ctl: the control plane), never a device's.
RESERVED_NAMES = frozenset({"ctl"})


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise LabError(f"bad device name {name!r}: use 1-11 characters a-z, 0-9 and '-', starting with a letter/digit")
    if name in RESERVED_NAMES:
        raise LabError(f"device name {name!r} is reserved for the lab's control plane (netns fleetlab-{name})")


def device_names() -> list[str]:
    if not DEVICES_DIR.is_dir():
        return []
    return sorted(p.parent.name for p in DEVICES_DIR.glob("*/device.json"))


def devices() -> list[Device]:
    found = []
    for name in device_names():
        with contextlib.suppress(LabError, json.JSONDecodeError, TypeError):
            found.append(Device.load(name))
    return found


def free_index() -> int:
    used = {d.index for d in devices()}
    index = FIRST_DEVICE_INDEX
    while index in used:
        index += 1
    return index


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """Serialise lab changes (address allocation, bridge creation) between concurrent `fleetlab` runs."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(RUN_DIR / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
