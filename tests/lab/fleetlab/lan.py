"""A LAN behind a lab device: one LAN host in a netns of its own, cabled to the device as its `bridge0`.

from fleetlab import lan
info = lan.attach("quec1")                         # 192.168.225.0/24: device bridge0 .1, LAN host eth0 .2
info = lan.attach("gw1", cidr="192.168.226.0/24", ipv6="fd00:226::/64")
lan.detach("quec1")

What it makes, for a device NAME (netns fleetlab-NAME):

- netns `fleetlab-lan-NAME` (the LAN host): `lo` up, `eth0` with the second address of the CIDR (.2/24) and a
  default route via the first (.1); with `ipv6`, ::2/64 and a default route via ::1 as well;
- a veth pair made directly inside the two namespaces (nothing ever appears in the host's namespace, so no host
  interface names): the device's end is `bridge0` with .1/24 (and ::1/64), named as the QuecOpen module's LAN
  bridge (the collection's quecopen profile says `lan_interface: bridge0`); IPv6 addresses skip DAD (`nodad`);
- a tiny TCP server on the LAN host (`python -m fleetlab.lan serve`, the host's python, run with nsenter in the LAN
  netns; dual-stack on port ECHO_PORT unless told otherwise): each connection gets one line
  `hello from fleetlab-lan-NAME to <client address>`, then every line it sends comes back as `echo: <line>`, until
  the client closes or is idle for 30 s. The client address shows who the LAN host saw: a subnet router's own LAN
  address when it source-NATs (tailscaled's default), a tailnet address when it does not.

The server is recorded as the device's `procs/lan-echo.json` (state.ProcRef): `lab.down` and `lab.reboot` kill it
by pid; `down` then deletes the LAN netns (lab._teardown calls teardown()), and `reboot` starts the server again
(the LAN is the device's surroundings, not the device: a power cycle of the router leaves it up). The LAN is
recorded in the device's `extra["lan"]`. The host's own network is never touched: the LAN host has no link to it.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fleetlab.state import Device, LabError, ProcRef, check_name

DEFAULT_CIDR = "192.168.225.0/24"  # the QuecOpen module's LAN (the seed's subnet relay example)
DEFAULT_IPV6 = "fd00:225::/64"
DEVICE_IFNAME = "bridge0"
HOST_IFNAME = "eth0"
ECHO_PORT = 7777
PROC_LABEL = "lan-echo"
IDLE_TIMEOUT = 30.0
READY_TIMEOUT = 20.0


def netns_name(name: str) -> str:
    return f"fleetlab-lan-{name}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], check=False, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def _netns_exists(ns: str) -> bool:
    return Path(f"/run/netns/{ns}").exists()


def _procs_dir(device: Device) -> Path:
    from fleetlab import lab

    return device.dir / lab.PROCS_SUBDIR


def plan(name: str, cidr: str = DEFAULT_CIDR, ipv6: str | None = None, port: int | None = ECHO_PORT) -> dict[str, Any]:
    """The LAN's addresses (what extra["lan"] records); raises LabError for a CIDR that cannot hold them."""
    try:
        net4 = ipaddress.IPv4Network(cidr)
    except ValueError as err:
        raise LabError(f"bad LAN CIDR {cidr!r}: {err}") from None
    if net4.prefixlen > 30:
        raise LabError(f"LAN CIDR {cidr} is too small: it needs room for .1 (device) and .2 (LAN host)")
    info: dict[str, Any] = {
        "netns": netns_name(name),
        "interface": DEVICE_IFNAME,
        "cidr": str(net4),
        "device_address": str(net4.network_address + 1),
        "host_address": str(net4.network_address + 2),
        "ipv6": None,
        "device_address6": None,
        "host_address6": None,
        "echo_port": port,
    }
    if ipv6:
        try:
            net6 = ipaddress.IPv6Network(ipv6)
        except ValueError as err:
            raise LabError(f"bad LAN IPv6 CIDR {ipv6!r}: {err}") from None
        if net6.prefixlen > 126:
            raise LabError(f"LAN IPv6 CIDR {ipv6} is too small: it needs room for ::1 and ::2")
        info.update(
            ipv6=str(net6),
            device_address6=str(net6.network_address + 1),
            host_address6=str(net6.network_address + 2),
        )
    return info


def _load(name: str) -> Device:
    from fleetlab import lab

    lab.require_root()
    check_name(name)
    device = Device.load(name)
    if device.profile == "systemd":
        # lab.down delegates a systemd device to fleetlab/systemd_device.py, which would not remove the LAN.
        raise LabError("a LAN behind a device is for the namespace profiles (kobo, quecopen, sysvinit), not systemd")
    return device


def attach(
    name: str, cidr: str = DEFAULT_CIDR, *, ipv6: str | None = None, echo_port: int | None = ECHO_PORT
) -> dict[str, Any]:
    """Make the LAN behind device NAME (replacing one already there); returns what extra["lan"] records.

    ipv6: a /64 (or any prefix up to /126) such as DEFAULT_IPV6 for ::1 on the device and ::2 on the LAN host.
    echo_port: the LAN host's TCP server port; None for no server.
    """
    device = _load(name)
    info = plan(name, cidr, ipv6, echo_port)
    if device.extra.get("lan") or _netns_exists(info["netns"]):
        _remove(device)
    device.extra["lan"] = info
    device.save()  # recorded first: a failure below leaves something `down` knows to remove
    try:
        _make_net(device, info)
        if echo_port is not None:
            start_server(device)
    except BaseException:
        with contextlib.suppress(Exception):
            detach(name)
        raise
    return info


def _make_net(device: Device, info: dict[str, Any]) -> None:
    ns, dev_ns = info["netns"], device.netns
    if not _netns_exists(dev_ns):
        raise LabError(f"device {device.name} has no netns {dev_ns}")
    _ip("netns", "add", ns)
    _ip("-n", ns, "link", "set", "lo", "up")
    # Made inside the LAN netns with its peer created straight in the device's: no host-side interface at all.
    _ip("-n", ns, "link", "add", HOST_IFNAME, "type", "veth", "peer", "name", DEVICE_IFNAME, "netns", dev_ns)
    _ip("-n", ns, "addr", "add", f"{info['host_address']}/{info['cidr'].split('/')[1]}", "dev", HOST_IFNAME)
    _ip("-n", dev_ns, "addr", "add", f"{info['device_address']}/{info['cidr'].split('/')[1]}", "dev", DEVICE_IFNAME)
    if info["ipv6"]:
        plen = info["ipv6"].split("/")[1]
        _ip("-n", ns, "addr", "add", f"{info['host_address6']}/{plen}", "dev", HOST_IFNAME, "nodad")
        _ip("-n", dev_ns, "addr", "add", f"{info['device_address6']}/{plen}", "dev", DEVICE_IFNAME, "nodad")
    _ip("-n", ns, "link", "set", HOST_IFNAME, "up")
    _ip("-n", dev_ns, "link", "set", DEVICE_IFNAME, "up")
    _ip("-n", ns, "route", "add", "default", "via", info["device_address"])
    if info["ipv6"]:
        _ip("-n", ns, "-6", "route", "add", "default", "via", info["device_address6"])


def _server_record(device: Device) -> Path:
    return _procs_dir(device) / f"{PROC_LABEL}.json"


def _stop_server(device: Device) -> None:
    path = _server_record(device)
    with contextlib.suppress(OSError, ValueError, TypeError):
        ref = ProcRef(**json.loads(path.read_text()))
        if ref.alive():
            os.kill(ref.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while ref.alive() and time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(ref.pid, os.WNOHANG)  # our own child when attach and detach run in one process
                time.sleep(0.02)
    path.unlink(missing_ok=True)


def _listening(pid: int, port: int, ns: str) -> bool:
    """The process is in netns ns (nsenter has switched) and it has a TCP socket listening on port (state 0A in
    /proc/PID/net/tcp{,6})."""
    with contextlib.suppress(OSError):
        if os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat(f"/run/netns/{ns}").st_ino:
            return False
    for table in ("tcp6", "tcp"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def start_server(device: Device) -> ProcRef:
    """Start the LAN host's TCP server (replacing a recorded one) and record it under the device's procs dir."""
    info = device.extra["lan"]
    port = int(info["echo_port"])
    _stop_server(device)
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    cmd = ["nsenter", f"--net=/run/netns/{info['netns']}", "--", sys.executable, "-m", "fleetlab.lan", "serve"]
    cmd += ["--port", str(port), "--name", info["netns"]]
    with open(device.dir / "lan-echo.log", "ab") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    ref = ProcRef.of(proc.pid)  # nsenter execs the server: the pid is its own
    procs = _procs_dir(device)
    procs.mkdir(exist_ok=True)
    _server_record(device).write_text(json.dumps({"pid": ref.pid, "starttime": ref.starttime}) + "\n")
    deadline = time.monotonic() + READY_TIMEOUT
    while not _listening(proc.pid, port, info["netns"]):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_server(device)
            raise LabError(f"the LAN host's server did not listen on port {port}: see {device.dir / 'lan-echo.log'}")
        time.sleep(0.05)
    return ref


def _remove(device: Device) -> None:
    """Stop the server and delete the LAN netns (its veth pair, so the device's bridge0, goes with it)."""
    _stop_server(device)
    info = device.extra.get("lan") or {}
    ns = info.get("netns") or netns_name(device.name)
    if _netns_exists(ns):
        _ip("netns", "del", ns)
    # A half-made pair whose LAN end never got its netns: the device end would stay behind.
    if Path(f"/run/netns/{device.netns}").exists():
        _ip("-n", device.netns, "link", "del", DEVICE_IFNAME, check=False)


def detach(name: str) -> None:
    """Remove the LAN behind device NAME. Idempotent; with the device gone, removes a LAN netns left by its name."""
    from fleetlab import lab

    lab.require_root()
    check_name(name)
    try:
        device = Device.load(name)
    except LabError:
        if _netns_exists(netns_name(name)):
            _ip("netns", "del", netns_name(name))
        return
    _remove(device)
    if device.extra.pop("lan", None) is not None:
        device.save()


def teardown(device: Device) -> None:
    """lab.down's hook (lab._teardown): the device and its records go next, so nothing is saved here."""
    if device.extra.get("lan") or _netns_exists(netns_name(device.name)):
        _remove(device)


def after_reboot(device: Device) -> None:
    """lab.reboot's hook: reboot killed the recorded server with the device's processes; the LAN itself stayed."""
    info = device.extra.get("lan")
    if info and info.get("echo_port") is not None and _netns_exists(info["netns"]):
        start_server(device)


def host_exec(name: str, argv: list[str], *, timeout: float | None = 60) -> subprocess.CompletedProcess[str]:
    """Run argv (a host program) on the LAN host: in the LAN netns, nothing else of the host changed."""
    from fleetlab import lab

    lab.require_root()
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns_name(name)}", "--", *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ----------------------------------------------------------------------------------------------------- the server


def _handle(conn: socket.socket, addr: Any, name: str) -> None:
    client = addr[0].removeprefix("::ffff:")
    print(f"connection from {client} port {addr[1]}", flush=True)
    with conn:
        conn.settimeout(IDLE_TIMEOUT)
        with contextlib.suppress(OSError):
            conn.sendall(f"hello from {name} to {client}\n".encode())
            buf = b""
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    conn.sendall(b"echo: " + line + b"\n")


def serve(port: int, name: str) -> None:
    """The LAN host's server: dual-stack on port (IPv4 only where IPv6 is off), one thread per connection."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        bind: tuple[Any, ...] = ("::", port)
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        bind = ("0.0.0.0", port)  # noqa: S104 - the LAN host's netns only
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(bind)
    sock.listen(16)
    print(f"{name}: listening on port {port}", flush=True)
    while True:
        conn, addr = sock.accept()
        threading.Thread(target=_handle, args=(conn, addr, name), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetlab.lan", description="the LAN host's TCP server")
    sub = parser.add_subparsers(dest="command", required=True)
    sv = sub.add_parser("serve", help="greet each connection with the client's address, echo its lines")
    sv.add_argument("--port", type=int, default=ECHO_PORT)
    sv.add_argument("--name", default="fleetlab-lan")
    args = parser.parse_args(argv)
    serve(args.port, args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
