"""The lab's control plane: real headscale (v0.29.2) and tailscale's derper (the clients' version), offline.

from fleetlab import control
url = control.up()                                   # http://198.18.0.2:8080 (idempotent)
with control.borrowed() as url: ...                  # up for one run, down after it unless it was up before
key = control.mint_key(tags=("tag:lab",))            # a pre-auth key; a secret: keep it off device command lines
control.nodes()                                      # `headscale nodes list -o json`, parsed
control.down()

Both run in a netns of their own, `fleetlab-ctl`, attached to the lab bridge like a device (veth host side
`flv-ctl`) at the fixed lab address 198.18.0.2/15 (devices use .10 up, the bridge/host is .1), with no default
route like a device's (netns.create_device_net): neither needs one, all their clients are on the lab subnet:

- headscale on http://198.18.0.2:8080 (plain HTTP; 198.18/15 is not "private" to tailscale, so a re-dial within 2
  minutes falls back to https on 443, docs/lab.md), sqlite, noise key, policy, DERP map, unix socket and logs
  all in /run/fleetlab/control/;
- derper on https://198.18.0.2:8443 (-certmode manual with the IP as hostname: derper makes a self-signed
  certificate for it on its first start) and STUN on udp 3478, no HTTP port, no client verification. The DERP map
  headscale hands out names only this relay and pins its certificate (`CertName: sha256-raw:<hex>`), so clients
  verify it for real instead of skipping verification (InsecureForTests).

Each process is recorded as /run/fleetlab/control-<headscale|derper>.json ({"pid", "starttime"}, see
state.ProcRef); `down` kills exactly those pids, removes the netns, veth and /run/fleetlab/control/ (a fresh
tailnet each `up`), then lets the lab drop the bridge if nothing else uses it. The headscale CLI runs on the host
against the unix socket (a path socket crosses network namespaces) with the control's config.

Nothing here calls outside the lab: update check off, logtail off, no DERP map URL, no ACME, no remote gRPC,
no metrics listener, and a node attribute turns off the clients' captive-portal probes (which would otherwise try
controlplane.tailscale.com).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fleetlab import boot, gobuild, netns
from fleetlab.state import BRIDGE, DEVICES_DIR, RUN_DIR, LabError, ProcRef, locked

HEADSCALE_MODULE = "github.com/juanfont/headscale"
HEADSCALE_VERSION = "0.29.2"
DERPER_MODULE = "tailscale.com"
DERPER_VERSION = "1.98.10"  # the clients' version (fleetlab.tailscale_release.NEW_VERSION)

NAME = "ctl"  # netns fleetlab-ctl, veth flv-ctl: the names a lab device called "ctl" would get
NETNS = f"fleetlab-{NAME}"
VETH_HOST = f"flv-{NAME}"
ADDRESS = "198.18.0.2"
HTTP_PORT = 8080
DERP_PORT = 8443
STUN_PORT = 3478
DERP_REGION_ID = 900
CONTROL_URL = f"http://{ADDRESS}:{HTTP_PORT}"

CONTROL_DIR = RUN_DIR / "control"
# Service record names (lab.SERVICE_RECORDS lists them so the bridge stays while they run).
RECORD_NAMES = ("control-headscale", "control-derper")

LAB_USER = "lab"
TAGS = (
    "tag:fleetmesh",
    "tag:fleetmesh-kobo",
    "tag:fleetmesh-quecopen",
    "tag:fleetmesh-sysvinit",
    "tag:fleetmesh-systemd",
    "tag:lab",
)
AUTO_APPROVED_ROUTES = ("192.168.225.0/24", "fd00:225::/64")
PREFIX_V4 = "100.64.0.0/10"
PREFIX_V6 = "fd7a:115c:a1e0::/48"

READY_TIMEOUT = 60.0
CLI_TIMEOUT = 30.0


def _record(name: str) -> Path:
    return RUN_DIR / f"{name}.json"


def _paths() -> dict[str, Path]:
    d = CONTROL_DIR
    return {
        "config": d / "headscale.yaml",
        "policy": d / "policy.hujson",
        "derpmap": d / "derpmap.yaml",
        "db": d / "db.sqlite",
        "noise": d / "noise_private.key",
        "socket": d / "headscale.sock",
        "certdir": d / "derper-certs",
        "derper_key": d / "derper.key",
        "headscale_log": d / "headscale.log",
        "derper_log": d / "derper.log",
    }


# ------------------------------------------------------------------------------------------------------- config


def headscale_config() -> str:
    """headscale's config.yaml. Keys 0.29.2 requires (validateServerConfig/LoadServerConfig) are marked below."""
    p = _paths()
    return f"""\
# fleetlab control plane (headscale v{HEADSCALE_VERSION}); written by fleetlab/control.py, gone at `control down`.
server_url: {CONTROL_URL}
listen_addr: {ADDRESS}:{HTTP_PORT}
metrics_listen_addr: ""            # no debug/metrics listener
grpc_listen_addr: 127.0.0.1:50443  # unused: no TLS and grpc_allow_insecure false, so no remote gRPC
grpc_allow_insecure: false
unix_socket: {p["socket"]}         # the CLI's way in (default /var/run/headscale/headscale.sock)
unix_socket_permission: "0700"
disable_check_updates: true        # else every CLI run asks GitHub for the latest release
noise:
  private_key_path: {p["noise"]}   # required: fatal when empty
prefixes:                          # required: at least one (ErrNoPrefixConfigured)
  v4: {PREFIX_V4}
  v6: {PREFIX_V6}
  allocation: sequential
derp:
  server:
    enabled: false
  urls: []                         # default would fetch controlplane.tailscale.com/derpmap/default
  paths:                           # required in effect: an empty DERP map is fatal at start
    - {p["derpmap"]}
  auto_update_enabled: false
database:
  type: sqlite                     # required: no default (fatal "invalid database type")
  sqlite:
    path: {p["db"]}
    write_ahead_log: true
policy:
  mode: file
  path: {p["policy"]}
dns:
  magic_dns: false                 # default true, which requires base_domain
  override_local_dns: false        # default true, which requires nameservers.global
  base_domain: ""
  nameservers:
    global: []
logtail:
  enabled: false
log:
  level: info
  format: text
"""


def policy() -> str:
    """The tailnet policy (HuJSON): lab@ owns the collection's tags, everything may reach everything."""
    owners = ",\n".join(f'    "{tag}": ["{LAB_USER}@"]' for tag in TAGS)
    tags = ", ".join(f'"{tag}"' for tag in TAGS)
    routes = ",\n".join(f'      "{route}": [{tags}]' for route in AUTO_APPROVED_ROUTES)
    return f"""\
// fleetlab control plane policy (headscale v{HEADSCALE_VERSION}, policy v2). Written by fleetlab/control.py.
{{
  // Users are written with a trailing "@" since headscale 0.26.
  "tagOwners": {{
{owners},
  }},
  "acls": [
    // The lab tests provisioning, not policy: allow everything.
    {{"action": "accept", "src": ["*"], "dst": ["*:*"]}},
  ],
  "autoApprovers": {{
    "routes": {{
{routes},
    }},
    "exitNode": [{tags}],
  }},
  "nodeAttrs": [
    // Captive-portal detection would probe controlplane.tailscale.com and login.tailscale.com: not in the lab.
    {{"target": ["*"], "attr": ["disable-captive-portal-detection"]}},
  ],
}}
"""


def derp_map(cert_name: str) -> str:
    """The DERP map file for derp.paths: YAML read by gopkg.in/yaml.v3 into tailcfg.DERPMap.

    tailcfg has no yaml tags, so the keys are the Go field names lowercased (`insecurefortests`, `certname`, ...),
    not the JSON names.
    """
    return f"""\
# fleetlab DERP map: only the lab relay (derper v{DERPER_VERSION} in the control namespace).
regions:
  {DERP_REGION_ID}:
    regionid: {DERP_REGION_ID}
    regioncode: fleetlab
    regionname: fleetlab lab relay
    nodes:
      - name: {DERP_REGION_ID}a
        regionid: {DERP_REGION_ID}
        hostname: "{ADDRESS}"
        ipv4: "{ADDRESS}"
        ipv6: none
        certname: "{cert_name}"
        derpport: {DERP_PORT}
        stunport: {STUN_PORT}
"""


def cert_pin(cert_pem: Path) -> str:
    """`sha256-raw:<hex>` of the certificate's DER bytes, the form derper prints for a self-signed IP cert."""
    text = cert_pem.read_text()
    body = text.split("-----BEGIN CERTIFICATE-----", 1)[1].split("-----END CERTIFICATE-----", 1)[0]
    return "sha256-raw:" + hashlib.sha256(base64.b64decode("".join(body.split()))).hexdigest()


# ------------------------------------------------------------------------------------------------------ binaries


def binaries() -> dict[str, Path]:
    """headscale and derper, built once per machine into /var/cache/fleetlab/go (fleetlab.gobuild)."""
    return {
        "headscale": gobuild.binary(HEADSCALE_MODULE, HEADSCALE_VERSION, "cmd/headscale"),
        "derper": gobuild.binary(DERPER_MODULE, DERPER_VERSION, "cmd/derper"),
    }


def _env() -> dict[str, str]:
    """A clean environment: no HEADSCALE_* overrides (viper reads them), no proxies, HOME in the control dir."""
    return {"PATH": boot.DEVICE_PATH, "HOME": str(CONTROL_DIR), "LANG": "C.UTF-8"}


# ------------------------------------------------------------------------------------------------------ records


def _load_ref(name: str) -> ProcRef | None:
    try:
        return ProcRef(**json.loads(_record(name).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _save_ref(name: str, ref: ProcRef) -> None:
    tmp = _record(name).with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"pid": ref.pid, "starttime": ref.starttime}) + "\n")
    tmp.replace(_record(name))


def _running() -> bool:
    refs = [_load_ref(name) for name in RECORD_NAMES]
    return all(ref is not None and ref.alive() for ref in refs)


def status() -> str | None:
    """The control URL if both recorded processes are alive, else None (from the records only, no probe)."""
    return CONTROL_URL if _running() else None


def url() -> str:
    return CONTROL_URL


# ------------------------------------------------------------------------------------------------------ up/down


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start argv inside the control netns (nsenter execs it: the pid is the program's own)."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{NETNS}", "--", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
            cwd=CONTROL_DIR,
            start_new_session=True,
        )


def _fail(proc: subprocess.Popen[bytes], what: str, log: Path, detail: str) -> LabError:
    tail = ""
    with contextlib.suppress(OSError):
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
    code = proc.poll()
    state = f"exited with {code}" if code is not None else "still running"
    return LabError(f"{what} {detail} ({state}; see {log}): {tail}")


def _check_attached() -> None:
    """The veth must still be a port of the bridge: a concurrent `down` of the last device may remove the bridge
    between ensure_bridge() and the first record (it reads the records, and there were none yet)."""
    master = Path(f"/sys/class/net/{VETH_HOST}/master")
    if not master.exists() or master.resolve().name != BRIDGE:
        raise LabError(f"the lab bridge {BRIDGE} went away while the control plane started: run it again")


def _wait_derper(proc: subprocess.Popen[bytes], cert: Path, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise _fail(proc, "derper", log, "did not start")
        _check_attached()
        if cert.is_file():
            with contextlib.suppress(LabError):
                boot.wait_tcp(ADDRESS, DERP_PORT, timeout=0.5)
                return
        if time.monotonic() > deadline:
            raise _fail(proc, "derper", log, f"did not listen on {ADDRESS}:{DERP_PORT} within {READY_TIMEOUT:.0f} s")
        time.sleep(0.1)


def _health() -> dict[str, Any] | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{CONTROL_URL}/health", timeout=2) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def _wait_headscale(proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise _fail(proc, "headscale", log, "did not start")
        _check_attached()
        health = _health()
        if health is not None and health.get("status") == "pass":
            return
        if time.monotonic() > deadline:
            raise _fail(proc, "headscale", log, f"not healthy on {CONTROL_URL}/health within {READY_TIMEOUT:.0f} s")
        time.sleep(0.1)


def up() -> str:
    """Start derper and headscale (idempotent: if the recorded processes are alive, just return the URL)."""
    from fleetlab import lab

    lab.require_root()
    if _running():
        return CONTROL_URL
    bins = binaries()  # may build for minutes: outside the lab lock
    p = _paths()
    with locked():
        if _running():
            return CONTROL_URL
        if (DEVICES_DIR / NAME).exists():
            raise LabError(f"a lab device named {NAME!r} holds the control plane's netns name: fleetlab down {NAME}")
        _stop_locked()  # leftovers of a crashed control plane
        CONTROL_DIR.mkdir(parents=True, mode=0o700)
        p["certdir"].mkdir(mode=0o700)
        netns.ensure_bridge()
        netns.create_device_net(NETNS, VETH_HOST, ADDRESS)
        try:
            derper = _spawn(
                [
                    str(bins["derper"]),
                    "-a",
                    f"{ADDRESS}:{DERP_PORT}",
                    "-http-port",
                    "-1",
                    "-stun-port",
                    str(STUN_PORT),
                    "-certmode",
                    "manual",
                    "-certdir",
                    str(p["certdir"]),
                    "-hostname",
                    ADDRESS,
                    "-c",
                    str(p["derper_key"]),
                    "-verify-clients=false",
                    "-mesh-psk-file",
                    "",
                ],
                p["derper_log"],
            )
            _save_ref(RECORD_NAMES[1], ProcRef.of(derper.pid))
            cert = p["certdir"] / f"{ADDRESS}.crt"
            _wait_derper(derper, cert, p["derper_log"])
            p["derpmap"].write_text(derp_map(cert_pin(cert)))
            p["policy"].write_text(policy())
            p["config"].write_text(headscale_config())
            headscale = _spawn([str(bins["headscale"]), "-c", str(p["config"]), "serve"], p["headscale_log"])
            _save_ref(RECORD_NAMES[0], ProcRef.of(headscale.pid))
            _wait_headscale(headscale, p["headscale_log"])
            _ensure_user()
        except BaseException:
            with contextlib.suppress(Exception):
                logs = _keep_logs()
                _stop_locked()
                if logs:
                    print(f"fleetlab: control plane logs kept in {logs}", file=sys.stderr)
            raise
    return CONTROL_URL


def _keep_logs() -> Path | None:
    """On a failed `up`, keep the logs next to the records (the control dir goes with the teardown)."""
    kept = RUN_DIR / "control-failed-logs"
    p = _paths()
    found = [p[k] for k in ("headscale_log", "derper_log") if p[k].is_file()]
    if not found:
        return None
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir(parents=True)
    for path in found:
        shutil.copy2(path, kept / path.name)
    return kept


def _kill(ref: ProcRef) -> None:
    if not ref.alive():
        return
    os.kill(ref.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while ref.alive() and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(ref.pid, os.WNOHANG)  # our own child when up and down run in one process
        time.sleep(0.02)
    if ref.alive():
        os.kill(ref.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while ref.alive() and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(ref.pid, os.WNOHANG)
            time.sleep(0.02)
    if ref.alive():
        raise LabError(f"control plane process {ref.pid} still alive after SIGKILL")


def _stop_locked() -> None:
    for name in RECORD_NAMES:  # headscale first: it holds the clients; then the relay
        ref = _load_ref(name)
        if ref is not None:
            _kill(ref)
        _record(name).unlink(missing_ok=True)
        _record(name).with_suffix(".json.tmp").unlink(missing_ok=True)
    netns.remove_device_net(NETNS, VETH_HOST)
    shutil.rmtree(CONTROL_DIR, ignore_errors=True)


def down() -> None:
    """Stop the control plane: its recorded pids, its netns and veth, its files. Idempotent."""
    from fleetlab import lab

    lab.require_root()
    with locked():
        _stop_locked()
    lab.release_bridge_if_idle()


@contextlib.contextmanager
def borrowed() -> Iterator[str]:
    """The control plane for one run (a benchmark): started if it was not running and stopped again at the end;
    one that was running before (someone's `fleetlab control up`, a test session) is used and left running."""
    started = status() is None
    control_url = up()
    try:
        yield control_url
    finally:
        if started:
            down()


# ------------------------------------------------------------------------------------------------ headscale CLI


def headscale(*args: str, json_output: bool = True) -> Any:
    """Run the headscale CLI with the control's config (on the host, through the unix socket); parsed JSON."""
    if not _running():
        raise LabError("the control plane is not running (fleetlab control up)")
    exe = binaries()["headscale"]
    cmd = [str(exe), "-c", str(_paths()["config"]), *args]
    if json_output:
        cmd += ["-o", "json"]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=_env(), cwd=CONTROL_DIR, timeout=CLI_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"headscale {args[0]} {args[1] if len(args) > 1 else ''}: timed out") from None
    if proc.returncode != 0:
        # Error output names the failing call, never a key (keys are only in successful output).
        detail = (proc.stderr.strip() or proc.stdout.strip())[-500:]
        raise LabError(f"headscale {' '.join(args[:2])} failed: {detail}")
    if not json_output:
        return proc.stdout
    out = proc.stdout.strip()
    return json.loads(out) if out else None


def _ensure_user() -> int:
    """The "lab" user's numeric ID (0.26+ refers to users by ID); created on first use."""
    users = headscale("users", "list", "--name", LAB_USER) or []
    for user in users:
        if user.get("name") == LAB_USER:
            return int(user["id"])
    created = headscale("users", "create", LAB_USER)
    return int(created["id"])


def user_id() -> int:
    return _ensure_user()


def mint_key(
    *, reusable: bool = False, ephemeral: bool = False, tags: Iterable[str] = (), expiration: str = "1h"
) -> str:
    """A new pre-auth key of the lab user. A secret: hand it to a device on stdin or in a file, not on argv."""
    args = ["preauthkeys", "create", "--user", str(_ensure_user()), "--expiration", expiration]
    if reusable:
        args.append("--reusable")
    if ephemeral:
        args.append("--ephemeral")
    tag_list = [t.strip() for t in tags if t.strip()]
    if tag_list:
        args += ["--tags", ",".join(tag_list)]
    created = headscale(*args)
    key = created.get("key") if isinstance(created, dict) else None
    if not key:
        raise LabError("headscale preauthkeys create returned no key")
    return str(key)


def nodes() -> list[dict[str, Any]]:
    """`headscale nodes list -o json`: dicts with id, name, given_name, online (absent when false), tags, ..."""
    return list(headscale("nodes", "list") or [])


def routes() -> list[dict[str, Any]]:
    """`headscale nodes list-routes -o json`: the nodes that announce or have approved routes."""
    return list(headscale("nodes", "list-routes") or [])


def approve_routes(node_id: int, routes: Iterable[str]) -> dict[str, Any]:
    """Set the node's approved routes (replaces the list; an empty list removes them all). Returns the node."""
    return dict(headscale("nodes", "approve-routes", "--identifier", str(int(node_id)), "--routes", ",".join(routes)))


def delete_node(node_id: int) -> None:
    headscale("nodes", "delete", "--identifier", str(int(node_id)), "--force")


def forget(hostnames: Iterable[str]) -> None:
    """Delete the nodes registered under these hostnames (a test's or benchmark's own devices) from the shared
    tailnet; nothing when the control plane is not running."""
    names = set(hostnames)
    if status() is None:
        return
    for node in nodes():
        if node.get("name") in names:
            delete_node(int(node["id"]))


def api_key(expiration: str = "1h") -> str:
    """A new headscale API key (Bearer token for the REST API on CONTROL_URL/api/v1). A secret."""
    key = headscale("apikeys", "create", "--expiration", expiration)
    if not isinstance(key, str) or not key:
        raise LabError("headscale apikeys create returned no key")
    return key
