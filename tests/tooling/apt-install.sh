#!/bin/sh
# Install the Debian packages given as arguments, only those not installed yet; say what is installed.
set -eu
missing=""
for pkg in "$@"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing="$missing $pkg"
done
if [ -z "$missing" ]; then
    echo "apt: all $# Debian packages present"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "apt: missing Debian packages:$missing -- run as root (or install them yourself)" >&2
    exit 1
fi
echo "apt: installing$missing"
export DEBIAN_FRONTEND=noninteractive
# One index out of sync on a mirror (it happens) must not stop us: the install below says what is really missing.
apt-get update -qq || echo "apt: apt-get update reported errors; installing from the lists it has" >&2
# shellcheck disable=SC2086  # word splitting of the package list is intended
apt-get install -y -qq --no-install-recommends $missing
