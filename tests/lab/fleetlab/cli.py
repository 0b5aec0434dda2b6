"""The `fleetlab` command: a thin argparse layer over fleetlab.lab (see docs/lab.md)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from fleetlab import boot, devices, inventory, lab
from fleetlab.state import Device, LabError
from fleetlab.udev import UdevRuleError


def _describe(device: Device) -> str:
    doors = []
    if "telnet" in device.services:
        doors.append(f"telnet {device.address} {device.services['telnet']} (user root)")
    if "adb" in device.services:
        doors.append(f"adb connect {device.address}:{device.services['adb']}")
    if "ssh" in device.services:
        doors.append(f"ssh root@{device.address}")
    return f"{device.name}\t{device.profile}\t{device.address}\t{'; '.join(doors)}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleetlab", description="fleetmesh.tailscale device lab (run as root)")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("prepare", help="download .debs, build templates and iptables bundles (idempotent)")
    sub.add_parser(
        "build", help="build the real Tailscale releases and the control plane from their Go modules (cached)"
    )

    up = sub.add_parser("up", help="start a device")
    up.add_argument("--profile", required=True, choices=devices.ALL_PROFILES)
    up.add_argument("name")
    up.add_argument(
        "--password",
        default=os.environ.get("FLEETLAB_PASSWORD", ""),
        help="root password (default empty; FLEETLAB_PASSWORD keeps it off the command line)",
    )
    up.add_argument("--login-prompt", action="store_true", help="adb shell asks login/password (quecopen)")
    up.add_argument("--readonly-root", action="store_true", help="mount / read-only (quecopen)")
    tun = up.add_mutually_exclusive_group()
    tun.add_argument("--no-tun-node", dest="tun_node", action="store_false", default=None, help="no /dev/net/tun")
    tun.add_argument("--tun-node", dest="tun_node", action="store_true", help="create /dev/net/tun (quecopen)")
    up.add_argument(
        "--hide-tun",
        action="store_true",
        help="hide tun from the device's kernel view (/proc/misc, /sys/class/misc) and give it no /dev/net/tun",
    )
    up.add_argument("--hostname", help="override the profile's hostname")
    up.add_argument(
        "--arch",
        choices=devices.ARCHES,
        help="userland architecture when not the profile's (kobo --arch amd64: the kobo shape, run natively)",
    )
    up.add_argument(
        "--onboard-fs",
        choices=devices.DATA_FILESYSTEMS,
        help="filesystem of the data mount (kobo: fat by default, a FUSE-mounted FAT32 image; tmpfs otherwise)",
    )
    up.add_argument("--late-mount", type=float, default=0, metavar="S", help="FAT data mount appears S s after boot")
    up.add_argument("--no-var-run", action="store_true", help="no /var/run on the device")
    up.add_argument("--motd", action="store_true", help="a MOTD at login and a coloured shell prompt")
    up.add_argument("--no-base64", action="store_true", help="no base64 applet link")

    down = sub.add_parser("down", help="remove a device, or all of the lab")
    target = down.add_mutually_exclusive_group(required=True)
    target.add_argument("name", nargs="?")
    target.add_argument("--all", action="store_true")

    sub.add_parser("list", help="running devices")
    ex = sub.add_parser("exec", help="run a command inside a device: fleetlab exec NAME -- CMD ...")
    ex.add_argument("name")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    rb = sub.add_parser("reboot", help="kill every process of a device and boot it again")
    rb.add_argument("name")
    fw = sub.add_parser(
        "firmware", help="simulate a firmware update: root back to the image, storage kept, boot (fleetlab/faults.py)"
    )
    fw.add_argument("name")
    wf = sub.add_parser("wifi", help="fire the wlan0 add (up) or remove (down) uevent")
    wf.add_argument("name")
    wf.add_argument("state", choices=["up", "down"])
    inv = sub.add_parser("inventory", help="YAML Ansible inventory of the running devices (or only the named ones)")
    inv.add_argument("names", nargs="*", metavar="NAME", help="only these devices (each must be running)")
    sh = sub.add_parser("shape", help="put the link shaper in front of a device's door (or --off)")
    sh.add_argument("name")
    sh.add_argument("--latency-ms", type=int, default=0, help="one-way delay each direction")
    sh.add_argument("--rate-kbit", type=int, default=0, help="bandwidth cap per direction (0: none)")
    sh.add_argument("--cut-after-bytes", type=int, default=0, help="abort each connection after N bytes (0: never)")
    sh.add_argument("--off", action="store_true", help="remove the shaper")
    mi = sub.add_parser("mirror", help="start/stop the release mirror on 198.18.0.1:8080, or its status")
    mi.add_argument("action", choices=["start", "stop", "status"], help="status: exit 0 if running (from records)")
    _control_parser(sub)
    _lan_parser(sub)
    return p


def _control_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ct = sub.add_parser("control", help="the lab control plane: headscale + derper on 198.18.0.2 (fleetlab/control.py)")
    verbs = ct.add_subparsers(dest="action", required=True)
    verbs.add_parser("up", help="start headscale and derper (idempotent); prints the control URL")
    verbs.add_parser("down", help="stop them and remove their netns, veth and files (idempotent)")
    verbs.add_parser("status", help="exit 0 and print the URL if running (from records)")
    verbs.add_parser("nodes", help="the tailnet's nodes: id, name, addresses, online, tags")
    key = verbs.add_parser("key", help="mint a pre-auth key of the lab user; prints it (a secret)")
    key.add_argument("--reusable", action="store_true")
    key.add_argument("--ephemeral", action="store_true")
    key.add_argument("--tags", default="", help="comma-separated, e.g. tag:lab,tag:fleetmesh")
    key.add_argument("--expiration", default="1h", help="e.g. 30m, 1h, 24h")
    ar = verbs.add_parser("approve-routes", help="set a node's approved routes (replaces the list)")
    ar.add_argument("node_id", type=int, metavar="NODE_ID")
    ar.add_argument("routes", nargs="*", metavar="CIDR", help="none: remove all approved routes")


def _lan_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ln = sub.add_parser("lan", help="a LAN host behind a device, on its bridge0 (fleetlab/lan.py), or --off")
    ln.add_argument("name")
    ln.add_argument("--cidr", default="192.168.225.0/24", help="IPv4 LAN: .1 on the device's bridge0, .2 the host")
    ln.add_argument(
        "--ipv6", nargs="?", const="fd00:225::/64", default=None, metavar="CIDR", help="also IPv6: ::1 and ::2"
    )
    ln.add_argument("--port", type=int, default=7777, help="the LAN host's hello/echo TCP server port")
    ln.add_argument("--off", action="store_true", help="remove the LAN")


def _lan(args: argparse.Namespace) -> int:
    from fleetlab import lan

    if args.off:
        lan.detach(args.name)
        return 0
    info = lan.attach(args.name, args.cidr, ipv6=args.ipv6, echo_port=args.port)
    six = f", {info['device_address6']} / {info['host_address6']}" if info["ipv6"] else ""
    print(
        f"{args.name}: LAN {info['cidr']}{' ' + info['ipv6'] if info['ipv6'] else ''} on {info['interface']} "
        f"(device {info['device_address']}, host {info['host_address']}{six} in netns {info['netns']}); "
        f"echo server on port {info['echo_port']}"
    )
    return 0


def _control(args: argparse.Namespace) -> int:
    from fleetlab import control

    if args.action == "up":
        print(control.up())
    elif args.action == "down":
        control.down()
    elif args.action == "status":
        url = control.status()
        print(f"running on {url}" if url else "not running")
        return 0 if url else 3
    elif args.action == "nodes":
        for node in control.nodes():
            state = "online" if node.get("online") else "offline"
            addrs = ",".join(node.get("ip_addresses") or [])
            tags = ",".join(node.get("tags") or []) or "-"
            print(f"{node.get('id')}\t{node.get('given_name') or node.get('name')}\t{addrs}\t{state}\t{tags}")
    elif args.action == "key":
        tags = [t for t in args.tags.split(",") if t.strip()]
        print(control.mint_key(reusable=args.reusable, ephemeral=args.ephemeral, tags=tags, expiration=args.expiration))
    elif args.action == "approve-routes":
        node = control.approve_routes(args.node_id, args.routes)
        print(f"{node.get('id')}\tapproved: {','.join(node.get('approved_routes') or []) or '-'}")
    return 0


def _exec(name: str, cmd: list[str]) -> int:
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        cmd = ["/bin/sh"]
    device = lab.get(name)
    if device.profile == "systemd":
        proc = lab.exec_(name, cmd, timeout=None)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        return proc.returncode
    # Interactive: the terminal is handed through, so `fleetlab exec NAME` gives a shell inside the device.
    return subprocess.call([*boot.nsenter_cmd(device), *cmd], env=boot.device_env())


def _build() -> None:
    """Everything the lab builds with Go, each once per machine: the releases the mirror serves, headscale, derper."""
    import time

    from fleetlab import control, tailscale_release

    start = time.monotonic()
    for item in tailscale_release.build():
        print(f"release {item.version} {item.arch}: {item.path} ({item.path.stat().st_size} bytes)")
    for name, path in control.binaries().items():
        print(f"control plane {name}: {path}")
    print(f"fleetlab build: done in {time.monotonic() - start:.0f} s")


def run(args: argparse.Namespace) -> int:
    lab.require_root()
    if args.command == "prepare":
        lab.prepare()
    elif args.command == "build":
        _build()
    elif args.command == "up":
        device = lab.up(
            args.name,
            args.profile,
            password=args.password,
            login_prompt=args.login_prompt,
            readonly_root=args.readonly_root,
            tun_node=args.tun_node,
            hide_tun=args.hide_tun,
            hostname=args.hostname,
            arch=args.arch,
            onboard_fs=args.onboard_fs,
            late_mount=args.late_mount,
            no_var_run=args.no_var_run,
            motd=args.motd,
            no_base64=args.no_base64,
        )
        print(_describe(device))
    elif args.command == "down":
        if args.all:
            lab.down_all()
        else:
            lab.down(args.name)
    elif args.command == "list":
        for device in lab.list_devices():
            state = "running" if device.profile == "systemd" or boot.alive(device) else "stopped"
            print(f"{_describe(device)}\t{state}")
    elif args.command == "exec":
        return _exec(args.name, args.cmd)
    elif args.command == "reboot":
        print(_describe(lab.reboot(args.name)))
    elif args.command == "firmware":
        from fleetlab import faults

        print(_describe(faults.firmware(args.name)))
    elif args.command == "wifi":
        for result in lab.wifi(args.name, args.state):
            status = "timed out (killed)" if result.returncode is None else f"exit {result.returncode}"
            print(f"RUN {result.command}: {status}")
    elif args.command == "inventory":
        sys.stdout.write(inventory.render(inventory.select(lab.list_devices(), args.names)))
    elif args.command == "shape":
        if args.off:
            lab.unshape(args.name)
        else:
            listen = lab.shape(
                args.name, latency_ms=args.latency_ms, rate_kbit=args.rate_kbit, cut_after_bytes=args.cut_after_bytes
            )
            print(f"{args.name}: shaped door at {listen} (fleetlab inventory points there)")
    elif args.command == "mirror" and args.action == "status":
        url = lab.mirror_status()
        print(f"running on {url}" if url else "not running")
        return 0 if url else 3
    elif args.command == "mirror":
        lab.mirror(args.action)
    elif args.command == "control":
        return _control(args)
    elif args.command == "lan":
        return _lan(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except (LabError, UdevRuleError, KeyError) as err:
        print(f"fleetlab: {err.args[0] if err.args else err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
