"""Faults the field has and the lab simulates: firmware updates, snapshots of a device, cut device-side HTTP pulls.

- `firmware(name)`: what a Kobo or QuecOpen firmware update does. The device is powered off, its root filesystem
  goes back to the template image (the overlay's writable layer is emptied; the lab's per-device identity files,
  hostname and root password, are written again as at `up`), every separate storage mount (`/mnt/onboard`,
  `/usrdata`, ...) is kept as it was, and the device boots again.
- `snapshot(name, dest)` / `restore(name, src)`: the device's writable root layer and its storage mounts copied
  out while it is powered off, and put back (then booted): a test starts each case from the same device.
- `PullCutter` / `cut_pulls(name, port, cut_after_bytes)`: the link shaper (fleetlab/shaper.py) listening on
  127.0.0.1:PORT *inside the device's network namespace* and forwarding to 127.0.0.1:PORT on the host. A device that
  pulls a file from http://127.0.0.1:PORT/... (the telnet plugin's one-shot server bound there with
  `fleetmesh_telnet_http_host: 127.0.0.1`, `fleetmesh_telnet_http_port: PORT`) then pulls through it, and the
  connection is reset after N bytes: the device-pulls-HTTP transfer path cut mid-file. Nothing on the host changes
  (the listening socket is made in the device's netns, then the process returns to the host's).

All of it works by recorded pids and the lab's own mounts (fleetlab/lab.py); nothing is killed by name.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fleetlab import boot, devices, lab, rootfs
from fleetlab.shaper import Shaper, ShaperConfig
from fleetlab.state import Device, LabError, ProcRef

CLONE_NEWNET = 0x40000000
PULL_CUTTER_LABEL = "pull-cutter"


@dataclass
class Offline:
    """A powered-off device: its overlay's writable layer and its storage mounts (held at `mounts`, by path)."""

    device: Device
    upper: Path
    work: Path
    mounts: dict[str, Path]  # device path (e.g. "/mnt/onboard") -> where its filesystem is held meanwhile
    images: list[Path]  # image files behind storage mounted at boot (FAT), kept in the device dir
    before_boot: list[Callable[[], None]] = field(default_factory=list)  # run once all is mounted again


def _mounts_under(root: Path) -> list[tuple[str, str, str]]:
    """(mount point, fstype, options) of the host mounts at root and below, in mount order."""
    out = []
    with open("/proc/self/mounts") as fh:
        for line in fh:
            fields = line.split()
            point = fields[1].replace("\\040", " ")
            if point == str(root) or point.startswith(f"{root}/"):
                out.append((point, fields[2], fields[3]))
    return out


def _overlay_dirs(options: str) -> dict[str, str]:
    opts = dict(part.split("=", 1) for part in options.split(",") if "=" in part)
    missing = [key for key in ("lowerdir", "upperdir", "workdir") if key not in opts]
    if missing:
        raise LabError(f"the device root is not the lab's overlay (no {', '.join(missing)} in {options})")
    return {key: opts[key] for key in ("lowerdir", "upperdir", "workdir")}


def _clear(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _copy_tree(src: Path, dest: Path) -> None:
    """Everything in src into dest (modes, owners, links, device nodes and overlay whiteouts kept)."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["cp", "-a", f"{src}/.", str(dest)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LabError(f"copying {src} to {dest} failed: {proc.stderr.strip()}")


@contextlib.contextmanager
def offline(name: str) -> Iterator[Offline]:
    """Power the device off, take its root overlay apart (storage mounts held aside), yield, put it back, boot it.

    The storage mounts are bind-mounted aside before the overlay is unmounted, so their filesystems (tmpfs, FAT
    image, whatever the profile has) and their contents stay alive; the overlay's layers are only touched while it
    is unmounted. Whatever the block does, the device is mounted and booted again afterwards.
    """
    lab.require_root()
    device = lab.get(name)
    if device.profile == "systemd":
        raise LabError("the systemd profile is a whole nspawn container: no separate storage to keep")
    prof = devices.get(device.profile, device.arch or None)
    stop_fat = getattr(lab, "_stop_fat", None)  # FAT data mounts (fusefat): written back to their image files
    if stop_fat is not None:
        stop_fat(device)
    lab._kill_recorded(device)  # noqa: SLF001 - the lab's own power-off, as reboot() does it
    device.extra.pop("adbd", None)
    boot.stop_init(device)
    device.save()
    root = device.root
    mounts = _mounts_under(root)
    if not mounts or mounts[0][0] != str(root) or mounts[0][1] != "overlay":
        raise LabError(f"{name}: {root} is not mounted as the lab's overlay")
    layers = _overlay_dirs(mounts[0][2])
    hold = device.dir / "offline"
    shutil.rmtree(hold, ignore_errors=True)
    hold.mkdir()
    held: dict[str, Path] = {}
    for i, (point, _fstype, _opts) in enumerate(mounts[1:]):
        if any(point.startswith(f"{other}/") for other in held):
            continue  # a mount inside a storage mount travels with it (rbind)
        target = hold / str(i)
        target.mkdir()
        rootfs.mount("--rbind", point, str(target))
        held["/" + os.path.relpath(point, root)] = target
    for point, _fstype, _opts in reversed(mounts[1:]):
        rootfs.umount(point)
    rootfs.umount(str(root))
    fat_image = getattr(rootfs, "fat_image", None)
    images = [fat_image(device, path) for path, _size in prof.data_mounts] if fat_image is not None else []
    images = [image for image in images if image.exists()]
    state = Offline(device, Path(layers["upperdir"]), Path(layers["workdir"]), held, images)
    try:
        yield state
    finally:
        _clear(state.work)
        options = ",".join(f"{key}={value}" for key, value in layers.items())
        rootfs.mount("-t", "overlay", "-o", options, f"fleetlab-{name}", str(root))
        for path, target in held.items():
            point = root / path.lstrip("/")
            point.mkdir(parents=True, exist_ok=True)
            rootfs.mount("--rbind", str(target), str(point))
            subprocess.run(["umount", "-R", str(target)], check=False, capture_output=True)
        shutil.rmtree(hold, ignore_errors=True)
        for path in prof.volatile:  # as at reboot: volatile dirs come back empty
            target = root / path.lstrip("/")
            if target.is_dir() and not target.is_symlink():
                _clear(target)
        for step in state.before_boot:
            step()
        lab._boot(device, prof)  # noqa: SLF001 - the lab's own boot sequence (init, doors, boot uevent)
        device.save()
        if device.extra.get("lan"):
            __import__("fleetlab.lan").lan.after_reboot(device)


def firmware(name: str) -> Device:
    """A firmware update: root back to the template image, storage mounts kept, then boot. Returns the device."""
    with offline(name) as off:
        # Whiteouts go with the layer: the template shows through entirely. The lab's per-device identity
        # (hostname, /etc/hosts, root password) is written again, as the device's own factory setup keeps it.
        _clear(off.upper)
        off.before_boot.append(lambda: lab._customise(off.device))  # noqa: SLF001 - the same files as at `up`
    return lab.get(name)


def snapshot(name: str, dest: Path) -> None:
    """Copy the device's writable root layer and storage mounts to dest (powered off; booted again after)."""
    with offline(name) as off:
        shutil.rmtree(dest, ignore_errors=True)
        _copy_tree(off.upper, dest / "root")
        for path, target in off.mounts.items():
            _copy_tree(target, dest / "mounts" / path.strip("/").replace("/", "%"))
        for image in off.images:
            shutil.copy2(image, dest / image.name)
        meta = {"device": name, "mounts": sorted(off.mounts), "images": [image.name for image in off.images]}
        (dest / "snapshot.json").write_text(json.dumps(meta) + "\n")


def restore(name: str, src: Path) -> Device:
    """Put a snapshot back: root layer and storage mounts exactly as saved, then boot. Returns the device."""
    meta = json.loads((src / "snapshot.json").read_text())
    with offline(name) as off:
        if sorted(off.mounts) != meta["mounts"]:
            raise LabError(f"{name}: snapshot of storage {meta['mounts']}, device has {sorted(off.mounts)}")
        _clear(off.upper)
        _copy_tree(src / "root", off.upper)
        for path, target in off.mounts.items():
            _clear(target)
            _copy_tree(src / "mounts" / path.strip("/").replace("/", "%"), target)
        if sorted(image.name for image in off.images) != sorted(meta.get("images", [])):
            raise LabError(f"{name}: snapshot of storage images {meta.get('images')}, device has {off.images}")
        for image in off.images:
            shutil.copy2(src / image.name, image)
    return lab.get(name)


# ------------------------------------------------------------------------------------------ cut device-side pulls


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def listen_in_netns(netns_path: str, host: str, port: int) -> socket.socket:
    """A listening TCP socket in another network namespace; the calling thread is back in its own after."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    other = os.open(netns_path, os.O_RDONLY)
    try:
        _setns(other)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(16)
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(other)
    sock.setblocking(False)
    return sock


class _SocketShaper(Shaper):
    def __init__(self, config: ShaperConfig, sock: socket.socket) -> None:
        super().__init__(config)
        self._sock = sock

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, sock=self._sock)


def cut_pulls(name: str, port: int, cut_after_bytes: int) -> None:
    """Start the pull cutter for the device (replacing one already there); recorded so down/reboot kill it."""
    lab.require_root()
    device = lab.get(name)
    uncut_pulls(name)
    stats = device.dir / f"{PULL_CUTTER_LABEL}-stats.json"
    cmd = [sys.executable, "-m", "fleetlab.faults", "pull-cutter", "--netns", f"/run/netns/{device.netns}"]
    cmd += ["--port", str(port), "--cut-after-bytes", str(cut_after_bytes), "--stats-file", str(stats)]
    ready = device.dir / f"{PULL_CUTTER_LABEL}.ready"
    ready.unlink(missing_ok=True)
    with open(device.dir / f"{PULL_CUTTER_LABEL}.log", "ab") as log:
        proc = subprocess.Popen(
            [*cmd, "--ready-file", str(ready)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    ref = ProcRef.of(proc.pid)
    procs = device.dir / lab.PROCS_SUBDIR
    procs.mkdir(exist_ok=True)
    (procs / f"{PULL_CUTTER_LABEL}.json").write_text(json.dumps({"pid": ref.pid, "starttime": ref.starttime}) + "\n")
    deadline = time.monotonic() + 10
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            uncut_pulls(name)
            raise LabError(f"the pull cutter did not start: see {device.dir / (PULL_CUTTER_LABEL + '.log')}")
        time.sleep(0.02)


def pull_stats(name: str) -> dict[str, object]:
    path = lab.get(name).dir / f"{PULL_CUTTER_LABEL}-stats.json"
    return dict(json.loads(path.read_text())) if path.exists() else {}


def uncut_pulls(name: str) -> None:
    """Stop the device's pull cutter (by recorded pid). Idempotent."""
    device = lab.get(name)
    path = device.dir / lab.PROCS_SUBDIR / f"{PULL_CUTTER_LABEL}.json"
    if not path.exists():
        return
    ref = ProcRef(**json.loads(path.read_text()))
    if ref.alive():
        os.kill(ref.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while ref.alive() and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(ref.pid, os.WNOHANG)
            time.sleep(0.02)
        if ref.alive():
            os.kill(ref.pid, signal.SIGKILL)
    path.unlink()


def _pull_cutter_main(args: argparse.Namespace) -> int:
    sock = listen_in_netns(args.netns, "127.0.0.1", args.port)
    config = ShaperConfig(
        listen_host="127.0.0.1",
        listen_port=args.port,
        target_host="127.0.0.1",
        target_port=args.port,
        cut_after_bytes=args.cut_after_bytes,
        stats_file=Path(args.stats_file) if args.stats_file else None,
    )

    async def run() -> None:
        shaper = _SocketShaper(config, sock)
        await shaper.start()
        shaper.write_stats()
        if args.ready_file:
            Path(args.ready_file).touch()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await shaper.stop()

    asyncio.run(run())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetlab.faults")
    sub = parser.add_subparsers(dest="command", required=True)
    pc = sub.add_parser("pull-cutter", help="shaper on 127.0.0.1:PORT in a netns, to 127.0.0.1:PORT on the host")
    pc.add_argument("--netns", required=True, help="path of the network namespace, e.g. /run/netns/fleetlab-NAME")
    pc.add_argument("--port", type=int, required=True)
    pc.add_argument("--cut-after-bytes", type=int, default=0)
    pc.add_argument("--stats-file")
    pc.add_argument("--ready-file")
    args = parser.parse_args(argv)
    return _pull_cutter_main(args)


if __name__ == "__main__":
    sys.exit(main())
