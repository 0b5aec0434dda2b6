# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to the fleetmesh.tailscale collection: not a public API, may change without notice.

The fleet report's pure logic (playbooks/report.yml, the fleet_report action, docs/report.md): per-host rows from
what node_status read on each device, the control servers' node lists and the fleet_record callback's records;
the drift rules; the summary; and the three renderings (self-contained HTML, JSON, terminal table). No I/O here
except the record files and the atomic write helper.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
import re
import tempfile
import typing as t

from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._control_api import find_node
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._routes import EXIT_ROUTES

RECORD_DIR_ENV = "FLEETMESH_RECORD_DIR"
DEFAULT_RECORD_DIR = "~/.cache/fleetmesh/records"
JSON_VERSION = 1
DOORS = {"telnet": "telnet", "adb": "adb", "ssh": "ssh", "paramiko_ssh": "ssh", "local": "local"}


def record_name(host: str, check: bool = False) -> str:
    """The record's file name of a host: its name with anything but [A-Za-z0-9._-] as _, .check.json for --check."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(host)).lstrip(".") or "_"
    return f"{safe}.check.json" if check else f"{safe}.json"


def default_record_dir() -> str:
    return os.path.expanduser(os.environ.get(RECORD_DIR_ENV) or DEFAULT_RECORD_DIR)


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` through a temp file in the same dir and a rename: readers see old or new, whole.
    No fsync: the callback writes one record per host on every run, and a record lost to a power cut is rewritten
    by the next run."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_records(record_dir: str, host: str) -> dict[str, t.Any]:
    """{'run': the host's last real run record or None, 'check': its last --check record or None}."""
    found: dict[str, t.Any] = {"run": None, "check": None}
    for key, check in (("run", False), ("check", True)):
        path = os.path.join(record_dir, record_name(host, check))
        try:
            with open(path, encoding="utf-8") as handle:
                value = json.load(handle)
        except (OSError, ValueError):
            continue
        if isinstance(value, dict):
            found[key] = value
    return found


def door(connection: str | None) -> str:
    """telnet, adb, ssh or local from ansible_connection (fleetmesh.tailscale.telnet -> telnet); else as given."""
    name = str(connection or "ssh").rsplit(".", 1)[-1]
    return DOORS.get(name, name)


def control_label(spec: dict[str, t.Any] | None) -> str:
    """A control server's name in the report: its kind and URL (or tailnet); never a credential."""
    if not spec:
        return ""
    kind = str(spec.get("type") or "headscale")
    where = str(spec.get("url") or "") if kind == "headscale" else str(spec.get("tailnet") or "-")
    return f"{kind} {where}".strip()


def version_key(version: str) -> tuple[int, ...] | None:
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", str(version or "").strip())
    return tuple(int(p) for p in match.groups()) if match else None


def _time(value: t.Any) -> _dt.datetime | None:
    try:
        parsed = _dt.datetime.fromisoformat(str(value))
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=_dt.UTC)


def _routes(value: t.Any) -> list[str]:
    return sorted(str(v) for v in value) if isinstance(value, list) else []


def drift(row: dict[str, t.Any], records: dict[str, t.Any]) -> list[str]:
    """What differs from the declared state, one sentence each (docs/report.md, "Drift")."""
    found: list[str] = []
    if not row["read"]:
        return found
    pin, installed = row["pinned"], row["installed"]
    if version_key(pin) and installed != pin:
        found.append(f"installed {installed or 'nothing'}, pinned {pin}")
    if row["backend_state"] != "Running":
        found.append(f"backend state {row['backend_state']}")
    wanted = row["routes_wanted"]
    if wanted is not None:
        advertised = [r for r in row["routes_advertised"] if r not in EXIT_ROUTES]
        if sorted(advertised) != sorted(r for r in wanted if r not in EXIT_ROUTES):
            found.append(
                f"advertises {', '.join(advertised) or 'no routes'}, routing_routes {', '.join(wanted) or '[]'}"
            )
    mode = row["networking_wanted"]
    if mode in ("kernel", "userspace") and row["networking"] and row["networking"] != mode:
        found.append(f"networking {row['networking']}, networking_mode {mode}")
    check, run = records.get("check"), records.get("run")
    if check:
        check_time, run_time = _time(check.get("finished")), _time((run or {}).get("finished"))
        newer = check_time is not None and (run_time is None or check_time > run_time)
        changed = [str(name) for name in check.get("changed_tasks") or []]
        count = int((check.get("stats") or {}).get("changed") or 0) or len(changed)
        if newer and count:
            names = "; ".join(changed[:5]) + (f" (+{len(changed) - 5})" if len(changed) > 5 else "")
            found.append(f"--check of {check.get('playbook', '?')} at {check.get('finished')} would change: {names}")
    return found


def _last(record: dict[str, t.Any] | None) -> dict[str, t.Any] | None:
    if not record:
        return None
    stats = record.get("stats") or {}
    return {
        "playbook": record.get("playbook", ""),
        "finished": record.get("finished", ""),
        "result": record.get("result", ""),
        "changed": int(stats.get("changed") or 0),
        "failures": int(stats.get("failures") or 0),
        "unreachable": int(stats.get("unreachable") or 0),
        "rescued": int(stats.get("rescued") or 0),
        "changed_tasks": list(record.get("changed_tasks") or []),
        "last_failure": record.get("last_failure", ""),
    }


def build_row(
    host: dict[str, t.Any],
    servers: dict[str, dict[str, t.Any]],
    records: dict[str, t.Any],
) -> dict[str, t.Any]:
    """One device's row. ``host``: what report.yml gathered (see the fleet_report doc stub's O(hosts)); ``servers``:
    {label: {'nodes': [...], 'error': str}}; ``records``: read_records() of the host."""
    node = host.get("node") if isinstance(host.get("node"), dict) else None
    pin = host.get("pin") if isinstance(host.get("pin"), dict) else {}
    skipped = bool(host.get("skipped"))
    read = node is not None and not skipped
    if skipped:
        state = "NotApplicable"
    elif node is None:
        state = "Unreachable" if host.get("unreachable") else "Unread"
    else:
        state = str(node.get("backend_state") or "Unknown")
    node = node or {}
    label = str(host.get("control") or "")
    online: dict[str, t.Any] = {}
    approved: dict[str, list[str]] = {}
    node_names: dict[str, str] = {}
    if label and read:
        server = servers.get(label) or {"nodes": [], "error": "not listed"}
        if server.get("error"):
            online[label] = None
        else:
            # By node key only: the node of an earlier login (same hostname, maybe same address) never stands in.
            key = str(node.get("node_key") or "")
            found = next(iter(find_node(server["nodes"], node_key=key)), None) if key else None
            online[label] = bool(found.get("online")) if found else False
            approved[label] = _routes(found.get("approved_routes")) if found else []
            node_names[label] = str(found.get("name") or "") if found else ""
    wanted = host.get("routes_wanted")
    row: dict[str, t.Any] = {
        "host": str(host.get("host") or ""),
        "profile": str(host.get("profile") or ""),
        "door": door(host.get("connection")),
        "arch": str(node.get("machine") or ""),
        "installed": str(node.get("version") or ""),
        "pinned": str(pin.get("version") or ""),
        "track": str(pin.get("track") or ""),
        "behind": None,
        "backend_state": state,
        "read": read,
        "read_error": str(host.get("error") or node.get("error") or ""),
        "online": online,
        "online_device": node.get("online"),
        "control_nodes": node_names,
        "tailnet_ips": sorted(node.get("tailscale_ips") or [], key=lambda ip: (":" in ip, ip)),
        "routes_advertised": _routes(node.get("advertised_routes")),
        "routes_approved": approved,
        "routes_wanted": _routes(wanted) if isinstance(wanted, list) else None,
        "networking": str(node.get("networking") or ""),
        "networking_wanted": str(host.get("networking_wanted") or ""),
        "last_run": _last(records.get("run")),
        "last_check": _last(records.get("check")),
    }
    pin_key, have_key = version_key(row["pinned"]), version_key(row["installed"])
    if read and pin_key:
        row["behind"] = have_key is None or have_key < pin_key
    row["drift"] = drift(row, records)
    last = row["last_run"]
    row["failing"] = state in ("Unreachable", "Unread") or bool(last and (last["failures"] or last["unreachable"]))
    row["up"] = state == "Running" and all(v is not False for v in online.values())
    return row


def summarize(rows: list[dict[str, t.Any]]) -> dict[str, int]:
    return {
        "hosts": len(rows),
        "up": sum(1 for r in rows if r["up"]),
        "down": sum(1 for r in rows if not r["up"] and r["read"]),
        "behind": sum(1 for r in rows if r["behind"]),
        "failing": sum(1 for r in rows if r["failing"]),
        "drifted": sum(1 for r in rows if r["drift"]),
        "not_applicable": sum(1 for r in rows if r["backend_state"] == "NotApplicable"),
    }


def build_report(
    hosts: list[dict[str, t.Any]],
    servers: dict[str, dict[str, t.Any]],
    records: dict[str, dict[str, t.Any]],
    generated: str,
) -> dict[str, t.Any]:
    """The whole report (what the JSON file holds): generated, summary, servers, hosts."""
    rows = [build_row(h, servers, records.get(str(h.get("host")), {})) for h in hosts]
    rows.sort(key=lambda r: r["host"])
    return {
        "version": JSON_VERSION,
        "generated": generated,
        "summary": summarize(rows),
        "servers": [
            {"label": label, "nodes": len(s.get("nodes") or []), "error": str(s.get("error") or "")}
            for label, s in sorted(servers.items())
        ],
        "hosts": rows,
    }


def _online_text(row: dict[str, t.Any]) -> str:
    if not row["online"]:
        return "-"
    words = {True: "online", False: "offline", None: "?"}
    if len(row["online"]) == 1:
        return words[next(iter(row["online"].values()))]
    return ", ".join(f"{label}: {words[v]}" for label, v in row["online"].items())


def _routes_text(row: dict[str, t.Any]) -> str:
    adv = ",".join(row["routes_advertised"]) or "-"
    approved = sorted({r for routes in row["routes_approved"].values() for r in routes})
    return f"{adv} / {','.join(approved) or '-'}"


def _last_text(row: dict[str, t.Any]) -> str:
    last = row["last_run"]
    if not last:
        return "never recorded"
    return f"{last['result'] or '?'} {last['finished'][:19]}".strip()


def _version_text(row: dict[str, t.Any]) -> str:
    return f"{row['installed'] or '-'} / {row['pinned'] or '-'}"


COLUMNS = ("HOST", "PROFILE", "DOOR", "ARCH", "VERSION/PIN", "STATE", "CONTROL", "TAILNET IPS", "ROUTES ADV/APPR")
COLUMNS += ("NET", "LAST RUN", "DRIFT")
HTML_COLUMNS = ("Host", "Profile", "Door", "Arch", "Installed / pinned", "State", "Online", "Tailnet IPs")
HTML_COLUMNS += ("Routes advertised / approved", "Networking", "Last run", "Drift")


def _cells(row: dict[str, t.Any]) -> list[str]:
    return [
        row["host"],
        row["profile"] or "-",
        row["door"] or "-",
        row["arch"] or "-",
        _version_text(row) + (" behind" if row["behind"] else ""),
        row["backend_state"],
        _online_text(row),
        ",".join(row["tailnet_ips"]) or "-",
        _routes_text(row),
        row["networking"] or "-",
        _last_text(row),
        str(len(row["drift"])) if row["drift"] else "-",
    ]


def summary_line(summary: dict[str, int]) -> str:
    return (
        f"{summary['hosts']} hosts: {summary['up']} up, {summary['behind']} behind, {summary['failing']} failing, "
        f"{summary['drifted']} drifted"
    )


def table_lines(report: dict[str, t.Any]) -> list[str]:
    """The terminal table: the summary line, a header and one line per host, then each host's drift."""
    rows = [list(COLUMNS)] + [_cells(r) for r in report["hosts"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = [summary_line(report["summary"])]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for row in report["hosts"]:
        lines += [f"{row['host']}: drift: {item}" for item in row["drift"]]
        if row["read_error"] and not row["read"]:
            lines.append(f"{row['host']}: not read: {row['read_error']}")
    for server in report["servers"]:
        if server["error"]:
            lines.append(f"control server {server['label']}: {server['error']}")
    return lines


def to_json(report: dict[str, t.Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True) + "\n"


CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1d2430;background:#f6f7f9}
h1{font-size:22px;margin:0 0 4px}.meta{color:#5b6472;margin-bottom:16px}
.cards{display:flex;gap:12px;margin-bottom:20px;flex-wrap:wrap}
.card{background:#fff;border-radius:8px;padding:12px 18px;box-shadow:0 1px 3px rgba(0,0,0,.12);min-width:110px}
.card b{display:block;font-size:28px}.card.up b{color:#1a7f37}.card.behind b{color:#9a6700}
.card.failing b{color:#cf222e}.card.drifted b{color:#8250df}
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 3px rgba(0,0,0,.12);width:100%}
th,td{padding:6px 10px;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600;white-space:nowrap}td.mono{font-family:ui-monospace,monospace;font-size:12px}
.ok{color:#1a7f37}.warn{color:#9a6700}.bad{color:#cf222e}.muted{color:#8c959f}
ul.drift{margin:0;padding-left:16px;color:#8250df}.servers{margin-top:16px;color:#5b6472}
"""


def _e(value: t.Any) -> str:
    return html.escape(str(value), quote=True)


def _state_class(row: dict[str, t.Any]) -> str:
    if row["up"]:
        return "ok"
    if row["failing"] or row["backend_state"] in ("NoDaemon", "NotInstalled", "Unreachable"):
        return "bad"
    return "warn" if row["read"] else "muted"


def _html_row(row: dict[str, t.Any]) -> str:
    version_class = "warn" if row["behind"] else ("ok" if row["installed"] == row["pinned"] else "")
    last = row["last_run"]
    last_class = "bad" if last and (last["failures"] or last["unreachable"]) else ("ok" if last else "muted")
    last_title = (last or {}).get("last_failure") or ""
    drift_html = (
        '<ul class="drift">' + "".join(f"<li>{_e(d)}</li>" for d in row["drift"]) + "</ul>"
        if row["drift"]
        else '<span class="muted">none</span>'
    )
    cells = [
        f'<td data-col="host"><b>{_e(row["host"])}</b></td>',
        f'<td data-col="profile">{_e(row["profile"] or "-")}</td>',
        f'<td data-col="door">{_e(row["door"])}</td>',
        f'<td data-col="arch">{_e(row["arch"] or "-")}</td>',
        f'<td data-col="version" class="{version_class}">{_e(_version_text(row))}'
        + (" <b>behind</b>" if row["behind"] else "")
        + "</td>",
        f'<td data-col="state" class="{_state_class(row)}">{_e(row["backend_state"])}</td>',
        f'<td data-col="online">{_e(_online_text(row))}</td>',
        f'<td data-col="ips" class="mono">{"<br>".join(_e(ip) for ip in row["tailnet_ips"]) or "-"}</td>',
        f'<td data-col="routes" class="mono">{_e(_routes_text(row))}</td>',
        f'<td data-col="networking">{_e(row["networking"] or "-")}</td>',
        f'<td data-col="last" class="{last_class}" title="{_e(last_title)}">{_e(_last_text(row))}'
        + (f"<br><small>{_e(last_title)}</small>" if last_title else "")
        + "</td>",
        f'<td data-col="drift">{drift_html}</td>',
    ]
    return f'<tr data-host="{_e(row["host"])}">' + "".join(cells) + "</tr>"


def to_html(report: dict[str, t.Any]) -> str:
    """One self-contained page (inline CSS, no script, no external resource); every value escaped."""
    s = report["summary"]
    cards = "".join(
        f'<div class="card {key}" id="summary-{key}"><b data-count="{key}">{int(s[key])}</b>{_e(title)}</div>'
        for key, title in (
            ("hosts", "devices"),
            ("up", "up"),
            ("behind", "behind the pin"),
            ("failing", "failing"),
            ("drifted", "drifted"),
        )
    )
    head = "".join(f"<th>{_e(c)}</th>" for c in HTML_COLUMNS)
    rows = "".join(_html_row(r) for r in report["hosts"])
    servers = "".join(
        f"<li>{_e(srv['label'])}: {int(srv['nodes'])} nodes"
        + (f' <span class="bad">{_e(srv["error"])}</span>' if srv["error"] else "")
        + "</li>"
        for srv in report["servers"]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>Fleet report {_e(report['generated'])}</title><style>{CSS}</style></head><body>"
        f'<h1>Tailscale fleet report</h1><div class="meta">generated {_e(report["generated"])} by '
        "fleetmesh.tailscale playbooks/report.yml</div>"
        f'<div class="cards" id="summary" data-summary="{_e(summary_line(s))}">{cards}</div>'
        f'<table id="fleet"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
        + (f'<div class="servers">Control servers:<ul>{servers}</ul></div>' if servers else "")
        + "</body></html>\n"
    )
