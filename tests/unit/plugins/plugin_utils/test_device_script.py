"""Sectioned script output and sh quoting."""

from __future__ import annotations

import subprocess

import pytest
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_script import parse_sections, sh_quote


def test_sections_with_crlf_and_noise_before_the_first_mark() -> None:
    text = "motd line\r\n@@a\r\none\r\ntwo\r\n@@b\r\n\r\n@@c\r\nx @@ y\r\n"
    assert parse_sections(text) == {"a": "one\ntwo", "b": "", "c": "x @@ y"}


@pytest.mark.parametrize("value", ["plain", "with space", "it's", "$(rm -rf /)", "`x`", 'a"b', "new\nline", ""])
def test_sh_quote_round_trips_through_a_real_shell(value: str) -> None:
    out = subprocess.run(["/bin/sh", "-c", f"printf %s {sh_quote(value)}"], capture_output=True, check=True).stdout
    assert out.decode() == value
