"""The Kobo chain with the real Tailscale 1.98.10, natively: a kobo-shaped lab box with an amd64 userland.

`lab.up(NAME, "kobo", arch="amd64")` is the kobo profile (busybox, telnet door, udev boot hooks, the separate
/mnt/onboard storage, a 16 MB /, no iptables) with Debian's amd64 busybox and glibc instead of armhf under qemu-user,
so tailscaled's router meets the host kernel's real netfilter (qemu-user cannot translate it: docs/lab.md, "ARM
devices under qemu-user"). site.yml provisions it in kernel mode through the telnet plugin.

What the seed ("Tailscale on Kobo Sage", tailscale 1.18) reports without iptables is
`wgengine.NewUserspaceEngine(tun "tailscale0") error: exec: "iptables": executable file not found in $PATH`.
tailscaled 1.98.10 no longer fails there: with no iptables binary, util/linuxfw picks nftables (over netlink, no
`nft` binary needed) and the node comes up with its firewall. The seed's failure comes back only when iptables mode
is forced (TS_DEBUG_FIREWALL_MODE=iptables): then the daemon exits 1 at router.Up. With the shim installed,
tailscaled finds iptables and programs its chains through it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
    pytest.mark.usefixtures("iptables_bundles"),  # prepared if this machine has not yet (conftest)
]

lab = pytest.importorskip("fleetlab.lab", reason="the fleetlab package (tests/lab) is not installed")

from provision_lab import NEW, run_site, stop_sessions  # noqa: E402

from fleetlab import boot, control, inventory, tailscale_release  # noqa: E402

BOX = "kc-kobo"
KERNEL = {"networking_mode": "kernel"}
NO_SHIM = {**KERNEL, "iptables_shim_enabled": False}
BOOT_LOG = "/usr/local/fleetmesh-tailscale/state/logs/boot.log"
SHIM_XTABLES = "/usr/local/fleetmesh-tailscale/xtables"  # case-sensitive names: not on the FAT onboard
# The seed's steps by hand: the binary on the onboard storage, tailscaled started from there, a few seconds.
SEED_START = (
    "export PATH=/usr/sbin:/usr/bin:/sbin:/bin; mkdir -p /tmp/seed; "
    "timeout 6 /mnt/onboard/seed/tailscaled --state=/tmp/seed/state --socket=/tmp/seed/s.sock "
    "--no-logs-no-support > /tmp/seed/log 2>&1; echo rc=$?; cat /tmp/seed/log"
)
SEED_MESSAGE = 'exec: "iptables": executable file not found in $PATH'
# nftables chains of the netns, read over NETLINK_NETFILTER from the host (the device has no `nft`, neither does
# the host): one "family table chain" line per chain (NFT_MSG_GETCHAIN dump).
NFT_CHAINS = r"""
import socket, struct
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
s.bind((0, 0))
# type NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETCHAIN, flags NLM_F_REQUEST | NLM_F_DUMP; nfgenmsg AF_UNSPEC
s.send(struct.pack("=IHHII", 20, (10 << 8) | 4, 0x301, 1, 0) + struct.pack("=BBH", 0, 0, 0))
families = {1: "inet", 2: "ip", 10: "ip6"}
done = False
while not done:
    data = s.recv(1 << 16)
    off = 0
    while off < len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        if kind == 3:  # NLMSG_DONE
            done = True
            break
        if kind == 2:  # NLMSG_ERROR
            raise SystemExit("netlink error %d" % struct.unpack_from("=i", data, off + 16))
        attrs, pos = {}, off + 20
        while pos < off + length:
            alen, atype = struct.unpack_from("=HH", data, pos)
            if atype & 0x3FFF in (1, 3):  # NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME (strings)
                attrs[atype & 0x3FFF] = data[pos + 4 : pos + alen].rstrip(b"\0").decode()
            pos += (alen + 3) & ~3
        print(families.get(data[off + 16], data[off + 16]), attrs.get(1), attrs.get(3))
        off += (length + 3) & ~3
"""


def sh(device: Any, script: str) -> str:
    proc = lab.exec_(device.name, ["sh", "-c", script])
    return proc.stdout + proc.stderr


def nft_chains(device: Any) -> set[str]:
    proc = subprocess.run(
        ["nsenter", f"--net=/run/netns/{device.netns}", sys.executable, "-c", NFT_CHAINS],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return set(proc.stdout.splitlines())


def status(device: Any) -> dict[str, Any]:
    return dict(json.loads(lab.exec_(device.name, ["tailscale", "status", "--json"]).stdout))


def router_health(state: dict[str, Any]) -> list[str]:
    """The health messages about the router's firewall (netfilter, iptables, nftables tables)."""
    words = ("netfilter", "iptables", "nftables", "table")
    return [msg for msg in state.get("Health") or [] if any(w in msg for w in words)]


def headscale_node(device: Any, state: dict[str, Any]) -> dict[str, Any]:
    """The node headscale holds for the device's tailnet address."""
    address = state["Self"]["TailscaleIPs"][0]
    found = [n for n in control.nodes() if address in (n.get("ip_addresses") or [])]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def box(work: Path) -> Iterator[Any]:
    lab.down(BOX)
    control.up()
    control.forget([BOX])
    try:
        yield lab.up(BOX, "kobo", arch="amd64")
    finally:
        stop_sessions(work / "cp")
        lab.down(BOX)
        control.forget([BOX])


def test_the_box_is_a_kobo_with_an_amd64_userland(box: Any) -> None:
    assert box.arch == "amd64" and lab.get(BOX).arch == "amd64"
    assert sh(box, "uname -m") == "x86_64\n"
    # Machine x86-64 (0x3e) in the ELF header of its busybox: native, no qemu in between.
    assert sh(box, "head -c 20 /bin/busybox | od -An -tx1").split()[18:20] == ["3e", "00"]
    assert "/mnt/onboard" in sh(box, "grep /mnt/onboard /proc/mounts")
    assert "not found" in sh(box, "command -v iptables || echo not found")
    assert sh(box, "ls -d /etc/udev/rules.d") == "/etc/udev/rules.d\n"
    # The inventory treats it as a kobo (the collection picks the profile from the group) and asks for the shim;
    # the shim role picks the bundle by the arch device_facts reads from the device: amd64 here.
    data = inventory.build([box])
    host = data["all"]["children"]["kobo"]["hosts"][BOX]
    assert host["ansible_connection"] == "fleetmesh.tailscale.telnet"
    assert host["device_profile_overrides"] == {"iptables_shim": True}
    assert "networking_mode" not in host  # kernel mode: only ARM devices (qemu-user) are sent to userspace
    assert data["all"]["vars"]["iptables_shim_bundles"]["amd64"] == "/var/cache/fleetlab/bundles/amd64"


def test_seed_start_without_iptables(box: Any) -> None:
    """The seed's first try (binary on /mnt/onboard, `tailscaled`), real 1.98.10, nothing else on the box."""
    # /mnt/onboard is the device's FAT mount (fusefat, inside its mount namespace): copy through the device.
    with open(tailscale_release.binaries(NEW, "amd64")["tailscaled"], "rb") as binary:
        put = subprocess.run(
            [*boot.nsenter_cmd(box), "sh", "-c", "mkdir -p /mnt/onboard/seed && cat > /mnt/onboard/seed/tailscaled"],
            stdin=binary,
            capture_output=True,
            check=False,
        )
    assert put.returncode == 0, put.stderr
    try:
        # No iptables binary: the detector falls back to nftables and the daemon keeps running until `timeout`
        # stops it (it shuts down cleanly on SIGTERM, exit 0).
        started = sh(box, SEED_START)
        assert "tailscaled got signal terminated; shutting down" in started and "rc=0\n" in started, started[-3000:]
        assert "router: iptables not found" in started and "falling back to nftables" in started
        assert "router: netfilter running in nftables mode" in started
        assert 'NewUserspaceEngine(tun "tailscale0") error' not in started
        # iptables mode forced, as 1.18 had it (no fallback): the seed's failure, the daemon exits 1 at router.Up.
        forced = sh(box, f"export TS_DEBUG_FIREWALL_MODE=iptables; {SEED_START}")
        assert "rc=1\n" in forced, forced[-3000:]
        assert (
            'wgengine.NewUserspaceEngine(tun "tailscale0") error: router.Up: setting netfilter mode: '
            f"could not create new netfilter: {SEED_MESSAGE}"
        ) in forced
    finally:
        sh(box, "rm -rf /mnt/onboard/seed /tmp/seed; ip link del tailscale0 2>/dev/null")


def test_without_the_shim_kernel_mode_runs_on_nftables(box: Any, work: Path, mirror: str) -> None:
    run = run_site(box, work, mirror, NO_SHIM)
    assert run.rc == 0 and run.failed == 0, run.output[-3000:]
    assert "not found" in sh(box, "command -v iptables || echo not found")
    log = sh(box, f"cat {BOOT_LOG}")
    assert "router: iptables not found" in log and "falling back to nftables" in log, log[-3000:]
    assert "router: netfilter running in nftables mode" in log
    assert "--tun=userspace-networking" not in sh(box, "tr '\\0' ' ' < /proc/$(pidof tailscaled)/cmdline")
    assert "tailscale0" in sh(box, "ip -o link show tailscale0")
    state = status(box)
    assert state["BackendState"] == "Running" and router_health(state) == [], state.get("Health")
    # Its firewall, installed over netlink: the same chains it would make with iptables.
    chains = nft_chains(box)
    assert {"ip filter ts-input", "ip filter ts-forward", "ip nat ts-postrouting"} <= chains, chains
    node = headscale_node(box, state)
    assert node.get("online") and node["given_name"] == BOX and node["tags"] == ["tag:fleetmesh-kobo"]
    again = run_site(box, work, mirror, NO_SHIM)
    assert again.rc == 0 and again.changed == 0, again.output[-3000:]


def test_with_the_shim_kernel_mode_runs_on_iptables(box: Any, work: Path, mirror: str) -> None:
    run = run_site(box, work, mirror, KERNEL)
    assert run.rc == 0 and run.changed >= 1, run.output[-3000:]
    # The amd64 bundle, by the arch read from the device: an x86-64 ELF behind the shim's iptables.
    assert sh(box, "iptables --version").startswith("iptables v1.8.9 (legacy)")
    assert sh(box, "head -c 20 $(readlink -f /usr/sbin/iptables) | od -An -tx1").split()[18:20] == ["3e", "00"]
    state = status(box)
    assert state["BackendState"] == "Running" and router_health(state) == [], state.get("Health")
    # The restarted daemon found iptables: its chains are in the legacy tables the shim's iptables lists.
    env = f"XTABLES_LIBDIR={SHIM_XTABLES}"
    filter_rules = sh(box, f"{env} iptables -S")
    assert "-N ts-input" in filter_rules and "-N ts-forward" in filter_rules, filter_rules
    assert "-A INPUT -j ts-input" in filter_rules and "-A FORWARD -j ts-forward" in filter_rules
    assert "-A ts-input -i tailscale0 -j ACCEPT" in filter_rules
    nat_rules = sh(box, f"{env} iptables -t nat -S")
    assert "-N ts-postrouting" in nat_rules and "-A POSTROUTING -j ts-postrouting" in nat_rules, nat_rules
    # The nftables chains of the first run went with that daemon (its stop runs `tailscaled --cleanup`).
    assert not {c for c in nft_chains(box) if c.split()[-1].startswith("ts-")}
    node = headscale_node(box, state)
    assert node.get("online") and node["given_name"] == BOX
    again = run_site(box, work, mirror, KERNEL)
    assert again.rc == 0 and again.changed == 0 and again.puts == 0, again.output[-3000:]
