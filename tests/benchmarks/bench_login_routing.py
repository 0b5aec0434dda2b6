"""Login + routing benchmark: commands sent to the device and wall time, first run vs no-op re-run.

Run as root:  /work/main/.venv/bin/python tests/benchmarks/bench_login_routing.py [--profile sysvinit|kobo]
Brings up one lab device, copies the real tailscale and tailscaled 1.98.10 in (fleetlab.tailscale_release's build
for the device's arch, 60-72 MB together) and starts tailscaled (userspace networking, the lab's no-logs flags),
then runs the device + login + routing roles three times against the lab's headscale (the inventory's login server
and per-profile key): first run (login, forwarding, routes), no-op re-run, and a re-run after the hostname was
changed on the device (one `tailscale set`). "commands" counts the connection's EXEC lines at -vvv; "puts" counts
put_file calls (the key file). The control plane is started if needed and stopped after the run unless it was up
before; the node is deleted from it at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "lab"))
from fleetlab import boot, control, inventory, lab, tailscale_release  # noqa: E402  # the lab package, in the repo

NAME = "bench-login"
ARCH = {"sysvinit": "amd64", "kobo": "arm"}
# Where the binaries go: the kobo's / is 16 MB, so there they live on /mnt/onboard (as the binary role puts them).
BIN_DIR = {"sysvinit": "/usr/lib/bench-tailscale", "kobo": "/mnt/onboard/bench-tailscale"}
STATE_DIR = {"sysvinit": "/var/lib/tailscale", "kobo": "/usr/local/fleetmesh-tailscale/state"}


def start_tailscaled(profile: str) -> None:
    """The real binaries copied in (over nsenter's stdin), linked into /usr/bin; tailscaled started detached."""
    device = lab.get(NAME)
    bins = tailscale_release.binaries(tailscale_release.NEW_VERSION, ARCH[profile])
    for kind in ("tailscale", "tailscaled"):
        path = f"{BIN_DIR[profile]}/{kind}"
        script = f"mkdir -p {BIN_DIR[profile]} && cat > {path} && chmod 755 {path} && ln -sf {path} /usr/bin/{kind}"
        with open(bins[kind], "rb") as data:
            cmd = [*boot.nsenter_cmd(device), "sh", "-c", script]
            subprocess.run(cmd, stdin=data, check=True, env=boot.device_env(), timeout=300)
    env = " ".join(f"{k}={v}" for k, v in inventory.LAB_TAILSCALED_ENV.items())
    flags = " ".join(inventory.LAB_TAILSCALED_ARGS)
    started = lab.exec_(
        NAME,
        ["sh", "-c", f"mkdir -p {STATE_DIR[profile]}; {env} setsid tailscaled --statedir={STATE_DIR[profile]} "
         f"--tun=userspace-networking {flags} </dev/null >/tmp/tailscaled.log 2>&1 & i=0; "
         "while ! tailscale status --json >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 600 ] && exit 1; sleep 0.2; done"],
        timeout=180,
    )  # fmt: skip
    if started.returncode != 0:
        raise SystemExit(f"tailscaled did not start: {lab.exec_(NAME, ['cat', '/tmp/tailscaled.log']).stdout[-2000:]}")


def forget_node() -> None:
    """The node this run registered (by its tailnet address), from the shared headscale."""
    status = lab.exec_(NAME, ["tailscale", "status", "--json"], timeout=120).stdout
    ips = set((json.loads(status or "{}").get("Self") or {}).get("TailscaleIPs") or [])
    for node in control.nodes():
        if ips & set(node.get("ip_addresses") or []):
            control.delete_node(int(node["id"]))


def run(work: Path) -> tuple[float, int, int, str]:
    vars_file = work / "vars.json"
    vars_file.write_text(json.dumps({"login_hostname": NAME, "routing_routes": ["10.9.0.0/16"]}))
    vars_file.chmod(0o600)
    start = time.monotonic()
    proc = subprocess.run(
        ["ansible-playbook", "-vvv", "-i", str(work / "inv.yml"), "-e", f"@{vars_file}", str(work / "play.yml")],
        capture_output=True, text=True, check=False, env={"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
                                                          "PATH": f"{REPO}/.venv/bin:/usr/bin:/bin"},
    )  # fmt: skip
    elapsed = time.monotonic() - start
    vars_file.unlink()
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:])
    recap = next(line for line in proc.stdout.splitlines() if line.startswith(NAME) and "ok=" in line)
    return elapsed, proc.stdout.count("> EXEC "), proc.stdout.count("> PUT "), recap.split(":", 1)[1].strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="sysvinit", choices=sorted(ARCH))
    profile = parser.parse_args().profile
    lab.down(NAME)
    with control.borrowed():  # started for this run if it was not up, and stopped after it
        device = lab.up(NAME, profile)
        try:
            start_tailscaled(profile)
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                (work / "inv.yml").write_text(yaml.safe_dump(inventory.build([device])))  # holds the lab's key: tmp
                (work / "play.yml").write_text(
                    "- hosts: all\n  gather_facts: false\n  roles:\n    - fleetmesh.tailscale.device\n"
                    "    - fleetmesh.tailscale.login\n    - fleetmesh.tailscale.routing\n"
                )
                for label in ("first run", "no-op re-run", "after hostname drift"):
                    if label == "after hostname drift":
                        lab.exec_(NAME, ["tailscale", "set", "--hostname=drifted"])
                    elapsed, execs, puts, recap = run(work)
                    print(f"{profile:<9} {label:<22} {elapsed:6.2f} s  commands={execs:<3} puts={puts}  {recap}")
                state = json.loads(lab.exec_(NAME, ["tailscale", "status", "--json"], timeout=120).stdout)
                prefs = json.loads(lab.exec_(NAME, ["tailscale", "debug", "prefs"], timeout=120).stdout)
                print(
                    f"node: {state['BackendState']}, {state['Self']['HostName']} {state['Self']['TailscaleIPs']}, "
                    f"control {prefs['ControlURL']}, advertised routes {prefs['AdvertiseRoutes']}"
                )
        finally:
            try:
                forget_node()
            finally:
                lab.down(NAME)


if __name__ == "__main__":
    main()
