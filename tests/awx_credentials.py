"""The AWX custom credential types of extensions/awx/credential_types, loaded and injected the way AWX does it.

AWX renders each injector template with the credential's inputs in a sandboxed Jinja environment (nested dicts and
lists of extra_vars rendered leaf by leaf; a field left empty renders as an empty string), writes the extra vars to
a YAML file under the private data dir's env/ with every string tagged ``!unsafe`` (its ``safe_dump``), and passes
that file to ansible-playbook as ``-e @FILE``; env injectors become the job's (and inventory update's) environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

from repo_checkout import REPO

TYPES_DIR = REPO / "extensions" / "awx" / "credential_types"


def load() -> dict[str, dict[str, Any]]:
    """Every credential type definition by its file's stem."""
    return {path.stem: yaml.safe_load(path.read_text()) for path in sorted(TYPES_DIR.glob("*.yml"))}


def credential_inputs(ctype: dict[str, Any], given: dict[str, str]) -> dict[str, str]:
    """A credential's inputs as AWX stores them: the given values over the fields' defaults; required ones present."""
    fields = ctype["inputs"]["fields"]
    inputs = {f["id"]: f["default"] for f in fields if "default" in f}
    inputs.update(given)
    missing = [r for r in ctype["inputs"].get("required", []) if not inputs.get(r)]
    unknown = sorted(set(given) - {f["id"] for f in fields})
    if missing or unknown:
        raise ValueError(f"{ctype['name']}: missing required inputs {missing}, unknown inputs {unknown}")
    return inputs


def inject(ctype: dict[str, Any], given: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(extra_vars, env) of one credential of ctype with the given inputs, rendered as AWX renders them."""
    env = ImmutableSandboxedEnvironment()
    namespace = credential_inputs(ctype, given)

    def render(node: Any) -> Any:
        if isinstance(node, dict):
            return {render(k): render(v) for k, v in node.items()}
        if isinstance(node, list):
            return [render(x) for x in node]
        return env.from_string(node).render(**namespace)

    injectors = ctype.get("injectors", {})
    return render(injectors.get("extra_vars", {})), {k: render(v) for k, v in injectors.get("env", {}).items()}


class _UnsafeDumper(yaml.SafeDumper):
    """AWX's SafeStringDumper: every string (keys included) as an ``!unsafe`` scalar."""

    def represent_data(self, data: Any) -> Any:
        if isinstance(data, str):
            return self.represent_scalar("!unsafe", data)
        return super().represent_data(data)


def write_extra_vars(extra_vars: dict[str, Any], path: Path) -> Path:
    """The credential's extra vars file as AWX writes it (owner-read-only, strings !unsafe)."""
    path.write_text(yaml.dump(extra_vars, Dumper=_UnsafeDumper))
    path.chmod(0o400)
    return path
