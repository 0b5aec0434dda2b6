# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to the fleetmesh.tailscale collection: not a public API, may change without notice.

Map what a device says about its CPU to the architecture names of Tailscale's static releases
(``tailscale_<version>_<arch>.tgz``): 386 amd64 arm arm64 mips mipsle mips64 mips64le riscv64 geode.
"""

from __future__ import annotations

RELEASE_ARCHES = ("386", "amd64", "arm", "arm64", "mips", "mipsle", "mips64", "mips64le", "riscv64", "geode")

ELF_MAGIC = bytes((0x7F, 0x45, 0x4C, 0x46))
EI_CLASS, EI_DATA = 4, 5  # offsets in the ELF identification
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2


class ElfIdent:
    """The bits of an ELF header that uname cannot tell: word size and byte order."""

    def __init__(self, header: bytes) -> None:
        if len(header) < 6 or header[:4] != ELF_MAGIC:
            raise ValueError("not an ELF header")
        self.bits = {ELFCLASS32: 32, ELFCLASS64: 64}.get(header[EI_CLASS])
        self.little_endian = {ELFDATA2LSB: True, ELFDATA2MSB: False}.get(header[EI_DATA])


def parse_od_hex(text: str) -> bytes:
    """Bytes from `od -An -tx1` output (hex pairs separated by blanks, possibly over several lines)."""
    return bytes(int(tok, 16) for tok in text.split() if len(tok) == 2)


def tailscale_arch(kernel: str, machine: str, processor: str = "", elf: ElfIdent | None = None) -> str:
    """The release arch for a device, or raise ValueError saying why it cannot be told.

    ``machine`` is ``uname -m``, ``processor`` is ``uname -p`` (NetBSD says ``evbarm`` in -m and the CPU in -p),
    ``elf`` is the identification of a native binary on the device (MIPS byte order is not in uname).
    """
    m = machine.strip().lower()
    p = processor.strip().lower()
    if kernel.strip().lower() == "netbsd":
        m = {"evbarm": p or m, "evbmips": p or m}.get(m, m)
    if m in ("x86_64", "amd64", "x64"):
        return "amd64"
    if m in ("i386", "i486", "i586", "i686", "x86"):
        return "386"
    if m in ("aarch64", "arm64", "aarch64_be"):
        return "arm64"
    # armv8l: 32-bit userland on a 64-bit kernel; upstream's "arm" build is ARMv5 and runs on v6/v7/v8l too.
    if m == "arm" or m.startswith(("armv5", "armv6", "armv7", "armv8l", "earm")):
        return "arm"
    if m in ("mips", "mipsel", "mipsle", "mips64", "mips64el", "mips64le"):
        if elf is None or elf.little_endian is None:
            raise ValueError(f"uname -m says {machine!r}: MIPS byte order needs an ELF header from the device")
        wide = m.startswith("mips64") or elf.bits == 64
        base = "mips64" if wide else "mips"
        return f"{base}le" if elf.little_endian else base
    if m == "riscv64":
        return "riscv64"
    raise ValueError(f"no Tailscale release architecture for uname -m {machine!r} (kernel {kernel!r})")
