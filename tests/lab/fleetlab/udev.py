"""A small udev for the Kobo profile: strict rule parser, event matching, and RUN execution inside the device.

What it simulates: the keys the Kobo hooks use (KERNEL, ACTION, SUBSYSTEM with == / != and glob patterns, RUN with
+= / = / :=), udev's quoting and line continuation, and the Kobo behaviour that matters to provisioning: once a RUN
program returns, its process group is killed, so only children that escaped with setsid survive.
What it refuses: everything else. A syntax error or a key the lab does not simulate raises UdevRuleError naming the
file and line, so a bad rule fails the test instead of being skipped in silence (real udev only logs it).
Debian 12's udev (systemd 252) has no `udevadm verify` (introduced March 2023, systemd 254): no second opinion here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

MATCH_KEYS = {"ACTION", "KERNEL", "SUBSYSTEM"}
# Real udev keys this simulator does not implement: a rule using one is refused rather than half-applied.
OTHER_UDEV_KEYS = {
    "ATTR",
    "ATTRS",
    "CONST",
    "DEVPATH",
    "DRIVER",
    "DRIVERS",
    "ENV",
    "GOTO",
    "GROUP",
    "IMPORT",
    "KERNELS",
    "LABEL",
    "MODE",
    "NAME",
    "OPTIONS",
    "OWNER",
    "PROGRAM",
    "RESULT",
    "SECLABEL",
    "SUBSYSTEMS",
    "SYMLINK",
    "SYSCTL",
    "TAG",
    "TAGS",
    "TEST",
    "WAIT_FOR",
}
TOKEN_RE = re.compile(
    r'(?P<key>[A-Z_]+)(?:\{(?P<attr>[^}]*)\})?\s*(?P<op>==|!=|\+=|-=|:=|=)\s*"(?P<value>(?:[^"\\]|\\.)*)"'
)
SEPARATOR_RE = re.compile(r"[\s,]*")
UDEV_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class UdevRuleError(ValueError):
    """A rules file the lab refuses (syntax error or unsupported key), with file and line."""


@dataclasses.dataclass
class Rule:
    source: str  # "file:line" for messages
    matches: list[tuple[str, str, str]]  # (key, op, pattern)
    run: list[tuple[str, str]]  # (op, command)


@dataclasses.dataclass
class Event:
    action: str  # "add" / "remove"
    kernel: str  # "loop0", "wlan0"
    subsystem: str  # "block", "net"
    devpath: str
    seqnum: int = 1

    def env(self) -> dict[str, str]:
        env = {
            "ACTION": self.action,
            "DEVPATH": self.devpath,
            "SUBSYSTEM": self.subsystem,
            "SEQNUM": str(self.seqnum),
            "PATH": UDEV_PATH,
        }
        if self.subsystem == "block":
            env["DEVNAME"] = f"/dev/{self.kernel}"
        if self.subsystem == "net":
            env["INTERFACE"] = self.kernel
        return env


def loop_event(action: str = "add", seqnum: int = 1) -> Event:
    return Event(action, "loop0", "block", "/devices/virtual/block/loop0", seqnum)


def wlan_event(action: str, seqnum: int = 1) -> Event:
    return Event(action, "wlan0", "net", "/devices/platform/sdio_wifi_pwr/mmc1/net/wlan0", seqnum)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Join backslash-continued lines; keep the number of the first physical line."""
    lines: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        if raw.endswith("\\"):
            pending += raw[:-1]
            continue
        lines.append((start, pending + raw))
        pending = ""
    if pending:
        raise UdevRuleError(f"line {start}: file ends inside a continued line")
    return lines


def parse_rules(text: str, filename: str = "<rules>") -> list[Rule]:
    rules = []
    for number, line in _logical_lines(text):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{filename}:{number}"
        rules.append(_parse_line(stripped, where))
    return rules


def _parse_line(line: str, where: str) -> Rule:
    rule = Rule(source=where, matches=[], run=[])
    pos = 0
    while pos < len(line):
        match = TOKEN_RE.match(line, pos)
        if match is None:
            raise UdevRuleError(f"{where}: invalid rule syntax near {line[pos : pos + 30]!r}")
        key, attr, op, value = match["key"], match["attr"], match["op"], match["value"]
        if key in MATCH_KEYS:
            if attr is not None:
                raise UdevRuleError(f"{where}: {key} takes no {{attribute}}")
            if op not in ("==", "!="):
                raise UdevRuleError(f"{where}: {key} is a match key: use == or !=, not {op}")
            rule.matches.append((key, op, value))
        elif key == "RUN":
            if attr not in (None, "program"):
                raise UdevRuleError(f"{where}: RUN{{{attr}}} is not simulated by the lab (only RUN and RUN{{program}})")
            if op not in ("=", "+=", ":="):
                raise UdevRuleError(f"{where}: RUN is an assignment: use =, += or :=, not {op}")
            if not value.strip():
                raise UdevRuleError(f"{where}: empty RUN command")
            rule.run.append((op, value))
        elif key in OTHER_UDEV_KEYS:
            raise UdevRuleError(f"{where}: key {key} is valid udev but not simulated by the lab")
        else:
            raise UdevRuleError(f"{where}: unknown key {key!r}")
        pos = match.end()
        sep = SEPARATOR_RE.match(line, pos)
        assert sep is not None
        # udev separates keys with commas and/or whitespace; two keys glued together are an error.
        if sep.end() == pos and pos < len(line):
            raise UdevRuleError(f"{where}: missing ',' between keys near {line[pos : pos + 30]!r}")
        pos = sep.end()
    return rule


def load_rules(rules_dir: Path) -> list[Rule]:
    """All *.rules of a directory in lexical order of file names, as udev reads them."""
    rules: list[Rule] = []
    if not rules_dir.is_dir():
        return rules
    for path in sorted(rules_dir.glob("*.rules")):
        try:
            text = path.read_text()
        except UnicodeDecodeError as err:
            raise UdevRuleError(f"{path.name}: not text: {err}") from None
        rules.extend(parse_rules(text, path.name))
    return rules


def _glob(pattern: str, value: str) -> bool:
    # udev patterns: shell globs, plus "|" separating alternatives.
    return any(fnmatch.fnmatchcase(value, alt) for alt in pattern.split("|"))


def matches(rule: Rule, event: Event) -> bool:
    values = {"ACTION": event.action, "KERNEL": event.kernel, "SUBSYSTEM": event.subsystem}
    for key, op, pattern in rule.matches:
        hit = _glob(pattern, values[key])
        if hit != (op == "=="):
            return False
    return True


def substitute(command: str, event: Event, where: str) -> str:
    values = {"k": event.kernel, "p": event.devpath, "n": re.sub(r"^\D*", "", event.kernel)}
    long_names = {"kernel": "k", "devpath": "p", "number": "n"}

    def repl(m: re.Match[str]) -> str:
        token = m.group(0)
        if token in ("%%", "$$"):
            return token[0]
        name = token[1:]
        name = long_names.get(name, name)
        if name not in values:
            raise UdevRuleError(f"{where}: substitution {token} is not simulated by the lab")
        return values[name]

    return re.sub(r"%%|\$\$|%[a-zA-Z]|\$[a-z]+", repl, command)


def programs_for(rules: list[Rule], event: Event) -> list[str]:
    """The RUN list after applying every matching rule in order (= replaces, += appends, := replaces and locks)."""
    programs: list[str] = []
    locked = False
    for rule in rules:
        if not matches(rule, event):
            continue
        for op, command in rule.run:
            if locked:
                continue
            expanded = substitute(command, event, rule.source)
            if op == "+=":
                programs.append(expanded)
            else:
                programs[:] = [expanded]
                locked = op == ":="
    return programs


@dataclasses.dataclass
class RunResult:
    command: str
    returncode: int | None  # None: timed out (udev killed it)


def run_program(
    prefix: list[str], command: str, event: Event, log: Path, *, grace: float = 0.5, timeout: float = 30.0
) -> RunResult:
    """Run one RUN program through `prefix` (nsenter into the device) in its own process group, wait for it, then
    kill the group after `grace` seconds, like the Kobo's udevd: a child left behind without setsid dies."""
    argv = shlex.split(command)
    # Output goes to a file, not a pipe: a backgrounded child keeping a pipe open would make us wait for it.
    with open(log, "ab") as out:
        out.write(f"udev: {event.action} {event.kernel}: RUN {command}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            [*prefix, *argv], stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=event.env(), process_group=0
        )
    try:
        returncode: int | None = proc.wait(timeout=timeout)
        time.sleep(grace)
    except subprocess.TimeoutExpired:
        returncode = None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    if returncode is None:
        proc.wait()
    return RunResult(command, returncode)
