"""The lab's udev rule parser and matcher (pure Python: no root needed)."""

from __future__ import annotations

import pytest

from fleetlab.udev import UdevRuleError, loop_event, parse_rules, programs_for, wlan_event

BLOG_RULES = """
KERNEL=="loop0", RUN+="/usr/local/dstaley/boot.sh"
KERNEL=="wlan*", ACTION=="add", RUN+="/usr/local/dstaley/on-wlan-up.sh"
KERNEL=="wlan*", ACTION=="remove", RUN+="/usr/local/dstaley/on-wlan-down.sh"
"""


def test_blog_rules_match_their_events() -> None:
    rules = parse_rules(BLOG_RULES, "98-tailscale.rules")
    assert programs_for(rules, loop_event("add")) == ["/usr/local/dstaley/boot.sh"]
    assert programs_for(rules, wlan_event("add")) == ["/usr/local/dstaley/on-wlan-up.sh"]
    assert programs_for(rules, wlan_event("remove")) == ["/usr/local/dstaley/on-wlan-down.sh"]


def test_not_equal_alternatives_assignment_and_substitution() -> None:
    rules = parse_rules(
        'SUBSYSTEM=="net", KERNEL=="eth*|wlan?", ACTION!="remove", RUN+="/bin/a %k"\n'
        'SUBSYSTEM=="block", RUN="/bin/b $kernel"\n'
        'KERNEL=="loop0", RUN+="/bin/c"\n'
    )
    assert programs_for(rules, wlan_event("add")) == ["/bin/a wlan0"]
    assert programs_for(rules, wlan_event("remove")) == []
    # RUN= discards what earlier rules added, later += appends.
    assert programs_for(rules, loop_event("add")) == ["/bin/b loop0", "/bin/c"]


def test_comments_blank_lines_and_continuations() -> None:
    rules = parse_rules('# comment\n\nKERNEL=="loop0", \\\n  RUN+="/bin/x"\n')
    assert programs_for(rules, loop_event("add")) == ["/bin/x"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('KERNEL="loop0", RUN+="/bin/x"', "KERNEL is a match key"),
        ('KERNEL=="loop0", RUN+="/bin/x', "invalid rule syntax"),
        ('KERNEL=="loop0" RUN+="/bin/x" junk', "invalid rule syntax"),
        ('KERNEL=="loop0", RUN=="/bin/x"', "RUN is an assignment"),
        ('KERNEL=="loop0", RUNN+="/bin/x"', "unknown key 'RUNN'"),
        ('ATTR{idVendor}=="1234", RUN+="/bin/x"', "valid udev but not simulated"),
        ('KERNEL=="loop0", RUN+=""', "empty RUN command"),
        ('KERNEL=="loop0", RUN+="/bin/x"RUN+="/bin/y"', "missing ','"),
        ('KERNEL=="loop0", \\', "continued line"),
    ],
)
def test_malformed_rules_raise(text: str, message: str) -> None:
    with pytest.raises(UdevRuleError, match=message):
        parse_rules(text, "99-bad.rules")


def test_error_names_file_and_line() -> None:
    with pytest.raises(UdevRuleError, match=r"^99-bad.rules:3: "):
        parse_rules('KERNEL=="a", RUN+="/b"\n\nKERNEL=="a" RUN+\n', "99-bad.rules")
