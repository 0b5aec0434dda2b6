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
    return p


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


def run(args: argparse.Namespace) -> int:
    lab.require_root()
    if args.command == "prepare":
        lab.prepare()
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
