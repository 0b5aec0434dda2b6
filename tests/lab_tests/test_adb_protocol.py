"""ADB message and sync packet encoding of the lab adbd (fleetlab.adb_protocol)."""

from __future__ import annotations

import struct

import pytest

from fleetlab import adb_protocol as ap


def test_encode_cnxn_header_fields() -> None:
    banner = b"device::ro.product.name=mdm9607;features="
    raw = ap.Message(ap.A_CNXN, ap.A_VERSION_MIN, ap.MAX_PAYLOAD_V1, banner).encode()
    command, arg0, arg1, length, check, magic = struct.unpack("<6I", raw[:24])
    assert raw[:4] == b"CNXN"  # the command is the ASCII name read as a little-endian u32
    assert (arg0, arg1, length) == (0x01000000, 4096, len(banner))
    assert check == sum(banner)
    assert magic == command ^ 0xFFFFFFFF
    assert raw[24:] == banner


def test_encode_without_checksum_sends_zero() -> None:
    raw = ap.Message(ap.A_WRTE, 1, 2, b"abc").encode(with_checksum=False)
    assert struct.unpack("<6I", raw[:24])[4] == 0


def test_checksum_wraps_at_32_bits() -> None:
    assert ap.checksum(b"\xff" * 4) == 1020
    assert ap.checksum(b"") == 0


@pytest.mark.parametrize("command", [ap.A_CNXN, ap.A_OPEN, ap.A_OKAY, ap.A_WRTE, ap.A_CLSE, ap.A_AUTH])
def test_round_trip(command: int) -> None:
    msg = ap.Message(command, 7, 9, bytes(range(256)) * 4)
    assert ap.decode(msg.encode()) == msg


def test_bad_magic_is_rejected() -> None:
    raw = bytearray(ap.Message(ap.A_OKAY, 1, 2).encode())
    raw[20] ^= 0x01
    with pytest.raises(ap.ProtocolError, match="bad magic"):
        ap.decode(bytes(raw))


def test_data_longer_than_max_payload_is_rejected() -> None:
    raw = ap.Message(ap.A_OPEN, 1, 0, b"shell:" + b"x" * 4096).encode()
    with pytest.raises(ap.ProtocolError, match="max payload 4096"):
        ap.decode(raw, max_data=ap.MAX_PAYLOAD_V1)


def test_old_version_checks_the_checksum() -> None:
    raw = bytearray(ap.Message(ap.A_WRTE, 1, 2, b"hello").encode())
    raw[-1] ^= 0x20  # corrupt the data, keep the header
    with pytest.raises(ap.ProtocolError, match="checksum"):
        ap.decode(bytes(raw), version=ap.A_VERSION_MIN)


def test_newer_version_accepts_a_zero_checksum_but_not_a_wrong_one() -> None:
    zero = ap.Message(ap.A_WRTE, 1, 2, b"hello").encode(with_checksum=False)
    assert ap.decode(zero, version=ap.A_VERSION_SKIP_CHECKSUM).data == b"hello"
    with pytest.raises(ap.ProtocolError, match="checksum"):
        ap.decode(zero, version=ap.A_VERSION_MIN)


def test_truncated_data_is_rejected() -> None:
    raw = ap.Message(ap.A_WRTE, 1, 2, b"hello").encode()[:-1]
    with pytest.raises(ap.ProtocolError, match="header says 5"):
        ap.decode(raw)


def test_parse_client_banner() -> None:
    kind, props = ap.parse_banner(b"host::features=shell_v2,cmd,stat_v2\0")
    assert kind == "host"
    assert props["features"].split(",") == ["shell_v2", "cmd", "stat_v2"]


def test_device_banner_has_no_features() -> None:
    banner = ap.device_banner({"ro.product.name": "mdm9607", "features": ""})
    assert banner == b"device::ro.product.name=mdm9607;features="
    kind, props = ap.parse_banner(banner)
    assert (kind, props) == ("device", {"ro.product.name": "mdm9607", "features": ""})


def test_sync_packets() -> None:
    assert ap.sync_packet(b"DATA", b"abc") == b"DATA\x03\x00\x00\x00abc"
    assert ap.sync_word(b"DONE", 0x01020304) == b"DONE\x04\x03\x02\x01"
    assert ap.sync_stat(0o100644, 5, 7) == b"STAT" + struct.pack("<3I", 0o100644, 5, 7)
    dent = ap.sync_dent(b"name", 0o40755, 0, 1)
    assert dent == b"DENT" + struct.pack("<4I", 0o40755, 0, 1, 4) + b"name"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"/tmp/x,33188", (b"/tmp/x", 0o100644)),
        (b"/tmp/a,b,33261", (b"/tmp/a,b", 0o100755)),  # a comma in the path: the mode is after the last one
        (b"/tmp/plain", (b"/tmp/plain", 0o100644)),  # very old clients sent no mode
    ],
)
def test_parse_send_target(payload: bytes, expected: tuple[bytes, int]) -> None:
    assert ap.parse_send_target(payload) == expected
