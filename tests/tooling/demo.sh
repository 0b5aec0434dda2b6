#!/usr/bin/env bash
# `make demo`: bring up a small mixed lab fleet (kobo over telnet, quecopen over adb, sysvinit over telnet, systemd
# over ssh), provision it with playbooks/site.yml, run it again to show it changes nothing, print a fleet table,
# and tear down exactly what it started (also on failure or Ctrl-C). Needs root (the lab uses namespaces).
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
adb_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

teardown() {
    local rc=$?
    if [ "${DEMO_KEEP:-0}" = 1 ] && [ $rc = 0 ]; then
        echo "=== demo: fleet kept up (DEMO_KEEP=1); inventory $work/inventory.yml; tear down with:"
        for name in "${started[@]}"; do echo "    fleetlab down $name"; done
        $mirror_started && echo "    fleetlab mirror stop"
        return
    fi
    echo "=== demo: tearing down what it started"
    for name in "${started[@]}"; do fleetlab down "$name" || true; done
    if $mirror_started; then fleetlab mirror stop || true; fi
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
    if [ -e "$work/demo_vars.yml" ]; then adb -P "$adb_port" kill-server 2>/dev/null || true; fi
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

echo "=== demo: starting the stand-in release mirror"
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

inventory=$work/inventory.yml
fleetlab inventory "${names[@]}" >"$inventory"
# The QuecOpen module relays the LAN behind it (its bridge0, 192.168.225.0/24, as in the QuecOpen guide).
python3 - "$inventory" <<'EOF'
import sys
import yaml

path = sys.argv[1]
data = yaml.safe_load(open(path))
data["all"]["children"]["quecopen"]["hosts"]["demo-quec"]["routing_routes"] = ["192.168.225.0/24"]
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
echo "    NOTE: the Tailscale binaries on these devices are the lab's stand-ins (POSIX sh scripts that follow the"
echo "    real CLI contract), served by the lab mirror; the collection itself knows nothing about them."

fleet_table() {
    echo "=== demo: the fleet (read on each device through 'fleetlab exec')"
    # shellcheck disable=SC2016 # the probe is expanded by the device's shell, not here
    # One round trip per device; every field falls back to '-' when that part is not provisioned (yet).
    probe='v=$(tailscale version 2>/dev/null | head -n1); a=$(uname -m)
    if j=$(tailscale status --json 2>/dev/null); then
      s=$(echo "$j" | sed -n "s/.*\"BackendState\": *\"\([A-Za-z]*\)\".*/\1/p" | head -n1)
      ip=$(tailscale ip -4 2>/dev/null | head -n1)
      r=$(tailscale debug prefs 2>/dev/null | tr -d " \t\n" | sed -n "s/.*\"AdvertiseRoutes\":\[\([^]]*\)\].*/\1/p" | tr -d "\"")
    else s=not-running; fi
    echo "${a:--}|${v:--}|${s:--}|${ip:--}|${r:--}"'
    printf '%-10s %-9s %-8s %-8s %-8s %-12s %-15s %s\n' HOST PROFILE DOOR ARCH VERSION STATE "TAILNET IP" ROUTES
    for entry in "${fleet[@]}"; do
        name=${entry%%:*} profile=${entry#*:}
        door=$(fleetlab list | awk -F'\t' -v n="$name" '$1 == n {print $4}' | cut -d' ' -f1)
        IFS='|' read -r arch version state ip routes < <(fleetlab exec "$name" -- sh -c "$probe" || echo "-|-|unreachable|-|-")
        printf '%-10s %-9s %-8s %-8s %-8s %-12s %-15s %s\n' "$name" "$profile" "${door:--}" "$arch" "$version" "$state" "$ip" "$routes"
    done
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

fleet_table
echo "=== demo: done in $((SECONDS - start)) s (first site.yml run ${first} s, no-op run ${second} s)"
