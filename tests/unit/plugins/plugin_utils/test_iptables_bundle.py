"""iptables bundle manifests become exactly the files and links the shim installs; bad manifests are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._iptables_bundle import BundleError, bundle_plan

# The format fleetlab/bundles.py writes (Debian's xtables-legacy-multi and libraries).
MANIFEST: dict[str, Any] = {
    "arch": "armhf",
    "binary": "sbin/xtables-legacy-multi",
    "libs": ["lib/libxtables.so.12.7.0", "lib/libip4tc.so.2.0.0", "lib/libip6tc.so.2.0.0"],
    "soname_links": {
        "libxtables.so.12": "libxtables.so.12.7.0",
        "libip4tc.so.2": "libip4tc.so.2.0.0",
        "libip6tc.so.2": "libip6tc.so.2.0.0",
    },
    "commands": ["iptables", "ip6tables"],
    "xtables_libdir": "xtables",
}


def plan(manifest: dict[str, Any], bundle: str = "/b", extensions: tuple[str, ...] = ()) -> dict[str, Any]:
    return bundle_plan(manifest, bundle, "/mnt/onboard/.tailscale/iptables", "/lib", "/usr/sbin", extensions=extensions)


def test_seed_layout() -> None:
    out = plan(MANIFEST)
    assert [f["dest"] for f in out["files"]] == [
        "/mnt/onboard/.tailscale/iptables/sbin/xtables-legacy-multi",
        "/mnt/onboard/.tailscale/iptables/lib/libxtables.so.12.7.0",
        "/mnt/onboard/.tailscale/iptables/lib/libip4tc.so.2.0.0",
        "/mnt/onboard/.tailscale/iptables/lib/libip6tc.so.2.0.0",
    ]
    links = {lk["path"]: lk["target"] for lk in out["links"]}
    assert links["/lib/libxtables.so.12"] == "/mnt/onboard/.tailscale/iptables/lib/libxtables.so.12.7.0"
    assert links["/usr/sbin/ip6tables"] == "/mnt/onboard/.tailscale/iptables/sbin/xtables-legacy-multi"
    assert len(links) == 5
    assert out["command"] == "/usr/sbin/iptables"
    assert out["environment"] == {}


def test_extensions_and_xtables_libdir(tmp_path: Path) -> None:
    (tmp_path / "xtables").mkdir()
    (tmp_path / "xtables/libxt_mark.so").write_bytes(b"\x7fELF")
    out = plan(MANIFEST, str(tmp_path), ("libxt_mark.so",))
    assert out["files"][-1]["dest"] == "/mnt/onboard/.tailscale/iptables/xtables/libxt_mark.so"
    assert out["environment"] == {"XTABLES_LIBDIR": "/mnt/onboard/.tailscale/iptables/xtables"}
    with pytest.raises(BundleError, match="extension 'libxt_nope.so' is not in the bundle"):
        plan(MANIFEST, str(tmp_path), ("libxt_nope.so",))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"binary": "../../bin/sh"}, "must be a relative path inside the bundle"),
        ({"libs": ["/lib/libc.so.6"]}, "must be a relative path inside the bundle"),
        ({"soname_links": {"libxtables.so.12": "libmissing.so.1"}}, "must be one of the bundle's libs"),
        ({"soname_links": {"../x": "libxtables.so.12.7.0"}}, "must be one of the bundle's libs"),
        ({"commands": ["ipt ables"]}, "is not a plain name"),
        ({"commands": []}, "non-empty list"),
    ],
)
def test_bad_manifests_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(BundleError, match=message):
        plan({**MANIFEST, **change})


def test_missing_key_is_named() -> None:
    broken = {k: v for k, v in MANIFEST.items() if k != "soname_links"}
    with pytest.raises(BundleError, match="the manifest has no 'soname_links'"):
        plan(broken)
