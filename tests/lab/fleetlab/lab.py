"""The lab's Python API (used by the CLI and by tests): up, down, exec, reboot, wifi, list, prepare.

from fleetlab import lab
dev = lab.up("kobo1", "kobo")
print(lab.exec_("kobo1", ["uname", "-m"]).stdout)   # armv7l
lab.down("kobo1")
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

from fleetlab import boot, devices, netns, rootfs, udev
from fleetlab.devices import Profile
from fleetlab.state import (
    BRIDGE,
    DEVICES_DIR,
    GATEWAY,
    RUN_DIR,
    Device,
    LabError,
    ProcRef,
    check_name,
    device_names,
    free_index,
    locked,
)

ADB_PORT = 5555
TELNET_PORT = 23
# Other helpers' processes tied to a device (shaper, ...) may be recorded as <device dir>/procs/<label>.json holding
# {"pid": N, "starttime": T} (see state.ProcRef): `down` and `reboot` kill them by pid.
PROCS_SUBDIR = "procs"
# Lab services recorded as /run/fleetlab/<name>.json ({"pid": N, "starttime": T}); while one runs, the bridge stays.
SERVICE_RECORDS = ("mirror", "control-headscale", "control-derper")


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("must run as root (it creates namespaces, mounts and veths): use sudo")


# Contract with fleetlab/systemd_device.py (the systemd profile, another helper's file): the lab delegates whole
# operations to it: up(name) -> Device, down(name) (idempotent), reboot(name) -> Device,
# exec_(name, argv, input=..., timeout=...) -> CompletedProcess[str], and optionally prepare(). It records the device
# with state.Device(profile="systemd", index=state.free_index() taken under state.locked(), services={"ssh": 22},
# extra={"ansible_ssh_private_key_file": ..., ...}).save() and uses the netns/veth helpers of netns.py, so `list`,
# `inventory` and `down --all` see it like any other device.


def _optional_module(name: str, what: str) -> ModuleType:
    """A lab part another helper owns; a clear error while it does not exist yet."""
    if importlib.util.find_spec(f"fleetlab.{name}") is None:
        raise LabError(f"{what} is not available: tests/lab/fleetlab/{name}.py does not exist yet")
    return importlib.import_module(f"fleetlab.{name}")


# ---------------------------------------------------------------------------------------------------------- prepare


def prepare(profiles: list[str] | None = None) -> None:
    """Download and build everything the devices need (idempotent); prints what it fetches or builds."""
    require_root()
    from fleetlab import bundles

    for name in profiles or list(devices.PROFILES):
        path = rootfs.template(devices.get(name))
        print(f"template {name}: {path}")
    for arch in bundles.ARCHES:
        print(f"iptables bundle {arch}: {bundles.ensure_bundle(arch)}")
    if importlib.util.find_spec("fleetlab.systemd_device") is not None:
        systemd_device = importlib.import_module("fleetlab.systemd_device")
        if hasattr(systemd_device, "prepare"):
            systemd_device.prepare()
            print("systemd profile: prepared")
    else:
        print("systemd profile: skipped (fleetlab/systemd_device.py does not exist yet)")


# --------------------------------------------------------------------------------------------------------------- up


def _hash_password(root: Path, password: str) -> str:
    """SHA-512 crypt by the device's own busybox; the password travels on stdin, never on a command line."""
    proc = subprocess.run(
        ["chroot", str(root), "/bin/busybox", "mkpasswd", "-m", "sha512", "-P", "0"],
        input=password,
        check=False,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not proc.stdout.startswith("$"):
        raise LabError(f"hashing the root password failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _customise(device: Device) -> None:
    """Per-device files written into the overlay (the template stays shared and untouched)."""
    root = device.root
    (root / "etc/hostname").write_text(f"{device.hostname}\n")
    (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n{device.address} {device.hostname}\n")
    if device.password:
        hashed = _hash_password(root, device.password)
        shadow = root / "etc/shadow"
        shadow.write_text(f"root:{hashed}:19000:0:99999:7:::\n")
        shadow.chmod(0o600)
    if device.extra.get("no_var_run"):
        # No /var/run at all (the template's link to /run removed): whatever needs it must create it.
        (root / "var/run").unlink(missing_ok=True)
    if device.extra.get("motd"):
        # busybox login prints /etc/motd; the login shell reads /etc/profile: a coloured prompt.
        (root / "etc/motd").write_text(devices.MOTD)
        profile = root / "etc/profile"
        profile.write_text(profile.read_text() + devices.COLOUR_PS1)
    if device.extra.get("no_base64"):
        _drop_base64_applet(root)


# busybox's sorted applet-name table around base64; "base6_" sorts at the same place (awk < base6_ < basename),
# so the binary search for every other applet still works.
_APPLET_NAMES = b"\x00base64\x00basename\x00"


def _drop_base64_applet(root: Path) -> None:
    """A busybox built without base64: Debian's busybox-static runs applets without links (its shell is
    standalone), so the device's copy gets the applet renamed in its name table and the link removed."""
    for rel in ("bin/base64", "usr/bin/base64"):
        (root / rel).unlink(missing_ok=True)
    path = root / "bin/busybox"
    data = path.read_bytes()
    if data.count(_APPLET_NAMES) != 1:
        raise LabError("--no-base64: this busybox's applet table is not the one the lab knows how to edit")
    tmp = path.with_name(".busybox.fleetlab")
    tmp.write_bytes(data.replace(_APPLET_NAMES, _APPLET_NAMES.replace(b"base64", b"base6_")))
    tmp.chmod(0o755)
    tmp.replace(path)


def _start_adbd(device: Device) -> None:
    adbd = _optional_module("adbd", "the quecopen profile's adbd")
    cmd = [
        *boot.nsenter_cmd(device, chroot=False),
        sys.executable,
        "-m",
        adbd.__name__,
        "--listen",
        f"{device.address}:{ADB_PORT}",
        "--root",
        str(device.root),
    ]
    env = boot.device_env()
    if device.login_prompt:
        # The adbd reads the expected login from its environment: a password never goes on a command line.
        cmd += ["--login-prompt"]
        env["FLEETLAB_ADB_LOGIN"] = f"root:{device.password}"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    with open(device.dir / "adbd.log", "ab") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    device.extra["adbd"] = {"pid": proc.pid, "starttime": ProcRef.of(proc.pid).starttime}


def _start_fat(device: Device, profile: Profile) -> None:
    """FAT data mounts: fusefat inside the device's mount namespace, now or `late_mount` seconds after boot."""
    if rootfs.data_fs(device, profile) != "fat":
        return
    delay = float(device.extra.get("late_mount") or 0)
    refs = [boot.start_fat(device, path, rootfs.fat_image(device, path), delay) for path, _size in profile.data_mounts]
    device.extra["fat"] = [{"pid": r.pid, "starttime": r.starttime} for r in refs]


def _stop_fat(device: Device) -> None:
    refs = [ProcRef(**ref) for ref in device.extra.pop("fat", [])]
    boot.stop_fat(refs)


def _boot(device: Device, profile: Profile) -> None:
    """Start init (which runs rcS: rc5.d S* scripts on rc5 profiles), the door daemons, then the boot uevent."""
    boot.start_init(device, profile)
    _start_fat(device, profile)
    device.save()
    boot.wait_booted(device, devices.BOOTED_MARKER)
    if profile.telnet:
        boot.wait_tcp(device.address, TELNET_PORT)
    if profile.adb:
        _start_adbd(device)
        device.save()
        boot.wait_tcp(device.address, ADB_PORT)
    if profile.boot == "udev":
        results = fire_udev(device, udev.loop_event("add"))
        failed = [r for r in results if r.returncode != 0]
        if failed:
            log = device.dir / "udev.log"
            print(f"fleetlab: {device.name}: boot RUN failed: {failed} (see {log})", file=sys.stderr)


def up(
    name: str,
    profile: str,
    *,
    password: str = "",
    login_prompt: bool = False,
    readonly_root: bool = False,
    tun_node: bool | None = None,
    hide_tun: bool = False,
    hostname: str | None = None,
    arch: str | None = None,
    onboard_fs: str | None = None,
    late_mount: float = 0,
    no_var_run: bool = False,
    motd: bool = False,
    no_base64: bool = False,
) -> Device:
    """Create and boot a device; returns its record (address, services). arch: the userland's Debian architecture
    when not the profile's (a kobo-shaped box with an amd64 userland: `arch="amd64"`).

    Field traits: onboard_fs "fat" or "tmpfs" for the data mounts (kobo default fat); late_mount: seconds after
    boot before a FAT data mount appears (every boot); no_var_run: no /var/run; motd: /etc/motd and a coloured
    prompt; no_base64: no base64 applet link."""
    require_root()
    check_name(name)
    if profile == "systemd":
        if arch is not None:
            raise LabError("--arch is for the busybox profiles; the systemd profile is the host's architecture")
        return _optional_module("systemd_device", "the systemd profile").up(name)
    prof = devices.get(profile, arch)
    if readonly_root and profile != "quecopen":
        raise LabError("--readonly-root is a quecopen option")
    if hide_tun and tun_node:
        raise LabError("--hide-tun hides tun from the kernel view: it cannot go with --tun-node")
    if login_prompt and not prof.adb:
        raise LabError("--login-prompt is for the adb door (quecopen); telnet always asks for a login")
    if onboard_fs is not None and onboard_fs not in devices.DATA_FILESYSTEMS:
        raise LabError(f"--onboard-fs must be one of {', '.join(devices.DATA_FILESYSTEMS)}")
    if not prof.data_mounts and (onboard_fs or late_mount):
        raise LabError(f"profile {profile} has no data mount: --onboard-fs/--late-mount do not apply")
    if late_mount and (onboard_fs or prof.data_fs) != "fat":
        raise LabError("--late-mount needs a FAT data mount (--onboard-fs fat)")
    if late_mount < 0:
        raise LabError("--late-mount takes seconds >= 0")
    traits: dict[str, object] = {
        k: v
        for k, v in {
            "data_fs": onboard_fs or "",
            "late_mount": late_mount,
            "no_var_run": no_var_run,
            "motd": motd,
            "no_base64": no_base64,
        }.items()
        if v
    }
    lower = rootfs.template(prof)
    with locked():
        if (DEVICES_DIR / name).exists():
            raise LabError(f"device {name} exists already (fleetlab down {name} first)")
        device = Device(
            name=name,
            profile=profile,
            index=free_index(),
            hostname=hostname or prof.hostname or name,
            arch=prof.arch,
            password=password,
            login_prompt=login_prompt,
            readonly_root=readonly_root,
            tun_node=False if hide_tun else (prof.tun_node if tun_node is None else tun_node),
            hide_tun=hide_tun,
            template=str(lower),
            services={"telnet": TELNET_PORT} if prof.telnet else {"adb": ADB_PORT},
            extra=dict(traits),
        )
        device.save()  # reserves name and address for concurrent `up`s
        netns.ensure_bridge()
    try:
        netns.create_device_net(device.netns, device.veth_host, device.address)
        rootfs.mount_device_root(device, prof, lower)
        device.save()
        _customise(device)
        _boot(device, prof)
        device.save()
    except BaseException:
        with contextlib.suppress(Exception):
            _teardown(device)
        raise
    return device


# ------------------------------------------------------------------------------------------------------------- down


def _kill_recorded(device: Device) -> None:
    refs: list[ProcRef] = []
    if "adbd" in device.extra:
        refs.append(ProcRef(**device.extra["adbd"]))
    procs = device.dir / PROCS_SUBDIR
    if procs.is_dir():
        for path in procs.glob("*.json"):
            with contextlib.suppress(ValueError, TypeError, OSError):
                refs.append(ProcRef(**json.loads(path.read_text())))
    for ref in refs:
        if ref.alive():
            os.kill(ref.pid, signal.SIGKILL)


def _teardown(device: Device) -> None:
    _stop_fat(device)
    _kill_recorded(device)
    if device.extra.get("lan"):  # a LAN behind the device (fleetlab/lan.py): its netns goes first
        importlib.import_module("fleetlab.lan").teardown(device)
    boot.stop_init(device)
    rootfs.unmount_device_root(device)
    netns.remove_device_net(device.netns, device.veth_host)
    shutil.rmtree(device.dir, ignore_errors=True)


def _is_systemd_device(name: str) -> bool:
    with contextlib.suppress(LabError):
        return Device.load(name).profile == "systemd"
    return False


def down(name: str) -> None:
    """Remove a device: its processes (by pid), mounts, netns, veth and files. Idempotent."""
    require_root()
    check_name(name)
    if _is_systemd_device(name):
        _optional_module("systemd_device", "the systemd profile").down(name)
    else:
        try:
            device = Device.load(name)
        except LabError:
            # Half-made or already gone: remove whatever carries its name.
            netns.remove_device_net(f"fleetlab-{name}", f"flv-{name}")
            _unmount_under(DEVICES_DIR / name)
            shutil.rmtree(DEVICES_DIR / name, ignore_errors=True)
        else:
            _teardown(device)
    release_bridge_if_idle()


def release_bridge_if_idle() -> bool:
    """Remove the bridge (and with it 198.18.0.1/15) once nothing the lab recorded uses it. Returns True if removed.

    "Uses it" is read from the lab's own records, never by probing the network: a device directory under
    /run/fleetlab/devices, or a recorded lab service (the mirror, the control plane) whose pid is alive.
    """
    if any(p.is_dir() for p in DEVICES_DIR.glob("*")) or _services_running():
        return False
    if not netns.link_exists(BRIDGE):
        return False
    netns.remove_bridge()
    return True


def _services_running() -> list[str]:
    """Names of the lab services whose recorded process is alive (pid + start time in /run/fleetlab/*.json)."""
    running = []
    for name in SERVICE_RECORDS:
        path = RUN_DIR / f"{name}.json"
        with contextlib.suppress(OSError, ValueError, TypeError):
            if ProcRef(**json.loads(path.read_text())).alive():
                running.append(name)
    return running


def _unmount_under(base: Path) -> None:
    prefix = f"{base}/"
    with open("/proc/self/mounts") as fh:
        points = [line.split()[1] for line in fh]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        rootfs.umount(point)


def down_all() -> None:
    """Every device, the mirror, leftovers carrying lab names, and the bridge. Idempotent."""
    require_root()
    for name in device_names() + sorted(p.name for p in DEVICES_DIR.glob("*") if p.is_dir()):
        if (DEVICES_DIR / name).exists():
            down(name)
    if importlib.util.find_spec("fleetlab.mirror") is not None:
        with contextlib.suppress(LabError):
            mirror("stop")
    if importlib.util.find_spec("fleetlab.control") is not None:
        # The control plane (fleetlab/control.py): its recorded pids, its netns fleetlab-ctl and veth flv-ctl.
        importlib.import_module("fleetlab.control").down()
    for ns in netns.lab_netns():
        netns.remove_device_net(ns, f"flv-{ns.removeprefix('fleetlab-')}")
    for link in netns.lab_links():
        if link.startswith("flv-"):
            subprocess.run(["ip", "link", "del", link], check=False, capture_output=True)
    _unmount_under(RUN_DIR)
    netns.remove_bridge()
    (RUN_DIR / "authkey").unlink(missing_ok=True)  # the inventory's headscale keys die with the control plane


# --------------------------------------------------------------------------------------------------- exec and events


def get(name: str) -> Device:
    check_name(name)
    return Device.load(name)


def list_devices() -> list[Device]:
    from fleetlab.state import devices as all_devices

    return all_devices()


def exec_(
    name: str, argv: list[str], *, input: str | None = None, timeout: float | None = 60
) -> subprocess.CompletedProcess[str]:
    """Run argv inside the device (as root, in its namespaces and root); output captured."""
    require_root()
    device = get(name)
    if device.profile == "systemd":
        return _optional_module("systemd_device", "the systemd profile").exec_(name, argv, input=input, timeout=timeout)
    return boot.exec_in(device, argv, input=input, timeout=timeout)


def fire_udev(device: Device, event: udev.Event) -> list[udev.RunResult]:
    """Deliver one uevent: parse the device's rules (errors raise UdevRuleError), run matching RUN programs."""
    rules = udev.load_rules(device.root / "etc/udev/rules.d")
    results = []
    for command in udev.programs_for(rules, event):
        results.append(udev.run_program(boot.nsenter_cmd(device), command, event, device.dir / "udev.log"))
    return results


def wifi(name: str, state: str) -> list[udev.RunResult]:
    """`up` fires the wlan0 add uevent, `down` the remove uevent (the Kobo's Wi-Fi hooks)."""
    require_root()
    device = get(name)
    if state not in ("up", "down"):
        raise LabError("wifi state must be up or down")
    if devices.get(device.profile).boot != "udev":
        raise LabError(f"{name} ({device.profile}) has no udev Wi-Fi hooks; only kobo does")
    return fire_udev(device, udev.wlan_event("add" if state == "up" else "remove"))


def reboot(name: str) -> Device:
    """Kill every process of the device, clear its volatile dirs, boot it again. /, /mnt/onboard, /usrdata stay."""
    require_root()
    device = get(name)
    if device.profile == "systemd":
        return _optional_module("systemd_device", "the systemd profile").reboot(name)
    prof = devices.get(device.profile, device.arch or None)
    _stop_fat(device)  # fusefat writes back and unmounts first: the FAT image keeps what was written
    _kill_recorded(device)
    device.extra.pop("adbd", None)
    boot.stop_init(device)
    # /tmp and /run are tmpfs of the dead mount namespace: gone already. Their underlying directories in the
    # overlay are cleared too, in case something wrote there while they were not mounted.
    for path in prof.volatile:
        target = device.root / path.lstrip("/")
        if target.is_dir() and not target.is_symlink():
            for child in target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
    device.save()
    _boot(device, prof)
    device.save()
    if device.extra.get("lan"):  # the LAN stays up across the power cycle; its host's server is started again
        importlib.import_module("fleetlab.lan").after_reboot(device)
    return device


SHAPER_BASE_PORT = 20000


def shaper_port(device: Device) -> int:
    """Host port of the device's shaped door: 20000 + the device's address index (unique per device)."""
    return SHAPER_BASE_PORT + device.index


def shape(name: str, *, latency_ms: int = 0, rate_kbit: int = 0, cut_after_bytes: int = 0) -> str:
    """Put the link shaper (fleetlab/shaper.py) in front of the device's door; returns the shaped ADDR:PORT.

    The shaper listens on the bridge address (198.18.0.1:20000+N) and forwards to the device's telnet/adb port;
    `fleetlab inventory` then points the connection at it. Replaces a shaper already there.
    """
    require_root()
    device = get(name)
    _optional_module("shaper", "the link shaper")
    unshape(name)
    door = device.services.get("telnet") or device.services.get("adb") or device.services.get("ssh")
    listen = f"{GATEWAY}:{shaper_port(device)}"
    cmd = [sys.executable, "-m", "fleetlab.shaper", "--listen", listen, "--to", f"{device.address}:{door}"]
    cmd += ["--latency-ms", str(latency_ms), "--rate-kbit", str(rate_kbit), "--cut-after-bytes", str(cut_after_bytes)]
    cmd += ["--stats-file", str(device.dir / "shaper-stats.json")]
    with open(device.dir / "shaper.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    ref = ProcRef.of(proc.pid)
    procs = device.dir / PROCS_SUBDIR
    procs.mkdir(exist_ok=True)
    (procs / "shaper.json").write_text(json.dumps({"pid": ref.pid, "starttime": ref.starttime}) + "\n")
    device.extra["shaper"] = {
        "listen": listen,
        "latency_ms": latency_ms,
        "rate_kbit": rate_kbit,
        "cut_after_bytes": cut_after_bytes,
    }
    device.save()
    try:
        boot.wait_tcp(str(GATEWAY), shaper_port(device), timeout=10)
    except LabError:
        unshape(name)
        raise LabError(f"the shaper did not start: see {device.dir / 'shaper.log'}") from None
    return listen


def unshape(name: str) -> None:
    """Remove the device's shaper (by recorded pid). Idempotent."""
    require_root()
    device = get(name)
    path = device.dir / PROCS_SUBDIR / "shaper.json"
    if path.exists():
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
    if device.extra.pop("shaper", None) is not None:
        device.save()


def mirror(action: str) -> None:
    """Start or stop the release mirror on 198.18.0.1:8080 (fleetlab/mirror.py: the real releases it builds)."""
    require_root()
    module = _optional_module("mirror", "the release mirror")
    if action == "start":
        netns.ensure_bridge()
    func = getattr(module, action, None)
    if func is None:
        raise LabError(f"fleetlab.mirror has no {action}() function")
    func()
    if action == "stop":
        release_bridge_if_idle()


def mirror_status() -> str | None:
    """The mirror's URL if the process the lab recorded for it is alive, else None (records only, no probe)."""
    module = _optional_module("mirror", "the release mirror")
    return module.status()


def wait_gone(pids: list[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.02)
