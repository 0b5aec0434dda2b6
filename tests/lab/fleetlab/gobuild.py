"""Build Go programs of a pinned module version (the real Tailscale, headscale) into the lab's cache.

    python -m fleetlab.gobuild MODULE VERSION PKG [GOARCH]     # prints the path of the built binary

Each program is built once per machine: `go mod download MODULE@vVERSION` fetches the module through the Go
module proxy (the only way the lab fetches Go code), then `go build` runs inside that module's own directory of the
module cache, so the dependency versions are exactly the module's go.mod and go.sum (as `go install MODULE@V`
would pick them) and nothing is vendored or committed. Flags as tailscale's release builds: CGO_ENABLED=0,
-trimpath, GOARM=5 for arm, GOMIPS=softfloat for mips. Results live under /var/cache/fleetlab/go/, keyed by module,
version, GOOS/GOARCH and the ldflags, written by rename so a cut build never leaves half a binary.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fleetlab.state import CACHE_DIR, LabError

GO_CACHE_DIR = CACHE_DIR / "go"
# Per GOARCH, the extra environment of tailscale's release builds (release/dist/unixpkgs/targets.go, gocross).
ARCH_ENV = {
    "amd64": {},
    "386": {},
    "arm64": {},
    "arm": {"GOARM": "5"},
    "mips": {"GOMIPS": "softfloat"},
    "mipsle": {"GOMIPS": "softfloat"},
    "riscv64": {},
}


def go_command() -> str:
    """The go binary: on PATH, or where the official toolchain installs itself (/usr/local/go/bin/go)."""
    found = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if not found:
        raise LabError("no Go toolchain: run 'make deps' (it installs one) or put go on PATH")
    return found


def _go_env() -> dict[str, str]:
    env = os.environ.copy()
    env.setdefault("GOFLAGS", "-mod=readonly")
    env["CGO_ENABLED"] = "0"
    # The module proxy is the one source; no checksum database lookups outside it (GONOSUMDB not needed: sumdb
    # requests go through the proxy as well), and no toolchain switch behind our back.
    env.setdefault("GOTOOLCHAIN", "local")
    return env


def module_dir(module: str, version: str) -> tuple[Path, str]:
    """Download MODULE@vVERSION (cached by go itself) and return its directory and the VCS commit it came from."""
    proc = subprocess.run(
        [go_command(), "mod", "download", "-json", f"{module}@v{version}"],
        capture_output=True,
        text=True,
        env=_go_env(),
        check=False,
    )
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError:
        info = {}
    if proc.returncode != 0 or "Dir" not in info:
        detail = info.get("Error") or proc.stderr.strip() or proc.stdout.strip()
        raise LabError(f"go mod download {module}@v{version} failed: {detail}")
    return Path(info["Dir"]), str(info.get("Origin", {}).get("Hash", ""))


def binary(module: str, version: str, pkg: str, goarch: str = "amd64", ldflags: str = "") -> Path:
    """Path of PKG (e.g. "cmd/tailscaled") of MODULE at VERSION built for linux/GOARCH; builds it if needed."""
    if goarch not in ARCH_ENV:
        raise LabError(f"unknown GOARCH {goarch!r}; the lab builds {', '.join(sorted(ARCH_ENV))}")
    key = hashlib.sha256(json.dumps([module, version, pkg, goarch, ldflags, ARCH_ENV[goarch]]).encode()).hexdigest()
    name = pkg.rstrip("/").rsplit("/", 1)[-1]
    out = GO_CACHE_DIR / f"{module.replace('/', '_')}@{version}" / f"linux_{goarch}-{key[:12]}" / name
    if out.is_file():
        return out
    src, _commit = module_dir(module, version)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{name}.{os.getpid()}.tmp")
    env = _go_env() | {"GOOS": "linux", "GOARCH": goarch} | ARCH_ENV[goarch]
    cmd = [go_command(), "build", "-trimpath", "-o", str(tmp)]
    if ldflags:
        cmd += ["-ldflags", ldflags]
    cmd.append(f"./{pkg}")
    print(f"fleetlab: building {module}/{pkg} v{version} for linux/{goarch}", file=sys.stderr, flush=True)
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise LabError(f"go build {module}/{pkg}@v{version} ({goarch}) failed: {proc.stderr.strip()[-2000:]}")
    tmp.replace(out)
    print(f"fleetlab: built {out} in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (3, 4):
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        print(binary(*args))
    except LabError as err:
        print(f"fleetlab: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
