"""Release architecture from uname and ELF headers."""

from __future__ import annotations

import pytest
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._arch import (
    RELEASE_ARCHES,
    ElfIdent,
    parse_od_hex,
    tailscale_arch,
)

# /bin/sh headers as `od -An -tx1 -N20` prints them on real devices.
ARMHF_SH = " 7f 45 4c 46 01 01 01 00 00 00 00 00 00 00 00 00\n 02 00 28 00"
MIPS_BE_SH = " 7f 45 4c 46 01 02 01 00 00 00 00 00 00 00 00 00\n 00 02 00 08"
MIPSEL_SH = " 7f 45 4c 46 01 01 01 00 00 00 00 00 00 00 00 00\n 02 00 08 00"
MIPS64EL_SH = " 7f 45 4c 46 02 01 01 00 00 00 00 00 00 00 00 00\n 02 00 08 00"
MIPS64_SH = " 7f 45 4c 46 02 02 01 00 00 00 00 00 00 00 00 00\n 00 02 00 08"


def elf(od_text: str) -> ElfIdent:
    return ElfIdent(parse_od_hex(od_text))


@pytest.mark.parametrize(
    ("kernel", "machine", "processor", "header", "expected"),
    [
        ("Linux", "x86_64", "", None, "amd64"),
        ("Linux", "i686", "", None, "386"),
        ("Linux", "i586", "", None, "386"),
        ("Linux", "aarch64", "", None, "arm64"),
        ("Linux", "armv7l", "", ARMHF_SH, "arm"),  # Kobo, QuecOpen mdm9607
        ("Linux", "armv6l", "", None, "arm"),  # Raspberry Pi 1 / Zero
        ("Linux", "armv5tejl", "", None, "arm"),
        ("Linux", "armv8l", "", None, "arm"),  # 32-bit userland on a 64-bit kernel
        ("Linux", "mips", "", MIPS_BE_SH, "mips"),
        ("Linux", "mips", "", MIPSEL_SH, "mipsle"),  # uname says mips on little-endian routers too
        ("Linux", "mips64", "", MIPS64EL_SH, "mips64le"),
        ("Linux", "mips64", "", MIPS64_SH, "mips64"),
        ("Linux", "riscv64", "", None, "riscv64"),
        ("NetBSD", "amd64", "x86_64", None, "amd64"),
        ("NetBSD", "evbarm", "aarch64", None, "arm64"),
        ("NetBSD", "evbarm", "earmv7hf", None, "arm"),
    ],
)
def test_arch_table(kernel: str, machine: str, processor: str, header: str | None, expected: str) -> None:
    ident = elf(header) if header else None
    assert tailscale_arch(kernel, machine, processor, ident) == expected
    assert expected in RELEASE_ARCHES


def test_mips_without_elf_header_is_refused() -> None:
    with pytest.raises(ValueError, match="MIPS byte order needs an ELF header"):
        tailscale_arch("Linux", "mips", "", None)


def test_unknown_machine_is_refused_with_its_name() -> None:
    with pytest.raises(ValueError, match="no Tailscale release architecture for uname -m 'sparc64'"):
        tailscale_arch("Linux", "sparc64")


def test_elf_ident_rejects_non_elf() -> None:
    with pytest.raises(ValueError, match="not an ELF header"):
        ElfIdent(b"#!/bin/sh\n")
    ident = elf(MIPS_BE_SH)
    assert (ident.bits, ident.little_endian) == (32, False)
