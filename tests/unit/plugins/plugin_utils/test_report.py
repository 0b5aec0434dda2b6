"""_report: rows, drift rules, summary counts, and the HTML / JSON / table renderings of the fleet report."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _report as report

SERVER = "headscale https://hs.example"
KEY = "nodekey:abc"


def node(**over: Any) -> dict[str, Any]:
    base = {
        "machine": "armv7l",
        "installed": True,
        "version": "1.98.10",
        "backend_state": "Running",
        "networking": "userspace",
        "tailscale_ips": ["fd7a::1", "100.64.0.1"],
        "node_key": KEY,
        "online": True,
        "advertised_routes": [],
        "error": "",
    }
    base.update(over)
    return base


def host(name: str = "kobo1", **over: Any) -> dict[str, Any]:
    base = {
        "host": name,
        "profile": "kobo",
        "connection": "fleetmesh.tailscale.telnet",
        "pin": {"version": "1.98.10", "track": "stable"},
        "node": node(),
        "skipped": False,
        "unreachable": False,
        "routes_wanted": None,
        "networking_wanted": "",
        "control": SERVER,
    }
    base.update(over)
    return base


def servers(online: bool = True, approved: list[str] | None = None, key: str = KEY) -> dict[str, Any]:
    found = {"node_key": key, "online": online, "approved_routes": approved or [], "name": "kobo1"}
    return {SERVER: {"nodes": [found], "error": ""}}


def record(when: str, changed: list[str] | None = None, failures: int = 0, **over: Any) -> dict[str, Any]:
    rec = {
        "playbook": "site.yml",
        "finished": when,
        "result": "failed" if failures else "ok",
        "stats": {"changed": len(changed or []), "failures": failures, "unreachable": 0, "rescued": 0},
        "changed_tasks": changed or [],
        "last_failure": "Login: no key" if failures else "",
    }
    rec.update(over)
    return rec


def test_a_healthy_device_is_up_not_behind_not_drifted() -> None:
    row = report.build_row(host(), servers(), {})
    assert row["up"] and row["behind"] is False and row["drift"] == [] and not row["failing"]
    assert row["door"] == "telnet" and row["arch"] == "armv7l"
    assert row["online"] == {SERVER: True}
    assert row["tailnet_ips"] == ["100.64.0.1", "fd7a::1"]  # IPv4 first


def test_doors() -> None:
    assert [report.door(c) for c in ("fleetmesh.tailscale.adb", "ssh", "ansible.builtin.local", None)] == [
        "adb",
        "ssh",
        "local",
        "ssh",
    ]


def test_behind_the_pin_is_counted_and_drifts() -> None:
    row = report.build_row(host(node=node(version="1.96.5")), servers(), {})
    assert row["behind"] is True
    assert "installed 1.96.5, pinned 1.98.10" in row["drift"]
    ahead = report.build_row(host(node=node(version="1.99.0")), servers(), {})
    assert ahead["behind"] is False and ahead["drift"] == ["installed 1.99.0, pinned 1.98.10"]
    latest = report.build_row(host(pin={"version": "latest", "track": "stable"}), servers(), {})
    assert latest["behind"] is None and latest["drift"] == []


def test_drift_rules() -> None:
    row = report.build_row(
        host(
            node=node(backend_state="NeedsLogin", advertised_routes=["0.0.0.0/0", "10.1.0.0/24"], networking="kernel"),
            routes_wanted=["10.2.0.0/24"],
            networking_wanted="userspace",
        ),
        servers(),
        {},
    )
    assert row["drift"] == [
        "backend state NeedsLogin",
        "advertises 10.1.0.0/24, routing_routes 10.2.0.0/24",
        "networking kernel, networking_mode userspace",
    ]
    assert not row["up"]
    # Exit-node routes are not subnet routes: they never count against routing_routes.
    same = report.build_row(
        host(node=node(advertised_routes=["10.2.0.0/24", "::/0"]), routes_wanted=["10.2.0.0/24"]), servers(), {}
    )
    assert same["drift"] == []


def test_a_check_record_newer_than_the_last_run_is_drift_an_older_one_is_not() -> None:
    run = record("2026-01-02T10:00:00+00:00")
    check = record("2026-01-02T11:00:00+00:00", changed=["Install the binaries"], check=True)
    row = report.build_row(host(), servers(), {"run": run, "check": check})
    assert len(row["drift"]) == 1 and "would change: Install the binaries" in row["drift"][0]
    old = record("2026-01-02T09:00:00+00:00", changed=["Install the binaries"], check=True)
    assert report.build_row(host(), servers(), {"run": run, "check": old})["drift"] == []
    clean = record("2026-01-02T11:00:00+00:00", check=True)
    assert report.build_row(host(), servers(), {"run": run, "check": clean})["drift"] == []


def test_failing_offline_unreachable_and_not_applicable() -> None:
    failed = report.build_row(host(), servers(), {"run": record("2026-01-02T10:00:00+00:00", failures=1)})
    assert failed["failing"] and failed["last_run"]["last_failure"] == "Login: no key"
    offline = report.build_row(host(), servers(online=False), {})
    assert not offline["up"] and offline["online"] == {SERVER: False}
    unlisted = report.build_row(host(), servers(key="nodekey:other"), {})
    assert unlisted["online"] == {SERVER: False} and not unlisted["up"]
    gone = report.build_row(host(node=None, unreachable=True, error="timed out"), servers(), {})
    assert gone["backend_state"] == "Unreachable" and gone["failing"] and gone["behind"] is None and not gone["read"]
    rootfs = report.build_row(host(skipped=True, profile="rootfs"), servers(), {})
    assert rootfs["backend_state"] == "NotApplicable" and not rootfs["failing"] and rootfs["drift"] == []
    broken = {SERVER: {"nodes": [], "error": "could not list nodes: refused"}}
    unknown = report.build_row(host(), broken, {})
    assert unknown["online"] == {SERVER: None} and unknown["up"]  # an unlistable server does not mark it down


def test_summary_counts() -> None:
    hosts = [
        host("a"),
        host("b", node=node(version="1.96.5")),
        host("c", node=None, unreachable=True),
        host("d", node=node(backend_state="Stopped")),
        host("e", skipped=True, profile="rootfs"),
    ]
    data = report.build_report(hosts, servers(), {"d": {"run": record("2026-01-01T00:00:00+00:00", failures=2)}}, "T")
    assert data["summary"] == {
        "hosts": 5,
        "up": 2,
        "down": 1,
        "behind": 1,
        "failing": 2,
        "drifted": 2,
        "not_applicable": 1,
    }
    assert [r["host"] for r in data["hosts"]] == ["a", "b", "c", "d", "e"]
    lines = report.table_lines(data)
    assert lines[0] == "5 hosts: 2 up, 1 behind, 2 failing, 2 drifted"
    assert lines[1].split()[:3] == ["HOST", "PROFILE", "DOOR"]


def test_json_shape() -> None:
    data = report.build_report([host()], servers(approved=["10.1.0.0/24"]), {}, "2026-01-01T00:00:00+00:00")
    loaded = json.loads(report.to_json(data))
    assert set(loaded) == {"version", "generated", "summary", "servers", "hosts"}
    assert loaded["servers"] == [{"label": SERVER, "nodes": 1, "error": ""}]
    row = loaded["hosts"][0]
    for key in ("host", "profile", "door", "arch", "installed", "pinned", "backend_state", "online", "tailnet_ips"):
        assert key in row
    assert row["routes_approved"] == {SERVER: ["10.1.0.0/24"]}
    assert row["last_run"] is None


def test_html_escapes_a_hostile_hostname_and_has_the_summary() -> None:
    evil = '<script>alert("x")</script>&'
    data = report.build_report(
        [host(evil, node=node(error="<b>"), routes_wanted=["<img src=x>"])], servers(), {}, "<now>"
    )
    page = report.to_html(data)
    assert "<script>" not in page and "<img" not in page and "<now>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page
    assert 'data-count="up">1<' in page and 'data-count="hosts">1<' in page
    assert "http" not in page.replace(SERVER, "")  # self-contained: nothing fetched
    assert page.startswith("<!DOCTYPE html>")


def test_control_label_never_holds_a_credential() -> None:
    spec = {"type": "headscale", "url": "https://hs", "api_key": "SECRET"}
    assert report.control_label(spec) == "headscale https://hs"
    assert (
        report.control_label({"type": "tailscale", "oauth_client_secret": "S", "tailnet": "ex.com"})
        == "tailscale ex.com"
    )
    assert report.control_label(None) == ""


def test_record_names_and_atomic_write(tmp_path: Path) -> None:
    assert report.record_name("kobo-1") == "kobo-1.json"
    assert report.record_name("../x/y", check=True) == "_x_y.check.json"
    path = tmp_path / "sub" / "f.json"
    report.write_atomic(str(path), "one")
    report.write_atomic(str(path), "two")
    assert path.read_text() == "two" and os.listdir(path.parent) == ["f.json"]


def test_atomic_write_leaves_the_old_file_when_it_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f.json"
    path.write_text("old")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        report.write_atomic(str(path), "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.json"]


def test_read_records(tmp_path: Path) -> None:
    (tmp_path / "h.json").write_text(json.dumps(record("2026-01-01T00:00:00+00:00")))
    (tmp_path / "h.check.json").write_text("{half")
    found = report.read_records(str(tmp_path), "h")
    assert found["run"]["playbook"] == "site.yml" and found["check"] is None
    assert report.read_records(str(tmp_path), "other") == {"run": None, "check": None}
