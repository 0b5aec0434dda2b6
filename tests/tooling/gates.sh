#!/usr/bin/env bash
# The gates of `make test`, each blocking. Usage: gates.sh all|lint|sanity|ee|pytest
# `all` runs every gate even after a failure, prints which failed, runs pytest last (so the output ends with
# pytest's summary line) and exits non-zero if any gate failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
failed=()

timed() {  # timed NAME CMD... : run a gate, report its wall time, remember a failure
    local name=$1 start rc
    shift
    echo "=== gate: $name"
    start=$SECONDS
    "$@"
    rc=$?
    echo "=== gate: $name $([ $rc = 0 ] && echo passed || echo "FAILED (exit $rc)") in $((SECONDS - start)) s"
    [ $rc = 0 ] || failed+=("$name")
    return $rc
}

# Every tracked or new (unignored) file, as a fresh clone would have it.
checkout_files() { git -C "$repo" ls-files -z --cached --others --exclude-standard; }

gate_lint() {
    ruff check . && ruff format --check . && yamllint --strict . && ansible-lint && antsibull-changelog lint
}

gate_sanity() {
    # ansible-test wants the collection under ansible_collections/NS/NAME and lists files with git: test a copy.
    local top dir
    top=$(mktemp -d /tmp/fleetmesh-sanity.XXXXXX)
    dir=$top/ansible_collections/fleetmesh/tailscale
    mkdir -p "$dir"
    checkout_files | grep -zv '^\.collections/' | tar --null -C "$repo" -T - -cf - | tar -xf - -C "$dir"
    (cd "$dir" && git init -q && git add -A && ansible-test sanity --local --python 3.11 --color no)
    local rc=$?
    rm -rf "$top"
    return $rc
}

gate_ee() {
    local top rc
    top=$(mktemp -d /tmp/fleetmesh-ee.XXXXXX)
    mkdir -p "$top/src"
    checkout_files | tar --null -C "$repo" -T - -cf - | tar -xf - -C "$top/src"
    (
        set -e
        cd "$top/src"
        ansible-galaxy collection build --force --output-path build/ >/dev/null
        cp build/fleetmesh-tailscale-*.tar.gz build/fleetmesh-tailscale.tar.gz
        ansible-builder create -f execution-environment.yml -c "$top/context" >/dev/null
        test -s "$top/context/_build/collections/fleetmesh-tailscale.tar.gz"
        grep -q 'ansible-galaxy collection install' "$top/context/Dockerfile"
        echo "ee: build context rendered in $top/context (building the image needs a container engine)"
    )
    rc=$?
    rm -rf "$top"
    return $rc
}

gate_pytest() {
    pytest -ra --durations=25 "$@"
}

case "${1:-all}" in
lint) timed lint gate_lint ;;
sanity) timed sanity gate_sanity ;;
ee) timed ee gate_ee ;;
pytest) shift; timed pytest gate_pytest "$@" ;;
all)
    timed lint gate_lint
    timed sanity gate_sanity
    timed ee gate_ee
    if [ ${#failed[@]} -gt 0 ]; then echo "=== gates failed before pytest: ${failed[*]}"; fi
    gate_pytest "${@:2}"
    rc=$?
    [ $rc = 0 ] || failed+=(pytest)
    [ ${#failed[@]} -eq 0 ]
    exit $?
    ;;
*) echo "usage: $0 all|lint|sanity|ee|pytest" >&2; exit 2 ;;
esac
