"""device_facts over a real connection (local) agrees with what Python sees on the same machine."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from repo_checkout import REPO, ansible_env


def test_facts_match_this_machine(tmp_path: Path) -> None:
    play = tmp_path / "play.yml"
    out = tmp_path / "facts.json"
    play.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - fleetmesh.tailscale.device_facts:\n        paths: [/nonexistent/fleetmesh/dir]\n"
        f"    - ansible.builtin.copy:\n        content: '{{{{ ansible_facts.fleetmesh_device | to_json }}}}'\n"
        f"        dest: {out}\n        mode: '0600'\n"
    )
    env = ansible_env(tmp_path, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    proc = subprocess.run(
        [
            "ansible-playbook",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(play),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    facts = json.loads(out.read_text())
    uname = os.uname()
    assert facts["kernel"] == uname.sysname
    assert facts["kernel_release"] == uname.release
    assert facts["machine"] == uname.machine
    expected_arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine())
    assert facts["tailscale_arch"] == expected_arch
    assert facts["elf_bits"] == 64
    # The missing dir is measured on its nearest existing parent, /.
    root = os.statvfs("/")
    assert facts["storage"]["/nonexistent/fleetmesh/dir"]["mount"] == "/"
    assert facts["storage"]["/"]["total_kb"] == root.f_blocks * root.f_frsize // 1024
    assert facts["tun"]["node"] == os.path.exists("/dev/net/tun")
    assert facts["root_readonly"] is False
