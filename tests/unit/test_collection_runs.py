"""The collection runs in place from a fresh clone, and as a built and installed artifact."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from repo_checkout import REPO, ansible_env, copy_checkout

pytestmark = pytest.mark.slow

# The release site.yml installs by default (binary_version); the staged tree is named after it.
VERSION = yaml.safe_load((REPO / "roles/binary/defaults/main.yml").read_text())["binary_version"]


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def release_tarball(path: Path, version: str, arch: str) -> None:
    """A release tarball in the official layout (tailscale_<v>_<arch>/{tailscale,tailscaled,systemd/...}) whose
    programs are placeholder text: a fixture, not an imitation of Tailscale. Staging a rootfs runs nothing it
    installs, so no real (Go-built) binary is needed here."""
    top = f"tailscale_{version}_{arch}"
    members: list[tuple[str, bytes | None, int]] = [
        (f"{top}/", None, 0o755),
        (f"{top}/tailscaled", b"placeholder tailscaled\n", 0o755),
        (f"{top}/tailscale", b"placeholder tailscale\n", 0o755),
        (f"{top}/systemd/", None, 0o755),
        (f"{top}/systemd/tailscaled.service", b"[Service]\n", 0o644),
        (f"{top}/systemd/tailscaled.defaults", b"PORT=41641\n", 0o644),
    ]
    with tarfile.open(path, mode="w:gz") as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def local_inventory(tmp_path: Path, group: str) -> Path:
    """The local rootfs-staging host, staging into tmp_path/image from a local release tarball (no network)."""
    tarball = tmp_path / f"tailscale_{VERSION}_arm.tgz"
    release_tarball(tarball, VERSION, "arm")
    inventory = tmp_path / "inventory.yml"
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "binary_src": str(tarball),
        "binary_arch": "arm",
        "binary_cache_dir": str(tmp_path / "cache"),
        "fleetmesh_rootfs_dir": str(tmp_path / "image"),
    }
    inventory.write_text(json.dumps({"all": {"children": {group: {"hosts": {"target": host}}}}}))
    return inventory


def tree(root: Path) -> dict[str, str]:
    """Every path below root: its mode (octal) for files and dirs, '-> target' for symlinks."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = "/" + str(path.relative_to(root))
        out[rel] = f"-> {os.readlink(path)}" if path.is_symlink() else oct(path.stat().st_mode & 0o7777)
    return out


# What site.yml stages for the rootfs profile (QuecOpen ql-ol-rootfs layout): binaries, links into PATH, the boot
# integration (sysvinit, rc5.d), the state dir; links and scripts name in-image paths.
STAGED = {
    "/etc/init.d/tailscaled": "-> /usr/lib/tailscale/boot/tailscaled.init",
    "/etc/rc5.d/S99tailscaled": "-> ../init.d/tailscaled",
    "/usr/bin/tailscale": "-> /usr/lib/tailscale/current/tailscale",
    "/usr/bin/tailscaled": "-> /usr/lib/tailscale/current/tailscaled",
    "/usr/lib/tailscale/.fleetmesh-binary.manifest": "0o644",
    f"/usr/lib/tailscale/{VERSION}/tailscale": "0o755",
    f"/usr/lib/tailscale/{VERSION}/tailscaled": "0o755",
    "/usr/lib/tailscale/current": f"-> /usr/lib/tailscale/{VERSION}",
    "/usr/lib/tailscale/boot/.fleetmesh-boot.manifest": "0o644",
    "/usr/lib/tailscale/boot/tailscaled.defaults": "0o644",
    "/usr/lib/tailscale/boot/tailscaled.init": "0o755",
    "/usr/lib/tailscale/boot/tailscaled.run": "0o755",
    "/usrdata/tailscale/state": "0o700",
    "/usrdata/tailscale/state/logs": "0o700",
}


def test_rootfs_staging_lays_the_image_tree_and_starts_nothing(fresh_clone: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    inventory = local_inventory(tmp_path, "rootfs")
    image = tmp_path / "image"
    site = ["ansible-playbook", "playbooks/site.yml", "-i", str(inventory)]
    first = run(site, cwd=fresh_clone, env=ansible_env(home))
    assert "target: profile rootfs" in first.stdout
    staged = {path: mode for path, mode in tree(image).items() if path in STAGED or not Path(image, path[1:]).is_dir()}
    assert staged == STAGED
    # In-image paths only: nothing staged names the build dir.
    defaults = (image / "usr/lib/tailscale/boot/tailscaled.defaults").read_text()
    assert "--state=/usrdata/tailscale/state/tailscaled.state" in defaults
    assert str(tmp_path) not in defaults + (image / "usr/lib/tailscale/boot/.fleetmesh-boot.manifest").read_text()
    # The init script is valid sh and reads its flags from the staged defaults file.
    init = image / "usr/lib/tailscale/boot/tailscaled.init"
    assert subprocess.run(["sh", "-n", str(init)], check=False).returncode == 0
    assert "/usr/lib/tailscale/boot" in init.read_text()

    second = run(site, cwd=fresh_clone, env=ansible_env(home))
    assert "changed=0" in second.stdout and "failed=0" in second.stdout

    run([*site, "-e", "fleetmesh_state=absent"], cwd=fresh_clone, env=ansible_env(home))
    # Exactly the staged files went; the state dir stays (state is never removed).
    assert set(tree(image)) == {
        "/usrdata",
        "/usrdata/tailscale",
        "/usrdata/tailscale/state",
        "/usrdata/tailscale/state/logs",
    }


def test_rootfs_profile_refuses_without_a_staging_dir(fresh_clone: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        ["ansible-playbook", "playbooks/site.yml", "-i", "inventories/local"],
        cwd=fresh_clone,
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode != 0
    assert "set fleetmesh_rootfs_dir to that tree" in proc.stdout
    assert "Fetch, verify and unpack the release" not in proc.stdout


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
    assert (tmp_path / "image" / "usr" / "lib" / "tailscale" / VERSION / "tailscaled").is_file()
