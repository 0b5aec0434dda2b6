#!/usr/bin/env bash
# `make demo`: bring up a small mixed lab fleet (kobo over telnet, quecopen over adb with a LAN behind it, sysvinit
# over telnet, systemd over ssh), the lab's control server (headscale + DERP) and its mirror of real Tailscale builds,
# provision the fleet with playbooks/site.yml, run it again and in --check to show it changes nothing, print a fleet
# table from the control server's node list and the devices, prove a packet across the tailnet and one into the LAN
# behind the QuecOpen module, and tear down exactly what it started (also on failure or Ctrl-C). Needs root.
# DEMO_KEEP=1 keeps the fleet up afterwards (tear it down with the `fleetlab down` lines it prints).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$PWD/ansible.cfg" ANSIBLE_FORCE_COLOR="${ANSIBLE_FORCE_COLOR:-1}"

if [ "$(id -u)" != 0 ]; then
    echo "demo: the device lab needs root (Linux namespaces, mounts, veths): run 'make demo' as root" >&2
    exit 1
fi

# name:profile, every name with the demo- prefix so nothing else in the lab is touched.
fleet=(demo-kobo:kobo demo-quec:quecopen demo-sysv:sysvinit demo-sysd:systemd)
names=()
for entry in "${fleet[@]}"; do names+=("${entry%%:*}"); done
work=$(mktemp -d /tmp/fleetmesh-demo.XXXXXX)
started=()
mirror_started=false
control_started=false
adb_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
adb_pid=

teardown() {
    local rc=$?
    if [ "${DEMO_KEEP:-0}" = 1 ] && [ $rc = 0 ]; then
        echo "=== demo: fleet kept up (DEMO_KEEP=1); inventory $work/inventory.yml; tear down with:"
        for name in "${started[@]}"; do echo "    fleetlab down $name"; done
        $mirror_started && echo "    fleetlab mirror stop"
        $control_started && echo "    fleetlab control down"
        return
    fi
    echo "=== demo: tearing down what it started"
    # The demo's own adb server (started below as its child), by pid: `adb kill-server` can hang on a server that
    # still holds a transport to a device being torn down.
    if [ -n "$adb_pid" ]; then kill "$adb_pid" 2>/dev/null || true; wait "$adb_pid" 2>/dev/null || true; fi
    for name in "${started[@]}"; do fleetlab down "$name" || true; done
    if $mirror_started; then fleetlab mirror stop || true; fi
    if $control_started; then fleetlab control down || true; fi
    # The telnet/adb plugins' sessions live under the demo's control dir: stop them by their recorded pid.
    for pidfile in "$work"/cp/*.pid; do
        if [ -e "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
    done
    # ssh's control masters (systemd device) name their socket in the same dir.
    for p in /proc/[0-9]*; do
        case "$({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null)" in
        "ssh: $work/cp/"*) kill "${p#/proc/}" 2>/dev/null || true ;;
        esac
    done
    rm -rf "$work"
    exit $rc
}
trap teardown EXIT
trap 'exit 130' INT TERM

start=$SECONDS
echo "=== demo: preparing the lab (downloads and templates are cached after the first time)"
fleetlab prepare | sed 's/^/    /'

for name in "${names[@]}"; do
    if fleetlab list | cut -f1 | grep -qx "$name"; then
        echo "demo: a lab device named $name exists already (left over?): 'fleetlab down $name' first" >&2
        exit 1
    fi
done

echo "=== demo: building the real Tailscale releases and the control plane from their Go modules (cached)"
fleetlab build | sed 's/^/    /'

echo "=== demo: starting the lab's control server (headscale + DERP relay on 198.18.0.2)"
if fleetlab control status >/dev/null; then
    echo "    the lab's control server is already running ($(fleetlab control status)): using it, leaving it running"
else
    echo "    $(fleetlab control up)"
    control_started=true
fi

echo "=== demo: starting the release mirror (the real builds, pkgs.tailscale.com layout)"
# Asked of the lab's own record (pid + start time), never by connecting: until the lab's bridge exists the mirror's
# address is not this machine's, and a probe would leave by the default route.
if fleetlab mirror status >/dev/null; then
    echo "    the lab's mirror is already running ($(fleetlab mirror status)): using it, leaving it running"
else
    echo "    $(fleetlab mirror start)"
    mirror_started=true
fi

echo "=== demo: bringing up the fleet: ${fleet[*]}"
for entry in "${fleet[@]}"; do
    name=${entry%%:*} profile=${entry#*:}
    started+=("$name")
    fleetlab up --profile "$profile" "$name" | sed 's/^/    /'
done
# The LAN behind the QuecOpen module: a host at 192.168.225.2 on the module's bridge0 (192.168.225.1), as in its guide.
fleetlab lan demo-quec --cidr 192.168.225.0/24 | sed 's/^/    /'

# A private adb server for the QuecOpen module (a user's server on 5037 is left alone), stopped by pid at teardown.
adb -P "$adb_port" nodaemon server >"$work/adb-server.log" 2>&1 &
adb_pid=$!

inventory=$work/inventory.yml
fleetlab inventory "${names[@]}" >"$inventory"
# The QuecOpen module relays the LAN behind it (its bridge0, 192.168.225.0/24, as in the QuecOpen guide).
python3 - "$inventory" <<'EOF'
import sys
import yaml

path = sys.argv[1]
data = yaml.safe_load(open(path))
data["all"]["children"]["quecopen"]["hosts"]["demo-quec"]["routing_routes"] = ["192.168.225.0/24"]
# The systemd box takes the routes the tailnet offers, so it can reach that LAN through the module.
data["all"]["children"]["systemd"]["hosts"]["demo-sysd"]["login_accept_routes"] = True
open(path, "w").write(yaml.safe_dump(data, sort_keys=False))
EOF
# The demo's own state stays its own: the telnet/adb plugins' sessions and ssh's masters (under the work dir), a
# private adb server port (a user's adb server on 5037 is left alone), all stopped at teardown, and the release cache.
cat >"$work/demo_vars.yml" <<EOF
fleetmesh_telnet_control_path_dir: $work/cp
fleetmesh_adb_control_path_dir: $work/cp
ansible_control_path_dir: $work/cp
fleetmesh_adb_server_port: $adb_port
binary_cache_dir: $work/release-cache
EOF
echo "    inventory: $inventory (from 'fleetlab inventory ${names[*]}')"
echo "    NOTE: real tailscale/tailscaled built here from the tailscale.com Go module (not the signed official"
echo "    binaries), logging in to a real headscale; the collection itself knows nothing about the lab."

fleet_table() {
    echo "=== demo: the fleet (the control server's node list, and each device through 'fleetlab exec')"
    python3 tests/tooling/fleet_table.py "${fleet[@]}" | sed 's/^/    /'
}

echo "=== demo: first run of playbooks/site.yml (provisions every device by its profile)"
t0=$SECONDS
if ! ansible-playbook -i "$inventory" -e "@$work/demo_vars.yml" playbooks/site.yml; then
    echo "demo: the first run of site.yml failed; the fleet as it is now:" >&2
    fleet_table
    exit 1
fi
first=$((SECONDS - t0))

echo "=== demo: second run (must change nothing)"
t0=$SECONDS
out=$(ansible-playbook -i "$inventory" -e "@$work/demo_vars.yml" playbooks/site.yml) || { echo "$out"; exit 1; }
second=$((SECONDS - t0))
echo "$out" | sed -n '/PLAY RECAP/,$p'
if echo "$out" | sed 's/\x1b\[[0-9;]*m//g' | grep -Eq 'changed=[1-9]'; then
    echo "demo: the second run changed something: not idempotent" >&2
    exit 1
fi

echo "=== demo: a check-mode run (--check) on the provisioned fleet (must report no change)"
out=$(ansible-playbook --check -i "$inventory" -e "@$work/demo_vars.yml" playbooks/site.yml) || { echo "$out"; exit 1; }
echo "$out" | sed -n '/PLAY RECAP/,$p'
if echo "$out" | sed 's/\x1b\[[0-9;]*m//g' | grep -Eq 'changed=[1-9]'; then
    echo "demo: --check reports a change on a provisioned fleet" >&2
    exit 1
fi

fleet_table || { echo "demo: a device is not Running and online in the control server" >&2; exit 1; }

echo "=== demo: one packet across the tailnet (demo-sysv -> demo-sysd, through tailscale0 on both)"
sysd_ip=$(fleetlab exec demo-sysd -- tailscale ip -4 | head -n1)
fleetlab exec demo-sysv -- ip route get "$sysd_ip" | head -n1 | sed 's/^/    /'
fleetlab exec demo-sysv -- ping -c 1 -W 5 "$sysd_ip" | sed 's/^/    /'
fleetlab exec demo-sysv -- tailscale ping -c 5 "$sysd_ip" | sed 's/^/    /'

echo "=== demo: one connection into the LAN behind the QuecOpen module (demo-sysd -> 192.168.225.2, via demo-quec)"
# shellcheck disable=SC2016 # expanded by the device's bash
hello=$(fleetlab exec demo-sysd -- timeout 20 bash -c 'exec 3<>/dev/tcp/192.168.225.2/7777; head -n1 <&3')
echo "    the LAN host answered: $hello"
case "$hello" in
"hello from "*) ;;
*) echo "demo: no answer from the LAN host behind the QuecOpen module" >&2; exit 1 ;;
esac
echo "=== demo: the fleet report (playbooks/report.yml: HTML page, JSON file, table; read-only)"
# Kept after the teardown of the work dir, in the checkout's build/ (gitignored). The control server's API key for
# the online column goes through the environment only (never a command line or a file).
report_dir=$PWD/build/demo-report
mkdir -p "$report_dir"
cat >>"$work/demo_vars.yml" <<EOF
fleetmesh_report_dir: $report_dir
fleetmesh_control:
  type: headscale
  url: $(python3 -c 'from fleetlab import control; print(control.url())')
  api_key: "{{ lookup('env', 'FLEETMESH_DEMO_API_KEY') }}"
EOF
FLEETMESH_DEMO_API_KEY=$(python3 -c 'from fleetlab import control; print(control.api_key("1h"))')
export FLEETMESH_DEMO_API_KEY
out=$(ansible-playbook -i "$inventory" -e "@$work/demo_vars.yml" playbooks/report.yml) || { echo "$out"; exit 1; }
unset FLEETMESH_DEMO_API_KEY
echo "$out" | sed -n '/TASK \[Show the fleet\]/,/PLAY RECAP/p' | sed '$d' | sed 's/^/    /'
echo "$out" | sed -n '/PLAY RECAP/,$p'
if echo "$out" | grep -q 'could not list nodes'; then
    echo "demo: the report could not ask the control server" >&2
    exit 1
fi
echo "    report: $report_dir/fleet-report.html and $report_dir/fleet-report.json (kept after the demo)"
echo "=== demo: done in $((SECONDS - start)) s (first site.yml run ${first} s, no-op run ${second} s)"
