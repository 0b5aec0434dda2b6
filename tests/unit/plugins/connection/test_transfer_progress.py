"""Progress of a long put_file at default verbosity, seen from ansible-playbook: the telnet plugin's background
session sends its progress lines to the task, Ansible's Display prints them from the main process on stderr, and
stdout stays what the stdout callback makes of the play (the default callback's text, or JSON that still parses).

The device is the local telnet endpoint of test_telnet.py (a real sh on a pty) behind the lab's link shaper at
2 Mbit/s, so an inline put of 2.5 MiB (3.4 MiB of base64) takes about 14 s. The counts are what the next hop has
acknowledged; here that is the shaper, whose socket buffers take about 0.9 MB at once, so the first line already
shows more than 2 Mbit/s can have carried (more when the machine is busy).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_telnet import FakeTelnetd, stop_sessions

shaper = pytest.importorskip("fleetlab.shaper", reason="the fleetlab package (tests/lab) is not installed")

REPO = Path(__file__).resolve().parents[4]

PUT_ACTION = '''
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    """put_file and nothing else, as install_files does for each binary."""

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        self._connection.put_file(self._task.args["src"], self._task.args["dest"])
        result["changed"] = True
        return result
'''

# Like ansible.posix.json (not shipped with ansible-core): the whole play as one JSON document on stdout at the end.
JSON_CALLBACK = """
import json

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "json_doc"

    def __init__(self):
        super().__init__()
        self.results = []

    def v2_runner_on_ok(self, result):
        self.results.append({"host": result._host.get_name(), "task": result._task.get_name(), "ok": True})

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self.results.append({"host": result._host.get_name(), "task": result._task.get_name(), "ok": False})

    def v2_playbook_on_stats(self, stats):
        self._display.display(json.dumps({"results": self.results}, indent=2))
"""


@pytest.fixture
def slow_device(tmp_path: Path) -> Iterator[int]:
    telnetd = FakeTelnetd()
    proxy, stop = shaper.run_in_thread(
        shaper.ShaperConfig("127.0.0.1", 0, "127.0.0.1", telnetd.port, latency_ms=5, rate_kbit=2000)
    )
    yield proxy.port
    stop_sessions(tmp_path / "cp")
    stop.set()
    telnetd.close()


def play(tmp_path: Path, port: int, callback: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "action_plugins").mkdir(exist_ok=True)
    (tmp_path / "action_plugins" / "fm_put.py").write_text(PUT_ACTION)
    (tmp_path / "callbacks").mkdir(exist_ok=True)
    (tmp_path / "callbacks" / "json_doc.py").write_text(JSON_CALLBACK)
    payload = tmp_path / "tailscaled"
    if not payload.exists():
        payload.write_bytes(os.urandom(2560 * 1024))
    dest = tmp_path / "device" / "tailscaled"
    dest.parent.mkdir(exist_ok=True)
    dest.unlink(missing_ok=True)
    inventory = {
        "all": {
            "hosts": {"dev": {"ansible_host": "127.0.0.1", "ansible_port": port}},
            "vars": {
                "ansible_connection": "fleetmesh.tailscale.telnet",
                "fleetmesh_telnet_transfer_method": "base64",
                "fleetmesh_telnet_control_path_dir": str(tmp_path / "cp"),
            },
        }
    }
    (tmp_path / "inv.json").write_text(json.dumps(inventory))
    task = {"name": "Put the binary", "fm_put": {"src": str(payload), "dest": str(dest)}}
    (tmp_path / "play.json").write_text(json.dumps([{"hosts": "all", "gather_facts": False, "tasks": [task]}]))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(REPO / ".collections"),
        "ANSIBLE_CALLBACK_PLUGINS": str(tmp_path / "callbacks"),
        "ANSIBLE_STDOUT_CALLBACK": callback,
        "ANSIBLE_NOCOLOR": "1",
    }
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", str(tmp_path / "inv.json"), "play.json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert dest.read_bytes() == payload.read_bytes()
    return proc


def progress_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("telnet 127.0.0.1: put tailscaled: ")]


@pytest.mark.slow
@pytest.mark.parametrize("callback", ["default", "json_doc"])
def test_a_slow_put_shows_progress_on_stderr_only(tmp_path: Path, slow_device: int, callback: str) -> None:
    proc = play(tmp_path, slow_device, callback)
    lines = progress_lines(proc.stderr)
    assert len(lines) >= 2, proc.stderr
    # The shaper's buffers may already hold the rest at the first line: then it is 100% and no time is left.
    head = r"telnet 127\.0\.0\.1: put tailscaled: "
    assert re.fullmatch(head + r"\d+\.\d/2\.5 MiB \(\d+%\), \d+\.\d MiB/s(, \d+ s left)?", lines[0]), lines
    assert re.fullmatch(head + r"2\.5 MiB done in \d+ s \(0\.\d MiB/s\)", lines[-1]), lines
    assert "MiB" not in proc.stdout
    if callback == "json_doc":
        assert json.loads(proc.stdout) == {"results": [{"host": "dev", "task": "Put the binary", "ok": True}]}
    else:
        assert "TASK [Put the binary]" in proc.stdout
        assert "changed: [dev]" in proc.stdout
