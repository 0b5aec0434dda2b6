"""The collection runs in place from a fresh clone, and as a built and installed artifact."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from fleetlab.standin.release import tarball_bytes
from repo_checkout import ansible_env, copy_checkout

pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def local_inventory(tmp_path: Path, group: str) -> Path:
    """A local host whose profile paths all lie under tmp_path, installing a stand-in release tarball."""
    root = tmp_path / "target"
    (root / "bin").mkdir(parents=True)  # a device's bin dir on PATH exists; the role links into it
    tarball = tmp_path / "tailscale_1.82.0_amd64.tgz"
    tarball.write_bytes(tarball_bytes("1.82.0", "amd64"))
    inventory = tmp_path / "inventory.yml"
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "binary_src": str(tarball),
        "device_profile_overrides": {
            "storage_dir": str(root / "storage"),
            "bin_dir": str(root / "bin"),
            "state_dir": str(root / "state"),
        },
    }
    inventory.write_text(json.dumps({"all": {"children": {group: {"hosts": {"target": host}}}}}))
    return inventory


def test_site_runs_in_place_without_installing_anything(fresh_clone: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    inventory = local_inventory(tmp_path, "rootfs")
    proc = run(
        ["ansible-playbook", "playbooks/site.yml", "-i", str(inventory)],
        cwd=fresh_clone,
        env=ansible_env(home),
    )
    assert "target: profile rootfs" in proc.stdout
    assert "failed=0" in proc.stdout
    assert (tmp_path / "target" / "bin" / "tailscaled").exists()
    # Nothing was installed into the user's home to make fleetmesh.tailscale resolve.
    assert not (home / ".ansible" / "collections").exists()


def test_unknown_profile_fails_before_anything_runs(fresh_clone: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        ["ansible-playbook", "playbooks/site.yml", "-i", "inventories/local", "-e", "device_profile=kindle"],
        cwd=fresh_clone,
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode != 0
    assert "value of device_profile must be one of" in proc.stdout
    assert "kindle" in proc.stdout
    assert "Publish the merged profile" not in proc.stdout


def test_built_artifact_installs_and_runs_by_fqcn(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = ansible_env(home)
    src = copy_checkout(tmp_path / "src")
    dist = tmp_path / "dist"
    run(["ansible-galaxy", "collection", "build", "--output-path", str(dist)], cwd=src, env=env)
    (artifact,) = dist.glob("fleetmesh-tailscale-*.tar.gz")

    with tarfile.open(artifact) as tar:
        names = set(tar.getnames())
    assert "roles/device/tasks/main.yml" in names
    assert "playbooks/site.yml" in names
    assert "MANIFEST.json" in names
    for dev_only in ("Makefile", "ansible.cfg", ".ci/run", "tests/lab/pyproject.toml", ".collections"):
        assert dev_only not in names, f"{dev_only} shipped in {artifact.name}"

    collections = tmp_path / "collections"
    run(["ansible-galaxy", "collection", "install", str(artifact), "-p", str(collections)], cwd=tmp_path, env=env)

    play = tmp_path / "play"
    play.mkdir()
    (play / "inventory.yml").write_text(
        "all:\n  children:\n    kobo:\n      hosts:\n        reader:\n          ansible_connection: local\n"
    )
    (play / "play.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  roles:\n    - role: fleetmesh.tailscale.device\n"
        "  tasks:\n    - ansible.builtin.debug:\n        var: device_profile_data.storage_dir\n"
    )
    proc = run(
        ["ansible-playbook", "play.yml", "-i", "inventory.yml"],
        cwd=play,
        env=ansible_env(home, ANSIBLE_COLLECTIONS_PATH=str(collections)),
    )
    assert "/mnt/onboard/.tailscale" in proc.stdout
    # The playbook shipped inside the artifact runs by FQCN as well.
    proc = run(
        ["ansible-playbook", "fleetmesh.tailscale.site", "-i", str(local_inventory(tmp_path, "rootfs"))],
        cwd=play,
        env=ansible_env(home, ANSIBLE_COLLECTIONS_PATH=str(collections)),
    )
    assert "target: profile rootfs" in proc.stdout
    assert (tmp_path / "target" / "bin" / "tailscaled").exists()
