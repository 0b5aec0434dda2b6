#!/usr/bin/env bash
# `make demo`: provision the demo targets with playbooks/site.yml, run it again to show it changes nothing, and
# show the result. Until the lab fleet joins the demo, the target is this machine as a firmware rootfs host.
set -euo pipefail
cd "$(dirname "$0")/../.."
inventory=inventories/local

echo "=== demo: first run of playbooks/site.yml against $inventory"
ansible-playbook playbooks/site.yml -i "$inventory"

echo "=== demo: second run (must report changed=0)"
out=$(ansible-playbook playbooks/site.yml -i "$inventory")
echo "$out" | sed -n '/PLAY RECAP/,$p'
if echo "$out" | grep -Eq 'changed=[1-9]'; then
    echo "demo: the second run changed something: not idempotent" >&2
    exit 1
fi
echo "=== demo: done"
