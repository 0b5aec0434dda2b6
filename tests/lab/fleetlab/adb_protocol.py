"""ADB wire protocol pieces for the lab adbd: transport messages and sync-service packets.

Transport message (all little-endian u32): command, arg0, arg1, data_length, data_check, magic (= command ^ 0xffffffff),
then data_length bytes. Protocol version 0x01000000 (old adbd) carries a data checksum (the byte sum of the data);
0x01000001 and later may send 0 there. See AOSP system/core/adb/protocol.txt and SYNC.TXT.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

A_SYNC = 0x434E5953
A_CNXN = 0x4E584E43
A_AUTH = 0x48545541
A_OPEN = 0x4E45504F
A_OKAY = 0x59414B4F
A_CLSE = 0x45534C43
A_WRTE = 0x45545257
A_STLS = 0x534C5453

COMMAND_NAMES = {
    A_SYNC: "SYNC",
    A_CNXN: "CNXN",
    A_AUTH: "AUTH",
    A_OPEN: "OPEN",
    A_OKAY: "OKAY",
    A_CLSE: "CLSE",
    A_WRTE: "WRTE",
    A_STLS: "STLS",
}

A_VERSION_MIN = 0x01000000  # old adbd: checksummed data
A_VERSION_SKIP_CHECKSUM = 0x01000001
MAX_PAYLOAD_V1 = 4096  # old adbd's payload limit (MAX_PAYLOAD before Android N)

HEADER = struct.Struct("<6I")
HEADER_SIZE = HEADER.size  # 24


class ProtocolError(Exception):
    """The peer sent something that is not an ADB message (old adbd drops the connection on these)."""


def checksum(data: bytes) -> int:
    """The v1 data checksum: the unsigned byte sum, modulo 2**32."""
    return sum(data) & 0xFFFFFFFF


@dataclass(frozen=True)
class Message:
    command: int
    arg0: int
    arg1: int
    data: bytes = b""

    @property
    def name(self) -> str:
        return COMMAND_NAMES.get(self.command, f"0x{self.command:08x}")

    def encode(self, with_checksum: bool = True) -> bytes:
        check = checksum(self.data) if with_checksum else 0
        header = HEADER.pack(self.command, self.arg0, self.arg1, len(self.data), check, self.command ^ 0xFFFFFFFF)
        return header + self.data


@dataclass(frozen=True)
class Header:
    command: int
    arg0: int
    arg1: int
    data_length: int
    data_check: int


def decode_header(raw: bytes, max_data: int) -> Header:
    """Parse and validate a 24-byte header; a data length over max_data is an error, as in old adbd's check_header."""
    if len(raw) != HEADER_SIZE:
        raise ProtocolError(f"short header ({len(raw)} bytes)")
    command, arg0, arg1, length, check, magic = HEADER.unpack(raw)
    if magic != command ^ 0xFFFFFFFF:
        raise ProtocolError(f"bad magic 0x{magic:08x} for command 0x{command:08x}")
    if command not in COMMAND_NAMES:
        raise ProtocolError(f"unknown command 0x{command:08x}")
    if length > max_data:
        raise ProtocolError(f"{COMMAND_NAMES[command]} data length {length} > max payload {max_data}")
    return Header(command, arg0, arg1, length, check)


def verify_data(header: Header, data: bytes, version: int) -> None:
    """Old-version peers must send the right checksum; newer ones may send 0 (then it is not checked)."""
    if version >= A_VERSION_SKIP_CHECKSUM and header.data_check == 0:
        return
    if header.data_check != checksum(data):
        raise ProtocolError(f"bad data checksum 0x{header.data_check:08x} (want 0x{checksum(data):08x})")


def decode(raw: bytes, max_data: int = MAX_PAYLOAD_V1, version: int = A_VERSION_MIN) -> Message:
    """Decode one complete message (header plus data), checking magic, length and checksum."""
    header = decode_header(raw[:HEADER_SIZE], max_data)
    data = raw[HEADER_SIZE:]
    if len(data) != header.data_length:
        raise ProtocolError(f"data is {len(data)} bytes, header says {header.data_length}")
    verify_data(header, data, version)
    return Message(header.command, header.arg0, header.arg1, data)


def parse_banner(data: bytes) -> tuple[str, dict[str, str]]:
    """'host::features=a,b' -> ('host', {'features': 'a,b'}); properties are ';'-separated (or -terminated)."""
    text = data.rstrip(b"\0").decode("utf-8", "replace")
    kind, rest = text.split(":", 1) if ":" in text else (text, "")
    props = rest.split(":", 1)[1] if ":" in rest else ""
    result: dict[str, str] = {}
    for prop in props.split(";"):
        key, sep, value = prop.partition("=")
        if prop and sep:
            result[key] = value
    return kind, result


def device_banner(props: dict[str, str]) -> bytes:
    return ("device::" + ";".join(f"{k}={v}" for k, v in props.items())).encode()


# ----------------------------------------------------------------------------------------------------- sync service

SYNC_DATA_MAX = 64 * 1024  # the largest DATA chunk either side may send
SYNC_ID = struct.Struct("<4sI")  # id + one u32 (length, mode or mtime)
SYNC_STAT = struct.Struct("<4sIII")  # "STAT" mode size mtime
SYNC_DENT = struct.Struct("<4sIIII")  # "DENT" mode size mtime namelen, then the name


def sync_packet(ident: bytes, payload: bytes = b"") -> bytes:
    """An id plus a length-prefixed payload: DATA, FAIL, and the SEND/RECV/STAT/LIST requests."""
    return SYNC_ID.pack(ident, len(payload)) + payload


def sync_word(ident: bytes, value: int) -> bytes:
    """An id plus one u32: OKAY 0, DONE mtime, QUIT 0."""
    return SYNC_ID.pack(ident, value & 0xFFFFFFFF)


def sync_stat(mode: int, size: int, mtime: int) -> bytes:
    return SYNC_STAT.pack(b"STAT", mode & 0xFFFFFFFF, size & 0xFFFFFFFF, mtime & 0xFFFFFFFF)


def sync_dent(name: bytes, mode: int, size: int, mtime: int) -> bytes:
    return SYNC_DENT.pack(b"DENT", mode & 0xFFFFFFFF, size & 0xFFFFFFFF, mtime & 0xFFFFFFFF, len(name)) + name


def parse_send_target(payload: bytes) -> tuple[bytes, int]:
    """SEND carries 'path,mode' (mode in decimal); old clients sent a bare path, meaning a 0644 file."""
    path, sep, mode = payload.rpartition(b",")
    if not sep or not mode.isdigit():
        return payload, 0o100644
    return path, int(mode)
