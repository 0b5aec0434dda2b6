"""Device root filesystems: Debian .debs cached under /var/cache/fleetlab, one read-only template per profile, and
per device an overlay (template below, a size-limited tmpfs above) so a second `up` costs a few mounts, no copies.

armhf packages are only downloaded and unpacked (`apt-get download`, `dpkg-deb -x`), never installed on the host.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from fleetlab import binfmt
from fleetlab.devices import Profile
from fleetlab.state import CACHE_DIR, Device, LabError

DEBS_DIR = CACHE_DIR / "debs"
TEMPLATES_DIR = CACHE_DIR / "templates"
# Bump when the template layout code changes, so old templates are not reused.
TEMPLATE_VERSION = "3"


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc


def ensure_foreign_arch(arch: str) -> None:
    host = _run(["dpkg", "--print-architecture"]).stdout.strip()
    if arch == host:
        return
    if arch not in _run(["dpkg", "--print-foreign-architectures"]).stdout.split():
        print(f"fleetlab: dpkg --add-architecture {arch} && apt-get update (package lists only)", file=sys.stderr)
        _run(["dpkg", "--add-architecture", arch])
        # A mirror sync hiccup on one index (e.g. security) must not stop us: apt-get download reports what's missing.
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True, text=True)


def deb_path(package: str, arch: str) -> Path | None:
    found = sorted(DEBS_DIR.glob(f"{package}_*_{arch}.deb"))
    return found[-1] if found else None


def fetch_debs(packages: list[str], arch: str) -> list[Path]:
    """Download missing .debs (idempotent); print each one fetched."""
    DEBS_DIR.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if deb_path(p, arch) is None]
    if missing:
        ensure_foreign_arch(arch)
        specs = [f"{p}:{arch}" for p in missing]
        print(f"fleetlab: fetching {' '.join(specs)} into {DEBS_DIR}", file=sys.stderr)
        # The _apt sandbox user cannot write to a root-only cache dir; download as root instead of warning.
        _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *specs], cwd=DEBS_DIR)
    paths = []
    for p in packages:
        path = deb_path(p, arch)
        if path is None:
            raise LabError(f"apt-get download {p}:{arch} produced no .deb in {DEBS_DIR}")
        paths.append(path)
    return paths


def extract_deb(deb: Path, dest: Path) -> None:
    _run(["dpkg-deb", "-x", str(deb), str(dest)])


def _template_key(profile: Profile, debs: list[Path]) -> str:
    digest = hashlib.sha256(TEMPLATE_VERSION.encode())
    for deb in debs:
        digest.update(deb.name.encode())
    for path, content in sorted(profile.files.items()):
        digest.update(f"{path}\0{content}".encode())
    digest.update("\0".join(profile.dirs).encode())
    return f"{profile.name}-{digest.hexdigest()[:12]}"


def _populate(profile: Profile, debs: list[Path], root: Path) -> None:
    for d in profile.dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "var/run").symlink_to("../run")
    with tempfile.TemporaryDirectory(prefix="fleetlab-deb-") as scratch:
        unpacked = Path(scratch)
        for deb in debs:
            extract_deb(deb, unpacked)
        shutil.copy2(unpacked / "bin/busybox", root / "bin/busybox")
        # libc6: only the run-time libraries and the dynamic loader (no locales, no gconv), for dynamically
        # linked tools such as the iptables bundle.
        for libdir in ("lib", "lib64"):
            if (unpacked / libdir).is_dir():
                shutil.copytree(unpacked / libdir, root / libdir, symlinks=True, dirs_exist_ok=True)
    for path, content in profile.files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        if path.startswith("etc/init.d/"):
            target.chmod(0o755)
    (root / "etc/shadow").chmod(0o600)
    # Let busybox lay out its own applet links (/bin/sh, /sbin/init, /usr/sbin/telnetd, ...) like a real install;
    # for armhf this runs the ARM busybox through qemu-user.
    _run(["chroot", str(root), "/bin/busybox", "--install", "-s"])


def template(profile: Profile) -> Path:
    """The profile's read-only template rootfs, built once and cached (content-keyed directory name)."""
    if profile.arch != "amd64":
        binfmt.ensure_qemu_arm()
    debs = fetch_debs(list(profile.packages), profile.arch)
    key = _template_key(profile, debs)
    final = TEMPLATES_DIR / key
    if final.is_dir():
        return final
    TEMPLATES_DIR.mkdir(parents=True, exist_ok=True)
    print(f"fleetlab: building template {final}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=TEMPLATES_DIR))
    try:
        _populate(profile, debs, work)
        work.chmod(0o755)
        # Atomic publish: a running device's overlay never sees a half-built template. A concurrent `up` may have
        # published the same template first: then ours is dropped (the finally clause removes it).
        with contextlib.suppress(OSError):
            work.rename(final)
        if not final.is_dir():
            raise LabError(f"could not publish template {final}")
    finally:
        if work.exists():
            shutil.rmtree(work)
    return final


def mount(*args: str) -> None:
    _run(["mount", *args])


def umount(path: str) -> None:
    proc = subprocess.run(["umount", path], check=False, capture_output=True, text=True)
    if proc.returncode != 0 and is_mounted(path):
        # Busy (a stray process of ours still inside): detach it so `down` always finishes.
        _run(["umount", "-l", path])


def is_mounted(path: str) -> bool:
    with open("/proc/self/mounts") as fh:
        return any(line.split()[1] == path for line in fh)


def data_fs(device: Device, profile: Profile) -> str:
    """The filesystem of the device's data mounts: the `up --onboard-fs` choice, else the profile's."""
    return str(device.extra.get("data_fs") or profile.data_fs)


def fat_image(device: Device, path: str) -> Path:
    """The FAT32 image file behind a data mount (in the device dir: it survives `reboot`, goes at `down`)."""
    return device.dir / f"data{path.replace('/', '-')}.img"


def _size_bytes(size: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    return int(size[:-1]) * units[size[-1].lower()] if size[-1].lower() in units else int(size)


def mount_device_root(device: Device, profile: Profile, lower: Path) -> None:
    """Host-side mounts of the device: they outlive the device's own mount namespace, so files survive reboot."""
    rw = device.dir / "rw"
    rw.mkdir(parents=True, exist_ok=True)
    device.root.mkdir(exist_ok=True)
    mount("-t", "tmpfs", "-o", f"size={profile.root_size},mode=0755", f"fleetlab-{device.name}-rw", str(rw))
    device.host_mounts.append(str(rw))
    (rw / "upper").mkdir()
    (rw / "work").mkdir()
    options = f"lowerdir={lower},upperdir={rw / 'upper'},workdir={rw / 'work'}"
    mount("-t", "overlay", "-o", options, f"fleetlab-{device.name}", str(device.root))
    device.host_mounts.append(str(device.root))
    for path, size in profile.data_mounts:
        target = device.root / path.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        if data_fs(device, profile) == "fat":
            # A sparse image file; fusefat mounts it inside the device at every boot (fleetlab.boot.start_fat).
            image = fat_image(device, path)
            with open(image, "wb") as fh:
                fh.truncate(_size_bytes(size))
            label = path.rstrip("/").rsplit("/", 1)[-1].upper()[:11] or "DATA"
            _run(["mkfs.vfat", "-F", "32", "-n", label, str(image)])
            continue
        mount("-t", "tmpfs", "-o", f"size={size},mode=0755", f"fleetlab-{device.name}-data", str(target))
        device.host_mounts.append(str(target))


def unmount_device_root(device: Device) -> None:
    for path in reversed(device.host_mounts):
        with contextlib.suppress(LabError):
            umount(path)
    device.host_mounts.clear()
