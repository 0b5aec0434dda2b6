"""site.yml on a lab device through ansible-runner, laid out as AWX / Automation Platform runs a job template in the
execution environment: a private data dir (project/ with a playbook importing fleetmesh.tailscale.site, inventory/,
env/extravars for the job template's extra vars), the secrets injected by the AWX custom credential types of
extensions/awx/credential_types (rendered as AWX renders them into `-e @FILE` files of `!unsafe` strings), the
collection installed from its built tarball.

The execution environment is emulated without a container engine (none on the project's machines): a venv with
the packages execution-environment.yml names, installed as ansible-builder would (its ansible_core and
ansible_runner pip specs and requirements-ee.txt, unpinned where the EE is unpinned), kept in
/var/cache/fleetlab/runner-ee/<hash of those specs> so pip runs once per machine; the collection is built from a
clean copy of the tracked files with that venv's ansible-galaxy and installed with `ansible-galaxy collection
install` into the run's only collections path. ansible-playbook is that venv's; no ansible.cfg and no ANSIBLE_*
variable of the checkout reaches it. ansible_runner.run itself is the dev venv's (requirements-dev.txt pins it),
as AWX's worker is not the playbook's process either; the bindep system packages (adb, ssh clients) are the host's.

Asserted: the run succeeds and the node is Running on the pinned version with the lab's telnet password and auth
key coming only from the credentials; every task ran from the installed collection; a second run changes nothing;
no secret appears in the runner's artifacts (stdout, job events). The headscale node is deleted in teardown.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
]

lab = pytest.importorskip("fleetlab.lab", reason="the fleetlab package (tests/lab) is not installed")
ansible_runner = pytest.importorskip("ansible_runner", reason="ansible-runner is not installed (requirements-dev.txt)")

import awx_credentials  # noqa: E402
from provision_lab import site_host_vars, wait_for  # noqa: E402

from fleetlab import control  # noqa: E402
from repo_checkout import REPO, copy_checkout  # noqa: E402

NAME = "rn-awx"
EE_CACHE = Path("/var/cache/fleetlab/runner-ee")


def ee_specs() -> list[str]:
    """pip arguments for the EE's Python side, from execution-environment.yml as ansible-builder reads it."""
    deps = yaml.safe_load((REPO / "execution-environment.yml").read_text())["dependencies"]
    reqs = [ln.strip() for ln in (REPO / deps["python"]).read_text().splitlines()]
    return [deps["ansible_core"]["package_pip"], deps["ansible_runner"]["package_pip"]] + [
        r for r in reqs if r and not r.startswith("#")
    ]


@pytest.fixture(scope="module")
def ee_bin() -> Path:
    """The emulated EE's bin dir (made once per machine and spec set)."""
    specs = ee_specs()
    key = hashlib.sha256(json.dumps([sys.version, specs]).encode()).hexdigest()[:16]
    venv = EE_CACHE / key
    if not (venv / ".ready").exists():
        shutil.rmtree(venv, ignore_errors=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # noqa: S603 - fixed argv
        pip = [str(venv / "bin/pip"), "install", "--disable-pip-version-check", "-q", *specs]
        proc = subprocess.run(pip, capture_output=True, text=True, timeout=600, check=False)  # noqa: S603
        assert proc.returncode == 0, f"installing the EE's packages failed:\n{proc.stdout}{proc.stderr}"
        (venv / ".ready").write_text("\n".join(specs) + "\n")
    return venv / "bin"


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(HOME=str(home), **extra)
    return env


@pytest.fixture(scope="module")
def collections_dir(ee_bin: Path, work: Path) -> Path:
    """The collection built from a clean copy of the tracked files and installed from its tarball, as the EE does."""
    src = copy_checkout(work / "src")
    home = work / "home"
    home.mkdir(exist_ok=True)
    env = clean_env(home)
    galaxy = str(ee_bin / "ansible-galaxy")
    subprocess.run(  # noqa: S603 - fixed argv
        [galaxy, "collection", "build", "--output-path", str(work / "build")], cwd=src, env=env, check=True
    )
    tarball = next((work / "build").glob("fleetmesh-tailscale-*.tar.gz"))
    dest = work / "collections"
    subprocess.run(  # noqa: S603 - fixed argv
        [galaxy, "collection", "install", str(tarball), "-p", str(dest)], cwd=work, env=env, check=True
    )
    assert (dest / "ansible_collections/fleetmesh/tailscale/playbooks/site.yml").is_file()
    return dest


def sh(script: str) -> str:
    proc = lab.exec_(NAME, ["sh", "-c", script], timeout=120)
    return proc.stdout + proc.stderr


def status() -> dict[str, Any]:
    return dict(json.loads(sh("tailscale status --json")))


@pytest.fixture(scope="module")
def box(work: Path) -> Iterator[Any]:
    """A sysvinit box whose telnet login needs a password nobody else knows."""
    lab.down(NAME)
    device = lab.up(NAME, "sysvinit", password=secrets.token_urlsafe(12))
    try:
        yield device
    finally:
        with contextlib.suppress(Exception):
            control.delete_node(int(status()["Self"]["ID"]))
        lab.down(NAME)


def private_data_dir(root: Path, device: Any, work: Path, mirror: str) -> tuple[Path, dict[str, str], list[str]]:
    """The job's private data dir as AWX lays it out; (dir, the secrets, the credentials' -e @FILE arguments)."""
    hv = site_host_vars(device, work, mirror)
    # The secrets come only from the credentials: none in the inventory (AWX's inventories hold no secrets).
    assert hv.pop("ansible_password") == device.password
    secret_values = {"telnet_password": device.password, "auth_key": hv.pop("login_auth_key")}
    (root / "project").mkdir(parents=True)
    (root / "project/site.yml").write_text(
        "---\n- name: Provision Tailscale (the collection's site playbook)\n"
        "  ansible.builtin.import_playbook: fleetmesh.tailscale.site\n"
    )
    (root / "inventory").mkdir()
    (root / "inventory/hosts").write_text(yaml.safe_dump({"sysvinit": {"hosts": {device.name: hv}}}))
    (root / "env").mkdir()
    # The job template's extra vars.
    (root / "env/extravars").write_text(yaml.safe_dump({"fleetmesh_serial": 10}))
    types = awx_credentials.load()
    cmdline = []
    for stem, inputs in (
        ("telnet_login", {"telnet_password": secret_values["telnet_password"]}),
        ("tailscale_auth_key", {"auth_key": secret_values["auth_key"]}),
    ):
        extra_vars, env = awx_credentials.inject(types[stem], inputs)
        assert not env
        path = awx_credentials.write_extra_vars(extra_vars, root / "env" / f"cred_{stem}")
        cmdline += ["-e", f"@{path}"]
    return root, secret_values, cmdline


def run_job(pdd: Path, ident: str, ee_bin: Path, collections: Path, cmdline: list[str], **kw: Any) -> Any:
    home = pdd.parent / "home"
    home.mkdir(exist_ok=True)
    envvars = {
        "HOME": str(home),
        # The runner starts `ansible-playbook` from this PATH: the EE venv's (checked in the -v header).
        "PATH": f"{ee_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_COLLECTIONS_PATH": str(collections),
        "ANSIBLE_NOCOLOR": "1",
    }
    return ansible_runner.run(
        private_data_dir=str(pdd),
        playbook="site.yml",
        ident=ident,
        cmdline=" ".join(cmdline),
        envvars=envvars,
        process_isolation=False,
        quiet=True,
        timeout=600,
        **kw,
    )


def events(pdd: Path, ident: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((pdd / "artifacts" / ident / "job_events").glob("*.json"))]


def test_site_through_ansible_runner(
    *,
    box: Any,
    work: Path,
    mirror: str,
    ee_bin: Path,
    collections_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    control.up()
    for key in [k for k in os.environ if k.startswith("ANSIBLE_")]:
        monkeypatch.delenv(key)  # the runner's child starts from os.environ: nothing of the checkout's config
    pdd, secret_values, cmdline = private_data_dir(work / "runner", box, work, mirror)
    defaults = collections_dir / "ansible_collections/fleetmesh/tailscale/roles/binary/defaults/main.yml"
    pinned = yaml.safe_load(defaults.read_text())["binary_version"]

    started = time.monotonic()
    first = run_job(pdd, "first", ee_bin, collections_dir, cmdline, verbosity=3)
    first_s = time.monotonic() - started
    out = (pdd / "artifacts/first/stdout").read_text()
    assert (first.status, first.rc) == ("successful", 0), out[-4000:]
    # ansible-playbook's -v header: the EE venv's executable and Python, no config file, the installed collection.
    assert f"executable location = {ee_bin / 'ansible-playbook'}" in out, out[:1500]
    assert f"({ee_bin}/python" in out and "config file = None" in out, out[:1500]
    assert f"ansible collection location = {collections_dir}" in out, out[:1500]
    assert first.stats["changed"].get(NAME, 0) > 0

    assert wait_for(lambda: status()["BackendState"] == "Running"), sh("tailscale status")
    assert status()["Version"].split("-")[0] == pinned
    assert "tailscaled" in sh("ps")

    # Every task came from the installed collection (or the project's playbook), none from the checkout.
    task_paths = {
        e["event_data"]["task_path"] for e in events(pdd, "first") if e.get("event_data", {}).get("task_path")
    }
    assert task_paths
    installed = str(collections_dir / "ansible_collections/fleetmesh/tailscale") + "/"
    assert all(p.startswith((installed, str(pdd / "project") + "/")) for p in task_paths), sorted(task_paths)[:5]

    second = run_job(pdd, "second", ee_bin, collections_dir, cmdline)
    assert (second.status, second.rc) == ("successful", 0), (pdd / "artifacts/second/stdout").read_text()[-4000:]
    assert second.stats["changed"].get(NAME, 0) == 0, second.stats
    assert not second.stats["failures"] and not second.stats["dark"]

    # Runner artifacts (what AWX stores and shows as the job's output and events) hold no secret, at -vvv either.
    for path in sorted((pdd / "artifacts").rglob("*")):
        if path.is_file():
            text = path.read_text(errors="replace")
            leaked = [name for name, value in secret_values.items() if value in text]
            assert not leaked, f"{leaked} in {path.relative_to(pdd)}"
    print(f"first run {first_s:.1f}s")
