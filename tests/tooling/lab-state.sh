#!/usr/bin/env bash
# Is any of the device lab live on this machine? Read from the host only: the bridge, veths, namespaces, mounts
# under /run/fleetlab, device directories and service records (/run/fleetlab/*.json). Exit 0 when none is, 1 (and a
# list) when something is left. Then, with nothing live, the rest of /run/fleetlab (logs, the lock file, the
# inventory's key) is removed, so what runs next sees the machine as a new one does: no /run/fleetlab at all.
# `.ci/run` calls it between `make test` and `make demo` and after `make demo`: neither may leave lab state behind.
set -uo pipefail
run=${FLEETLAB_RUN_DIR:-/run/fleetlab}
left=()
[ -e /sys/class/net/fleetlab0 ] && left+=("bridge fleetlab0: $(ip -br addr show fleetlab0 2>/dev/null | tr -s ' ')")
for link in /sys/class/net/flv-*; do [ -e "$link" ] && left+=("veth ${link##*/}"); done
for ns in /run/netns/fleetlab-*; do [ -e "$ns" ] && left+=("netns ${ns##*/}"); done
while read -r _ point _; do
    case "$point" in "$run"/*) left+=("mount $point") ;; esac
done </proc/mounts
for d in "$run"/devices/*; do [ -e "$d" ] && left+=("device record $d"); done
for f in "$run"/*.json; do [ -e "$f" ] && left+=("service record $f: $(tr -d '\n' <"$f")"); done
if [ ${#left[@]} -gt 0 ]; then
    echo "lab-state: left on this machine:" >&2
    printf '    %s\n' "${left[@]}" >&2
    exit 1
fi
if [ -d "$run" ]; then
    echo "lab-state: nothing live; removing the inert rest of $run: $(find "$run" -mindepth 1 -printf '%P ' | head -c 300)"
    rm -rf "$run"
fi
echo "lab-state: no lab state on this machine (no bridge, namespaces, mounts, records or $run)"
