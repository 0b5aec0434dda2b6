"""The collection's metadata is sane: galaxy.yml, meta/runtime.yml, roles' argument specs, profiles."""

from __future__ import annotations

import re

import yaml
from ansible.module_utils.compat.version import LooseVersion
from ansible.release import __version__ as ansible_version

from repo_checkout import REPO

SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$")


def load(rel: str) -> dict:
    return yaml.safe_load((REPO / rel).read_text())


def test_galaxy_identity_and_version() -> None:
    galaxy = load("galaxy.yml")
    assert galaxy["namespace"] == "fleetmesh"
    assert galaxy["name"] == "tailscale"
    assert SEMVER.match(galaxy["version"]), galaxy["version"]
    assert (REPO / galaxy["readme"]).is_file()
    assert galaxy["license"] == ["GPL-3.0-or-later"]
    license_text = (REPO / "LICENSE").read_text()
    assert "GNU GENERAL PUBLIC LICENSE" in license_text
    assert "Version 3, 29 June 2007" in license_text


def test_galaxy_build_ignore_covers_dev_only_files() -> None:
    ignored = set(load("galaxy.yml")["build_ignore"])
    for dev_only in (".venv", ".ci", ".collections", "Makefile", "ansible.cfg", "tests/lab", "tests/output"):
        assert dev_only in ignored, f"{dev_only} would ship in the built collection"
    for shipped in ("roles", "plugins", "playbooks", "meta", "README.md", "docs", "inventories"):
        assert shipped not in ignored


def test_runtime_requires_this_ansible() -> None:
    requires = load("meta/runtime.yml")["requires_ansible"]
    match = re.fullmatch(r">=(\d+\.\d+(?:\.\d+)?)", requires)
    assert match, requires
    assert LooseVersion(ansible_version) >= LooseVersion(match.group(1))


def test_changelog_config_names_the_collection() -> None:
    config = load("changelogs/config.yaml")
    assert config["title"] == "fleetmesh.tailscale"
    sections = {name for name, _title in config["sections"]} | {config["prelude_section_name"], "trivial"}
    fragments = sorted((REPO / "changelogs/fragments").glob("*.yml"))
    assert fragments, "no changelog fragment for unreleased changes"
    for fragment in fragments:
        unknown = set(yaml.safe_load(fragment.read_text())) - sections
        assert not unknown, f"{fragment.name}: unknown sections {unknown}"


def test_every_role_has_argument_specs_for_every_entry_point() -> None:
    roles = sorted(p for p in (REPO / "roles").iterdir() if p.is_dir())
    assert roles
    for role in roles:
        specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
        entry_points = {p.stem for p in (role / "tasks").glob("*.yml") if not p.stem.startswith("_")}
        # Task files that are only included from main are private: prefix them with "_" or give them a spec.
        assert "main" in specs, role.name
        assert entry_points <= set(specs), f"{role.name}: entry points without spec: {entry_points - set(specs)}"


def test_every_profile_defines_exactly_the_profile_keys() -> None:
    role_vars = load("roles/device/vars/main.yml")
    keys = set(role_vars["device_profile_keys"])
    files = {
        p.stem: yaml.safe_load(p.read_text())["device_profile_base"]
        for p in (REPO / "roles/device/vars/profiles").glob("*.yml")
    }
    assert set(files) == set(role_vars["device_profile_names"])
    for name, data in files.items():
        assert set(data) == keys, f"{name}: extra {set(data) - keys}, missing {keys - set(data)}"
    spec = load("roles/device/meta/argument_specs.yml")["argument_specs"]["main"]["options"]["device_profile"]
    assert set(spec["choices"]) == set(files)


def test_example_fleet_has_a_group_per_profile() -> None:
    inventory = load("inventories/fleet/hosts.yml")
    groups = set(inventory["all"]["children"])
    assert {"kobo", "quecopen", "sysvinit", "systemd", "netbsd", "rootfs"} <= groups
