"""The telnet wire protocol: option negotiation answered once, commands stripped, IAC escaping."""

from __future__ import annotations

from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _telnet_client as tc


def test_telnet_parser_answers_each_option_once_and_strips_commands() -> None:
    parser = tc.TelnetParser()
    stream = bytes([255, 253, 1, 255, 253, 31, 255, 251, 1, 255, 251, 3, 255, 251, 24]) + b"login: "
    data, replies = parser.feed(stream)
    assert data == b"login: "
    # DO ECHO/NAWS refused (WONT), WILL ECHO/SGA accepted (DO), WILL TTYPE refused (DONT).
    assert replies == bytes([255, 252, 1, 255, 252, 31, 255, 253, 1, 255, 253, 3, 255, 254, 24])
    assert parser.feed(bytes([255, 251, 1])) == (b"", b"")  # asked again: no reply loop


def test_telnet_parser_handles_split_sequences_escaped_iac_and_subnegotiation() -> None:
    parser = tc.TelnetParser()
    assert parser.feed(b"ab\xff") == (b"ab", b"")
    assert parser.feed(b"\xffcd\xff\xfa\x18\x01") == (b"\xffcd", b"")  # IAC IAC is a data byte 0xff
    assert parser.feed(b"\xff\xf0ef\xff\xf1gh") == (b"efgh", b"")  # end of SB, then IAC NOP
    assert tc.escape_iac(b"a\xffb") == b"a\xff\xffb"
