"""A device's process tree: its init in fresh pid/mount/uts namespaces inside the device netns, and entering it.

The device init is busybox init (pid 1 of the device's pid namespace, chrooted into the device root): it runs
/etc/init.d/rcS, respawns telnetd and reaps orphans like on the real devices. Killing it makes the kernel kill every
other process of the pid namespace, and its mount namespace (proc, dev, tmpfs /tmp and /run) goes with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from fleetlab.devices import Profile
from fleetlab.state import Device, LabError, ProcRef

DEVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Runs as pid 1 of the new pid namespace (host /bin/sh, before chroot), in the device's new mount namespace.
# $1 root, $2 hostname, $3 device dir, $4 "tun" or "", $5 "ro" or "".
INIT_SCRIPT = r"""
set -e
R=$1
# The new mount namespace is a copy of the host's: drop the other devices' mounts it inherited.
awk -v own="$3/" '$2 ~ "^/run/fleetlab/devices/" && index($2 "/", own) != 1 {print $2}' /proc/self/mounts \
    | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
if [ "$6" = hide-tun ]; then
    # The device's kernel view without tun: a /proc/misc that does not list it, no /sys/class/misc entries.
    grep -vw tun "$R/proc/misc" > "$3/misc-without-tun"
    mount -o bind,ro "$3/misc-without-tun" "$R/proc/misc"
    mount -t tmpfs -o ro,size=4k fleetlab-nomisc "$R/sys/class/misc"
fi
mount -t tmpfs -o mode=0755,size=1m fleetlab-dev "$R/dev"
mknod -m 666 "$R/dev/null" c 1 3
mknod -m 666 "$R/dev/zero" c 1 5
mknod -m 666 "$R/dev/full" c 1 7
mknod -m 666 "$R/dev/random" c 1 8
mknod -m 666 "$R/dev/urandom" c 1 9
mknod -m 666 "$R/dev/tty" c 5 0
mkdir "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
if [ "$4" = tun ]; then mkdir "$R/dev/net"; mknod -m 666 "$R/dev/net/tun" c 10 200; fi
mount -t tmpfs -o mode=1777,size=64m fleetlab-tmp "$R/tmp"
mount -t tmpfs -o mode=0755,size=16m fleetlab-run "$R/run"
if [ "$5" = ro ]; then mount -o remount,bind,ro "$R"; fi
hostname "$2"
cd "$R"
exec chroot "$R" /sbin/init
"""


def device_env() -> dict[str, str]:
    env = {"PATH": DEVICE_PATH, "HOME": "/root", "USER": "root", "LOGNAME": "root", "SHELL": "/bin/sh"}
    return {**env, "TERM": "vt102"}


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            kids.append(int(entry.name))
    return kids


def start_init(device: Device, profile: Profile) -> None:
    """Start the device's init; record launcher (unshare) and init pids; return once init is chrooted."""
    log = open(device.log, "ab")  # noqa: SIM115 -- handed to the child, closed right after spawning
    try:
        launcher = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{device.netns}",
                "unshare",
                "--pid",
                "--mount",
                "--uts",
                "--fork",
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-c",
                INIT_SCRIPT,
                "fleetlab-init",
                str(device.root),
                device.hostname,
                str(device.dir),
                "tun" if device.tun_node else "",
                "ro" if device.readonly_root else "",
                "hide-tun" if device.hide_tun else "",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=device_env(),
            start_new_session=True,  # not killed with the fleetlab command's terminal
        )
    finally:
        log.close()
    device.launcher = ProcRef.of(launcher.pid)
    deadline = time.monotonic() + 20
    root = str(device.root)
    while time.monotonic() < deadline:
        if launcher.poll() is not None:
            raise LabError(f"device {device.name} failed to start: see {device.log}")
        kids = _children(launcher.pid)
        if kids:
            try:
                if os.readlink(f"/proc/{kids[0]}/root") == root:
                    device.init = ProcRef.of(kids[0])
                    return
            except OSError:
                pass
        time.sleep(0.01)
    raise LabError(f"device {device.name}: init did not start within 20 s (see {device.log})")


def stop_init(device: Device, timeout: float = 10.0) -> None:
    """Kill the device's pid namespace through its init (by recorded pid), then wait for the launcher to exit."""
    for ref in (device.init, device.launcher):
        if ref is not None and ref.alive():
            os.kill(ref.pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(ref is not None and ref.alive() for ref in (device.init, device.launcher)):
            break
        # The launcher may be our own child (up and reboot in one run): reap it so it does not stay a zombie.
        if device.launcher is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(device.launcher.pid, os.WNOHANG)
        time.sleep(0.02)
    else:
        raise LabError(f"device {device.name}: processes still alive after SIGKILL")
    device.init = None
    device.launcher = None


def start_fat(device: Device, path: str, image: Path, delay: float = 0.0) -> ProcRef:
    """Mount a FAT image at `path` inside the device's mount namespace with fusefat (the host kernel has no vfat),
    after `delay` seconds (a storage mounted late after boot). The fusefat process is host-side (recorded: stop_fat
    ends it, which unmounts); the device sees a `fuse.fusefat` mount in its /proc/mounts."""
    assert device.init is not None
    target = str(device.root / path.lstrip("/"))
    script = 'sleep "$1"; exec fusefat -f -o rw+ "$2" "$3"'
    cmd = ["nsenter", "-t", str(device.init.pid), "-m", "--", "/bin/sh", "-c", script, "fat", f"{delay:g}"]
    with open(device.dir / "fusefat.log", "ab") as log:
        proc = subprocess.Popen(
            [*cmd, str(image), target], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    ref = ProcRef.of(proc.pid)
    if delay <= 0:
        wait_mounted(device, path, proc)
    return ref


def wait_mounted(device: Device, path: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20) -> None:
    """Wait until the device's own mount table lists `path`."""
    assert device.init is not None
    mounts = Path(f"/proc/{device.init.pid}/mounts")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if any(line.split()[1] == path for line in mounts.read_text().splitlines()):
                return
        if proc is not None and proc.poll() is not None:
            raise LabError(f"device {device.name}: fusefat exited (rc={proc.returncode}); see {device.dir}/fusefat.log")
        time.sleep(0.02)
    raise LabError(f"device {device.name}: {path} not mounted after {timeout:.0f} s")


def stop_fat(refs: list[ProcRef], timeout: float = 20.0) -> None:
    """End fusefat processes: SIGTERM (fusefat writes back and unmounts), SIGKILL only if one hangs."""
    live = [ref for ref in refs if ref.alive()]
    for ref in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(ref.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(ref.alive() for ref in live) and time.monotonic() < deadline:
        for ref in live:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(ref.pid, os.WNOHANG)
        time.sleep(0.02)
    for ref in live:
        if ref.alive():
            os.kill(ref.pid, signal.SIGKILL)


def alive(device: Device) -> bool:
    return device.init is not None and device.init.alive()


def nsenter_cmd(device: Device, *, chroot: bool = True) -> list[str]:
    """Prefix that runs a command inside the device: its net, mount, uts and pid namespaces (and its root)."""
    if not alive(device):
        raise LabError(f"device {device.name} is not running (fleetlab reboot {device.name}?)")
    assert device.init is not None
    cmd = ["nsenter", "-t", str(device.init.pid), "-n", "-m", "-u", "-p"]
    if chroot:
        cmd += ["-r", "-w"]
    return [*cmd, "--"]


def exec_in(
    device: Device, argv: list[str], *, input: str | None = None, timeout: float | None = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*nsenter_cmd(device), *argv],
        input=input,
        check=False,
        capture_output=True,
        text=True,
        env=device_env(),
        timeout=timeout,
    )


def wait_booted(device: Device, marker: str, timeout: float = 120.0) -> None:
    """Wait until init has run rcS to its end (it then touches `marker` inside the device)."""
    assert device.init is not None
    path = Path(f"/proc/{device.init.pid}/root") / marker.lstrip("/")
    deadline = time.monotonic() + timeout
    while not path.exists():
        if not device.init.alive():
            raise LabError(f"device {device.name}: init died during boot (see {device.log})")
        if time.monotonic() > deadline:
            raise LabError(f"device {device.name}: boot scripts still running after {timeout:.0f} s (see {device.log})")
        time.sleep(0.01)


def wait_tcp(address: str, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError as err:
            if time.monotonic() > deadline:
                raise LabError(f"{address}:{port} not reachable after {timeout:.0f} s: {err}") from None
            time.sleep(0.02)
