"""Device profiles of the namespace lab: what each simulated device looks like and how it boots.

The systemd profile is not here: it is a Debian rootfs under systemd-nspawn (fleetlab/systemd_device.py).
"""

from __future__ import annotations

import dataclasses

# Debian architectures a busybox profile's userland can be built for (`fleetlab up --arch`).
ARCHES = ("amd64", "armhf")


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    arch: str  # Debian architecture of the userland: "amd64" or "armhf" (armv7l through qemu-user)
    packages: tuple[str, ...]  # Debian packages unpacked into the template rootfs
    dirs: tuple[str, ...]  # directories of the real device's layout
    files: dict[str, str]  # path -> content written into the template
    root_size: str  # tmpfs size of the writable layer of /: "small /" is a size limit, not a promise
    data_mounts: tuple[tuple[str, str], ...]  # (path, size): separate mounts that survive `reboot`
    boot: str  # "rc5": /etc/rc5.d/S* start from /etc/init.d/rcS; "udev": the lab fires `add loop0`
    telnet: bool  # busybox telnetd on port 23 (respawned by init)
    adb: bool  # the lab adbd on port 5555 (fleetlab/adbd.py)
    hostname: str | None = None  # fixed hostname; None: the device's name
    tun_node: bool = True  # /dev/net/tun present at boot
    volatile: tuple[str, ...] = ("/tmp", "/run")  # tmpfs inside the device: empty after every boot
    # Filesystem of the data mounts: "tmpfs" (a host tmpfs), or "fat" (a FAT32 image file, mkfs.vfat, mounted by
    # fusefat inside the device's mount namespace at every boot: no symlinks, no chmod, no owners, case-insensitive).
    data_fs: str = "tmpfs"

    @property
    def uname_machine(self) -> str:
        return {"amd64": "x86_64", "armhf": "armv7l"}[self.arch]


COMMON_DIRS = (
    "bin",
    "sbin",
    "usr/bin",
    "usr/sbin",
    "lib",
    "etc",
    "etc/init.d",
    "root",
    "tmp",
    "proc",
    "sys",
    "dev",
    "run",
    "var",
    "var/lib",
    "var/log",
    "mnt",
)

RC5_DIRS = ("etc/rc5.d",)

# Kept short: busybox login reads these; a root shell lands in /root with a sane PATH.
BASE_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": "root:x:0:\n",
    # The root password field is filled per device (empty by default, as on a Kobo in developer mode).
    "etc/shadow": "root::19000:0:99999:7:::\n",
    "etc/profile": "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nexport HOME=/root\n",
    "etc/hosts": "127.0.0.1 localhost\n",
    "etc/fstab": "# fleetlab: mounts are made by the lab before init starts\n",
}

TELNET_INITTAB = "::respawn:/usr/sbin/telnetd -F -p 23 -l /bin/login\n"

RC5_RCS = """#!/bin/sh
# fleetlab sysvinit boot: runlevel 5, every /etc/rc5.d/S* script with "start", in name order.
for script in /etc/rc5.d/S*; do
    [ -x "$script" ] || continue
    echo "rcS: $script start"
    "$script" start
done
"""

KOBO_RCS = """#!/bin/sh
# fleetlab kobo boot: nothing here; the lab fires the udev `add` event for loop0, like the real boot does.
echo "rcS: kobo userland up"
"""


# busybox init runs every sysinit entry to its end before the wait entries: the marker tells the lab that rcS (and so
# every rc5.d script) has finished. It lives in the volatile /run, so each boot makes it anew.
BOOTED_MARKER = "/run/fleetlab.booted"


def _inittab(telnet: bool) -> str:
    text = f"::sysinit:/etc/init.d/rcS\n::wait:/bin/touch {BOOTED_MARKER}\n"
    return text + (TELNET_INITTAB if telnet else "")


PROFILES: dict[str, Profile] = {
    "sysvinit": Profile(
        name="sysvinit",
        arch="amd64",
        packages=("busybox-static", "libc6"),
        dirs=(*COMMON_DIRS, *RC5_DIRS, "data"),
        files={**BASE_FILES, "etc/inittab": _inittab(True), "etc/init.d/rcS": RC5_RCS},
        root_size="256m",
        data_mounts=(),
        boot="rc5",
        telnet=True,
        adb=False,
    ),
    "kobo": Profile(
        name="kobo",
        arch="armhf",
        packages=("busybox-static", "libc6"),
        dirs=(*COMMON_DIRS, "etc/udev", "etc/udev/rules.d", "usr/local", "mnt/onboard"),
        files={**BASE_FILES, "etc/inittab": _inittab(True), "etc/init.d/rcS": KOBO_RCS},
        # A Kobo's / has a few MB free; binaries go to /mnt/onboard (the FAT user partition on the real thing).
        root_size="16m",
        data_mounts=(("/mnt/onboard", "512m"),),
        data_fs="fat",  # the real /mnt/onboard is the FAT32 user partition a PC sees over USB
        boot="udev",
        telnet=True,
        adb=False,
    ),
    "quecopen": Profile(
        name="quecopen",
        arch="armhf",
        packages=("busybox-static", "libc6"),
        dirs=(*COMMON_DIRS, *RC5_DIRS, "usrdata", "data", "cache"),
        files={**BASE_FILES, "etc/inittab": _inittab(False), "etc/init.d/rcS": RC5_RCS},
        root_size="32m",
        data_mounts=(("/usrdata", "256m"),),
        boot="rc5",
        telnet=False,
        adb=True,
        hostname="mdm9607-perf",
        tun_node=False,  # the kernel has tun (see /proc/misc) but no device node until someone creates it
    ),
}

ALL_PROFILES = (*PROFILES, "systemd")
DATA_FILESYSTEMS = ("tmpfs", "fat")

# `fleetlab up --motd`: what a vendor shell greets with, and a coloured prompt (ANSI escapes, user@host:cwd#).
MOTD = "\n  BusyBox embedded device\n  Unauthorised access prohibited. All activity is logged.\n\n"
COLOUR_PS1 = "export PS1='\\[\\033[1;32m\\]\\u@\\h\\[\\033[0m\\]:\\[\\033[1;34m\\]\\w\\[\\033[0m\\]\\$ '\n"


def get(name: str, arch: str | None = None) -> Profile:
    """The profile; with arch, the same device shape on another userland (e.g. a kobo-shaped box in amd64: same
    layout, boot hooks, doors and sizes, the amd64 busybox and glibc run natively instead of under qemu-user)."""
    try:
        profile = PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown profile {name!r}: choose one of {', '.join(ALL_PROFILES)}") from None
    if arch is None or arch == profile.arch:
        return profile
    if arch not in ARCHES:
        raise KeyError(f"unknown userland architecture {arch!r}: choose one of {', '.join(ARCHES)}")
    return dataclasses.replace(profile, arch=arch)
