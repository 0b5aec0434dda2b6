"""inventories/fleet, the annotated example, uses only variable names something in the collection reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
FLEET = REPO / "inventories" / "fleet"


def declared_names() -> set[str]:
    names: set[str] = set()
    for spec in (REPO / "roles").glob("*/meta/argument_specs.yml"):
        for entry in yaml.safe_load(spec.read_text())["argument_specs"].values():
            names.update(entry.get("options", {}))
    # Connection plugin options set by variables (DOCUMENTATION `vars:` entries).
    for plugin in (REPO / "plugins" / "connection").glob("*.py"):
        doc = re.search(r'DOCUMENTATION = r?"""(.*?)"""', plugin.read_text(), re.DOTALL)
        assert doc, plugin
        for option in yaml.safe_load(doc.group(1))["options"].values():
            names.update(v["name"] for v in option.get("vars", []))
    # Collection-wide switches the roles' defaults read (fleetmesh_state, fleetmesh_rootfs_dir, ...).
    for defaults in (REPO / "roles").glob("*/defaults/main.yml"):
        names.update(re.findall(r"\b(fleetmesh_\w+)\s*\|", defaults.read_text()))
    return names


def inventory_vars() -> dict[str, Path]:
    found: dict[str, Path] = {}

    def walk(group: dict[str, Any], source: Path) -> None:
        for hv in (group.get("hosts") or {}).values():
            found.update(dict.fromkeys(hv or {}, source))
        found.update(dict.fromkeys(group.get("vars") or {}, source))
        for child in (group.get("children") or {}).values():
            walk(child or {}, source)

    walk(yaml.safe_load((FLEET / "hosts.yml").read_text())["all"], FLEET / "hosts.yml")
    for path in [*FLEET.glob("group_vars/*.yml"), *FLEET.glob("group_vars/*/*.yml")]:
        found.update(dict.fromkeys(yaml.safe_load(path.read_text()) or {}, path))
    found.update(dict.fromkeys(yaml.safe_load((FLEET / "group_vars/all/vault.yml.example").read_text()), FLEET))
    return found


def test_fleet_example_uses_only_names_the_collection_reads() -> None:
    declared = declared_names()
    unknown = {
        name: str(path.relative_to(REPO))
        for name, path in inventory_vars().items()
        if not name.startswith(("ansible_", "vault_")) and name not in declared
    }
    assert not unknown, f"inventories/fleet sets variables nothing reads: {unknown}"


def test_vault_example_feeds_what_the_inventory_reads() -> None:
    text = "\n".join(p.read_text() for p in FLEET.rglob("*.yml"))
    used = set(re.findall(r"\b(vault_\w+)", text))
    offered = set(yaml.safe_load((FLEET / "group_vars/all/vault.yml.example").read_text()))
    assert used == offered
