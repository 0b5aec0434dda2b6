"""The AWX custom credential types (extensions/awx/credential_types): valid AWX definitions whose every secret
field is marked secret and whose every injected extra var or environment variable is one the collection reads.

"Reads" means: a variable a connection plugin documents (``vars:``), an option of a role's argument specs, or a
variable the roles' defaults take their value from (``fleetmesh_control``); an environment variable a plugin
documents (``env:``). tests/integration/test_runner_lab.py injects the lab's secrets through these same files.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import awx_credentials
import jinja2
import jinja2.meta
import pytest
import yaml
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _control_api

from repo_checkout import REPO

TYPES = awx_credentials.load()
SECRET_ID = re.compile(r"password|secret|key|token")


def _plugin_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((REPO / "plugins").glob("*/*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "DOCUMENTATION" for t in node.targets):
                docs.append(yaml.safe_load(ast.literal_eval(node.value)))
    return docs


def _documented(kind: str) -> set[str]:
    """Names every plugin documents under its options' ``vars:`` or ``env:``."""
    return {
        entry["name"]
        for doc in _plugin_docs()
        for option in (doc.get("options") or {}).values()
        for entry in option.get(kind, []) or []
    }


def _role_vars() -> set[str]:
    names: set[str] = set()
    for spec in sorted(REPO.glob("roles/*/meta/argument_specs.yml")):
        for entry in yaml.safe_load(spec.read_text())["argument_specs"].values():
            names.update(entry.get("options", {}))
    for defaults in sorted(REPO.glob("roles/*/defaults/main.yml")):
        names.update(re.findall(r"\{\{[^}]*?\b(fleetmesh_\w+)", defaults.read_text()))
    return names


READ_VARS = _documented("vars") | _role_vars()
READ_ENV = _documented("env")


def test_the_four_types_are_there() -> None:
    assert set(TYPES) == {"telnet_login", "adb_login", "tailscale_auth_key", "control_api"}


@pytest.mark.parametrize("stem", sorted(TYPES))
def test_an_awx_credential_type(stem: str) -> None:
    ctype = TYPES[stem]
    assert ctype["name"].startswith("fleetmesh ")
    assert ctype["kind"] in ("cloud", "net")  # the kinds AWX allows for custom types
    assert set(ctype) <= {"name", "description", "kind", "inputs", "injectors"}
    assert set(ctype["injectors"]) <= {"extra_vars", "env"}
    fields = {f["id"]: f for f in ctype["inputs"]["fields"]}
    assert all(f["type"] == "string" and f.get("label") for f in fields.values())
    assert set(ctype["inputs"].get("required", [])) <= set(fields)
    # Every field that holds a secret is masked by AWX (and in its API), every masked one is a secret.
    for fid, field in fields.items():
        assert bool(field.get("secret")) == bool(SECRET_ID.search(fid)), fid
    # Templates use declared fields only, and every field is injected somewhere.
    used: set[str] = set()
    for template in _leaves(ctype["injectors"]):
        used |= jinja2.meta.find_undeclared_variables(jinja2.Environment(autoescape=False).parse(template))
    assert used == set(fields), stem


def _leaves(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [leaf for v in node.values() for leaf in _leaves(v)]
    if isinstance(node, list):
        return [leaf for v in node for leaf in _leaves(v)]
    return [node]


@pytest.mark.parametrize("stem", sorted(TYPES))
def test_injects_what_the_collection_reads(stem: str) -> None:
    injectors = TYPES[stem]["injectors"]
    assert set(injectors.get("extra_vars", {})) <= READ_VARS
    assert set(injectors.get("env", {})) <= READ_ENV


def test_door_passwords_are_read_after_ansible_password() -> None:
    """The plugins take the last of their ``vars:`` that is set: the injected password wins over the inventory's."""
    telnet, adb = (next(d for d in _plugin_docs() if d.get("name") == name) for name in ("telnet", "adb"))
    assert [v["name"] for v in telnet["options"]["password"]["vars"]][-1] == "fleetmesh_telnet_password"
    assert [v["name"] for v in adb["options"]["password"]["vars"]][-1] == "fleetmesh_adb_password"


def test_control_api_renders_a_valid_control_option() -> None:
    """Rendered as AWX does (defaults filled, empty fields empty strings): the control option's keys, and a client
    for each kind of server."""
    ctype = TYPES["control_api"]
    headscale, env = awx_credentials.inject(ctype, {"url": "https://hs.example.org", "api_key": "hskey-api-x"})
    control = headscale["fleetmesh_control"]
    assert set(control) <= set(_control_api.CONTROL_SPEC)
    assert control["type"] == "headscale" and control["user"] == ""
    assert isinstance(_control_api.client(control), _control_api.Headscale)
    assert env["FLEETMESH_CONTROL_API_KEY"] == "hskey-api-x"
    oauth = awx_credentials.inject(
        ctype, {"type": "tailscale", "oauth_client_id": "k1", "oauth_client_secret": "tskey-client-x"}
    )[0]
    client = _control_api.client(oauth["fleetmesh_control"])
    assert isinstance(client, _control_api.TailscaleV2) and client.url == _control_api.TAILSCALE_API


def test_missing_required_input_is_refused() -> None:
    with pytest.raises(ValueError, match="missing required"):
        awx_credentials.inject(TYPES["tailscale_auth_key"], {})


def test_extra_vars_file_is_unsafe_tagged(tmp_path: Path) -> None:
    """As AWX writes it: every string !unsafe, so a secret with ``{{`` is never templated; ansible loads it back."""
    from ansible.parsing.dataloader import DataLoader

    extra = awx_credentials.inject(TYPES["telnet_login"], {"telnet_password": "p{{ w }}"})[0]
    path = awx_credentials.write_extra_vars(extra, tmp_path / "cred")
    assert "!unsafe" in path.read_text()
    assert DataLoader().load_from_file(str(path)) == {"fleetmesh_telnet_password": "p{{ w }}"}
