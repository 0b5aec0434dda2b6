"""Real iptables bundles for the shim role: Debian's xtables-legacy-multi and its libraries, per architecture.

Layout of /var/cache/fleetlab/bundles/<arch>/:
    sbin/xtables-legacy-multi
    lib/libxtables.so.12.x.y, lib/libip4tc.so.2.x.y, lib/libip6tc.so.2.x.y   (real files)
    xtables/lib*.so                                                          (match/target extensions)
    manifest.json  {"arch", "binary", "libs", "soname_links", "commands", "xtables_libdir", "packages"}
The bundle is what the blog copied off a firmware image (xtables-multi + libip4tc/libip6tc/libxtables): a
provisioning role copies it to a device, creates the soname links and the command links listed in the manifest.
It needs the device's glibc (present on every lab device, as on the real Kobo) and is not installed by default.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from fleetlab.rootfs import extract_deb, fetch_debs
from fleetlab.state import CACHE_DIR

BUNDLES_DIR = CACHE_DIR / "bundles"
ARCHES = ("armhf", "amd64")
TRIPLETS = {"armhf": "arm-linux-gnueabihf", "amd64": "x86_64-linux-gnu"}
PACKAGES = ("iptables", "libxtables12", "libip4tc2", "libip6tc2")
LIB_STEMS = ("libxtables.so", "libip4tc.so", "libip6tc.so")
BINARY = "xtables-legacy-multi"
# Command names xtables-legacy-multi answers to (it dispatches on argv[0]).
COMMANDS = (
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
    "iptables-legacy",
    "ip6tables-legacy",
)
# Bump when the layout changes.
BUNDLE_VERSION = "1"


def bundle_dir(arch: str) -> Path:
    return BUNDLES_DIR / arch


def manifest(arch: str) -> dict[str, object]:
    return json.loads((bundle_dir(arch) / "manifest.json").read_text())


def ensure_bundle(arch: str) -> Path:
    """Extract the bundle for arch once (idempotent); returns its directory."""
    debs = fetch_debs(list(PACKAGES), arch)
    final = bundle_dir(arch)
    if (final / "manifest.json").exists() and manifest(arch).get("packages") == [d.name for d in debs]:
        return final
    print(f"fleetlab: extracting iptables bundle for {arch} into {final}", file=sys.stderr)
    BUNDLES_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fleetlab-ipt-") as scratch:
        unpacked = Path(scratch) / "x"
        for deb in debs:
            extract_deb(deb, unpacked)
        libdir = unpacked / "usr/lib" / TRIPLETS[arch]
        work = Path(tempfile.mkdtemp(prefix=f".{arch}-", dir=BUNDLES_DIR))
        (work / "sbin").mkdir()
        (work / "lib").mkdir()
        shutil.copy2(unpacked / "usr/sbin" / BINARY, work / "sbin" / BINARY)
        libs: list[str] = []
        links: dict[str, str] = {}
        for stem in LIB_STEMS:
            for path in sorted(libdir.glob(f"{stem}.*")):
                if path.is_symlink():
                    continue
                shutil.copy2(path, work / "lib" / path.name)
                libs.append(path.name)
                # Soname link: libxtables.so.12.0.0 -> libxtables.so.12 (the name the binary asks the loader for).
                major = path.name.split(".so.")[1].split(".")[0]
                links[f"{stem}.{major}"] = path.name
        shutil.copytree(libdir / "xtables", work / "xtables")
        data = {
            "arch": arch,
            "version": BUNDLE_VERSION,
            "binary": f"sbin/{BINARY}",
            "libs": [f"lib/{name}" for name in libs],
            "soname_links": links,
            "commands": list(COMMANDS),
            "xtables_libdir": "xtables",
            "needs": ["glibc (libc.so.6)"],
            "packages": [d.name for d in debs],
        }
        (work / "manifest.json").write_text(json.dumps(data, indent=2) + "\n")
        work.chmod(0o755)
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
    return final
