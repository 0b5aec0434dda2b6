"""docs/reliability.md's fault table has exactly one row per case of the fault suite, and each row's case is one.

The table is kept by hand from the suite's results (each run writes them to tests/output/faults-outcomes.jsonl);
this test keeps the two from drifting apart: a case without a row, a row without a case, or a row whose "xfail"
column disagrees with the case's marker fails here.
"""

from __future__ import annotations

import re

from test_faults import FAULTS
from test_firmware import CASES

from repo_checkout import REPO

DOC = REPO / "docs" / "reliability.md"
ROW = re.compile(r"^\| `(?P<id>[a-z0-9-]+)` \|(?P<rest>.*)\|\s*$")


def rows() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in DOC.read_text().splitlines():
        match = ROW.match(line)
        if match:
            assert match["id"] not in found, f"two rows for {match['id']}"
            found[match["id"]] = match["rest"]
    return found


def test_every_case_has_a_row_and_every_row_a_case() -> None:
    expected = {f.id for f in FAULTS} | {f"firmware-{profile}" for profile in CASES}
    assert set(rows()) == expected


def test_rows_say_which_cases_show_a_bug() -> None:
    table = rows()
    for fault in FAULTS:
        says_bug = "**bug**" in table[fault.id]
        assert says_bug == bool(fault.xfail), f"{fault.id}: the row and the case's xfail marker disagree"
