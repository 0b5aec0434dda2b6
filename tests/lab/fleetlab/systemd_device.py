"""The `systemd` profile: a Debian bookworm rootfs (debootstrap, cached) booted by systemd-nspawn, reached over ssh.

It is the lab's "ordinary Linux" target: real systemd as pid 1 of the container, real sshd, python3, iptables.

Layout
- /var/cache/fleetlab/systemd-rootfs/      the debootstrap tree, made once by prepare() and never written after
- /var/cache/fleetlab/ssh/id_ed25519       the lab's client key (root login by this key only)
- /run/fleetlab/devices/<name>/            device.json, upper/ + work/ (the device's writes: they survive
                                           reboot), root/ (overlay of upper over the cached tree), console.log,
                                           known_hosts (the device's own ed25519 host key, generated at first up)

How nspawn runs on this machine (PID 1 is not systemd; cgroup v1 + v2 hybrid: name=systemd v1 hierarchy at
/sys/fs/cgroup/systemd, cgroup2 at /sys/fs/cgroup/unified):
- `--register=no --keep-unit` is what makes nspawn work without a host systemd: without --keep-unit nspawn asks the
  host's systemd over D-Bus for a scope unit ("Failed to open system bus"); with it nspawn stays in the cgroup it was
  started in and creates `payload/` and `supervisor/` below it. So the lab starts nspawn in a cgroup of its own
  (`fleetlab/<name>` in each hierarchy nspawn uses); otherwise all devices would share /payload at the root.
- SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 gives the container a pure cgroup2 /sys/fs/cgroup (host's /unified, which has
  no controllers here: they are all bound to v1), as on a real bookworm machine. Unset, nspawn copies the hybrid
  layout into the container; systemd 252 reaches `running` both ways on this host.
- `--network-namespace-path` joins the lab's netns; there nspawn drops CAP_NET_ADMIN by default, which the
  device needs (iptables, a tun device for tailscaled), so it is granted back: it only reaches the device's own netns.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from fleetlab import netns
from fleetlab.state import CACHE_DIR, DEVICES_DIR, Device, LabError, ProcRef, check_name, free_index, locked

PROFILE = "systemd"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ["systemd", "systemd-sysv", "dbus", "python3", "openssh-server", "iproute2", "iptables", "procps"]
ROOTFS = CACHE_DIR / "systemd-rootfs"
SSH_DIR = CACHE_DIR / "ssh"
KEY = SSH_DIR / "id_ed25519"
SSH_PORT = 22
CGROUP_BASE = Path("/sys/fs/cgroup")
# Units that would only try to reach the Internet (the lab never sends traffic outside 198.18.0.0/15).
MASKED_UNITS = ["apt-daily.timer", "apt-daily-upgrade.timer", "apt-daily.service", "apt-daily-upgrade.service"]
SSHD_CONFIG = """\
# fleetlab: root by key only; one host key per device (generated at first boot of the device by the lab).
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""
DEVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_TIMEOUT = 60.0
HALT_TIMEOUT = 15.0
READY_MARK = ".fleetlab-ready"


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


# ---------------------------------------------------------------------------------------------------------- prepare


def _configure_template(root: Path) -> None:
    """Make the fresh debootstrap tree a lab device template (host-neutral, no secrets, no Internet chatter)."""
    # debootstrap copies the host's hostname and resolver: each device writes its own hostname, and there is no DNS.
    (root / "etc/hostname").unlink(missing_ok=True)
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_text("# fleetlab: no DNS (the lab only reaches 198.18.0.0/15)\n")
    # The host keys openssh-server's postinst made would be shared by every device: each device makes its own.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/ssh/sshd_config.d/fleetlab.conf").write_text(SSHD_CONFIG)
    for unit in MASKED_UNITS:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    _run(["chroot", str(root), "apt-get", "clean"])
    (root / READY_MARK).write_text(f"debootstrap --variant=minbase {SUITE} with {','.join(PACKAGES)}\n")


def ensure_key() -> Path:
    """The lab's ssh client key pair (ed25519, no passphrase: it only opens lab devices)."""
    if not KEY.exists():
        SSH_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        print(f"systemd profile: generating the lab ssh key {KEY}")
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleetlab", "-f", str(KEY)])
    return KEY


def prepare() -> Path:
    """Debootstrap the template once (minutes; prints what it does), skip when cached. Idempotent."""
    ensure_key()
    if (ROOTFS / READY_MARK).exists():
        print(f"systemd profile: rootfs cached at {ROOTFS}")
        return ROOTFS
    for tool in ("debootstrap", "systemd-nspawn"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} is missing: apt-get install -y debootstrap systemd-container")
    work = ROOTFS.with_name(f"{ROOTFS.name}.work")
    shutil.rmtree(work, ignore_errors=True)
    work.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(work), MIRROR]
    print(f"systemd profile: {' '.join(cmd)} (takes a minute or more)", flush=True)
    start = time.monotonic()
    _run(cmd)
    _configure_template(work)
    shutil.rmtree(ROOTFS, ignore_errors=True)
    work.rename(ROOTFS)
    print(f"systemd profile: rootfs ready at {ROOTFS} in {time.monotonic() - start:.0f} s")
    return ROOTFS


# ---------------------------------------------------------------------------------------------------------- cgroups


def _cgroup_dirs(name: str) -> list[Path]:
    """One cgroup per device in each hierarchy nspawn uses: name=systemd (v1) and/or cgroup2."""
    if (CGROUP_BASE / "cgroup.controllers").exists():  # pure cgroup2 host
        return [CGROUP_BASE / "fleetlab" / name]
    return [CGROUP_BASE / h / "fleetlab" / name for h in ("systemd", "unified") if (CGROUP_BASE / h).is_dir()]


def _cgroup_pids(name: str) -> set[int]:
    pids: set[int] = set()
    for top in _cgroup_dirs(name):
        if top.is_dir():
            for procs in top.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(line) for line in procs.read_text().split())
    return pids


def _remove_cgroups(name: str) -> None:
    for top in _cgroup_dirs(name):
        if not top.is_dir():
            continue
        # cgroup directories go bottom-up; a cgroup with processes left refuses (EBUSY), which the caller reports.
        for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            path.rmdir()
        top.rmdir()
        with contextlib.suppress(OSError):
            top.parent.rmdir()  # the lab's `fleetlab` cgroup, once no device is left in it


# ------------------------------------------------------------------------------------------------------- processes


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _leader(nspawn: ProcRef, timeout: float = 20.0) -> ProcRef:
    """The container's pid 1 (systemd): the child of nspawn whose /proc/PID/ns/pid differs from nspawn's."""
    own_ns = os.readlink(f"/proc/{nspawn.pid}/ns/pid")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not nspawn.alive():
            break
        for kid in _children(nspawn.pid):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{kid}/ns/pid") != own_ns:
                    return ProcRef.of(kid)
        time.sleep(0.02)
    raise LabError("systemd-nspawn did not start the container's init")


def _wait_gone(refs: list[ProcRef], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        for ref in refs:
            # nspawn may be our own child (up and down in one Python process): reap it so it is not a zombie.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(ref.pid, os.WNOHANG)
        if not any(ref.alive() for ref in refs):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------------------ start/stop


def _mount_root(device_dir: Path) -> Path:
    upper, work, root = device_dir / "upper", device_dir / "work", device_dir / "root"
    for path in (upper, work, root):
        path.mkdir(parents=True, exist_ok=True)
    if not _is_mounted(root):
        options = f"lowerdir={ROOTFS},upperdir={upper},workdir={work}"
        _run(["mount", "-t", "overlay", "-o", options, f"fleetlab-{device_dir.name}", str(root)])
    return root


def _is_mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as fh:
        return any(line.split()[1] == str(path) for line in fh)


def _host_mounts_under(base: Path) -> list[str]:
    prefix = f"{base}/"
    with open("/proc/self/mounts") as fh:
        return [p for p in (line.split()[1] for line in fh) if p.startswith(prefix) or p == str(base)]


def _customise(root: Path, name: str, address: str, device_dir: Path) -> None:
    """Per-device files in the overlay: hostname, hosts, the lab key, a host key of its own (first start only)."""
    (root / "etc/hostname").write_text(f"{name}\n")
    (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n{address} {name}\n")
    ssh = root / "root/.ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    (ssh / "authorized_keys").write_text(Path(f"{ensure_key()}.pub").read_text())
    (ssh / "authorized_keys").chmod(0o600)
    host_key = root / "etc/ssh/ssh_host_ed25519_key"
    if not host_key.exists():
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{name}", "-f", str(host_key)])
    public = Path(f"{host_key}.pub").read_text().split()
    (device_dir / "known_hosts").write_text(f"{address} {public[0]} {public[1]}\n")


def _nspawn_cmd(name: str, root: Path, netns_name: str) -> list[str]:
    cmd = [
        "systemd-nspawn",
        "--boot",
        f"--directory={root}",
        f"--machine={name}",
        f"--hostname={name}",
        "--register=no",  # no machined on this host
        "--keep-unit",  # no host systemd to ask for a scope: stay in the cgroup the lab made (see module doc)
        f"--network-namespace-path=/run/netns/{netns_name}",
        "--capability=CAP_NET_ADMIN",
        "--resolv-conf=off",  # never the host's resolver: the template has an empty one
        "--timezone=off",
        "--link-journal=no",
        "--console=read-only",  # boot messages go to console.log; nobody types on the console
    ]
    if Path("/dev/net/tun").exists():
        cmd.append("--bind=/dev/net/tun")
    return cmd


# Joins the device's cgroups (paths in $@ up to "--") and then becomes systemd-nspawn (same pid: the recorded one).
CGROUP_EXEC = (
    'while [ "$1" != -- ]; do mkdir -p "$1" && echo $$ > "$1/cgroup.procs" || exit 1; shift; done; shift; exec "$@"'
)


def _spawn(name: str, root: Path, netns_name: str, device_dir: Path) -> tuple[ProcRef, ProcRef]:
    log = open(device_dir / "console.log", "ab")  # noqa: SIM115 - handed to the child, closed right after
    try:
        cgroups = [str(p) for p in _cgroup_dirs(name)]
        proc = subprocess.Popen(  # noqa: S603 - fixed argv
            ["/bin/sh", "-c", CGROUP_EXEC, "sh", *cgroups, "--", *_nspawn_cmd(name, root, netns_name)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the caller does not reach the device
            # A real bookworm machine runs on the unified cgroup2 hierarchy; without this, nspawn copies the host's
            # v1/v2 hybrid into the container. Both boot here; cgroup2 is the faithful one.
            env={**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"},
        )
    finally:
        log.close()
    nspawn = ProcRef.of(proc.pid)
    try:
        return nspawn, _leader(nspawn)
    except LabError:
        _kill_and_wait([nspawn], [])
        tail = (device_dir / "console.log").read_text(errors="replace")[-1500:]
        raise LabError(f"device {name}: systemd-nspawn failed:\n{tail}") from None


def _nsenter(leader: ProcRef) -> list[str]:
    # All of the container's namespaces (mount, pid, uts, ipc, net, cgroup) and its root and working directory.
    return ["nsenter", "-t", str(leader.pid), "-a", "-r", "-w", "--"]


def _env() -> dict[str, str]:
    return {"PATH": DEVICE_PATH, "HOME": "/root", "USER": "root", "LOGNAME": "root", "LANG": "C.UTF-8", "TERM": "dumb"}


def _wait_booted(name: str, nspawn: ProcRef, leader: ProcRef, address: str, device_dir: Path) -> str:
    """Wait for systemd to finish booting (running/degraded) and sshd to accept; returns the system state."""
    deadline = time.monotonic() + BOOT_TIMEOUT
    state = ""
    while time.monotonic() < deadline:
        if not nspawn.alive():
            tail = (device_dir / "console.log").read_text(errors="replace")[-1500:]
            raise LabError(f"device {name}: the container exited during boot:\n{tail}")
        proc = subprocess.run(
            [*_nsenter(leader), "systemctl", "is-system-running", "--wait"],
            check=False,
            capture_output=True,
            text=True,
            env=_env(),
            timeout=max(1.0, deadline - time.monotonic()),
        )
        state = proc.stdout.strip()
        if state in ("running", "degraded"):
            break
        time.sleep(0.1)  # systemd not yet answering on its private socket
    else:
        raise LabError(f"device {name}: boot not finished after {BOOT_TIMEOUT:.0f} s (state {state!r})")
    _wait_tcp(address, SSH_PORT, max(1.0, deadline - time.monotonic()))
    return state


def _wait_tcp(address: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError as err:
            if time.monotonic() > deadline:
                raise LabError(f"{address}:{port} not reachable after {timeout:.0f} s: {err}") from None
            time.sleep(0.05)


def start(name: str, netns_name: str, address: str, device_dir: Path | None = None) -> dict[str, Any]:
    """Boot the device in an existing netns; returns pids, ssh details, rootfs dir, boot state and boot seconds."""
    check_name(name)
    if not (ROOTFS / READY_MARK).exists():
        raise LabError(f"no systemd rootfs at {ROOTFS}: run `fleetlab prepare` first")
    if not netns.netns_exists(netns_name):
        raise LabError(f"network namespace {netns_name} does not exist")
    device_dir = device_dir or DEVICES_DIR / name
    began = time.monotonic()
    root = _mount_root(device_dir)
    try:
        _customise(root, name, address, device_dir)
        nspawn, leader = _spawn(name, root, netns_name, device_dir)
    except BaseException:
        _unmount(device_dir)
        raise
    info: dict[str, Any] = {
        "nspawn": {"pid": nspawn.pid, "starttime": nspawn.starttime},
        "leader": {"pid": leader.pid, "starttime": leader.starttime},
        "rootfs": str(root),
        "upper": str(device_dir / "upper"),
        "ssh_port": SSH_PORT,
        "ssh_key": str(KEY),
        "known_hosts": str(device_dir / "known_hosts"),
    }
    try:
        info["system_state"] = _wait_booted(name, nspawn, leader, address, device_dir)
    except BaseException:
        stop_container(name, info, device_dir)
        raise
    info["boot_seconds"] = round(time.monotonic() - began, 2)
    return info


def _kill_and_wait(first: list[ProcRef], leaders: list[ProcRef]) -> None:
    """SIGTERM nspawn (it halts the container cleanly); if it hangs, SIGKILL the container init, then nspawn."""
    refs = first + leaders
    for ref in first:
        if ref.alive():
            os.kill(ref.pid, signal.SIGTERM)
    if _wait_gone(refs, HALT_TIMEOUT):
        return
    # Killing the init of a pid namespace kills every process in it.
    for ref in [*leaders, *first]:
        if ref.alive():
            os.kill(ref.pid, signal.SIGKILL)
    if not _wait_gone(refs, 5.0):
        raise LabError(f"processes {[r.pid for r in refs if r.alive()]} still alive after SIGKILL")


def _unmount(device_dir: Path) -> None:
    for point in sorted(_host_mounts_under(device_dir), key=len, reverse=True):
        proc = subprocess.run(["umount", point], check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            _run(["umount", "-l", point])


def stop_container(name: str, info: dict[str, Any], device_dir: Path | None = None) -> None:
    """Stop exactly the recorded nspawn (and its container), remove its cgroups and the root mount. Keeps upper/."""
    device_dir = device_dir or DEVICES_DIR / name
    refs = [ProcRef(**info[key]) for key in ("nspawn", "leader") if info.get(key)]
    _kill_and_wait(refs[:1], refs[1:])
    # Anything left in the device's own cgroups belongs to the device (e.g. a daemon that escaped a dying init).
    for pid in _cgroup_pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _cgroup_pids(name) and time.monotonic() < deadline:
        time.sleep(0.05)
    _remove_cgroups(name)
    _unmount(device_dir)
    # nspawn leaves per-machine directories of its own under /run/systemd/nspawn/.
    for leftover in ("propagate", "unix-export"):
        with contextlib.suppress(OSError):
            shutil.rmtree(Path("/run/systemd/nspawn") / leftover / name)


def stop(name: str, info: dict[str, Any], device_dir: Path | None = None) -> None:
    """stop_container, then delete the device's files (its upper dir too)."""
    device_dir = device_dir or DEVICES_DIR / name
    stop_container(name, info, device_dir)
    shutil.rmtree(device_dir / "upper", ignore_errors=True)
    shutil.rmtree(device_dir / "work", ignore_errors=True)
    with contextlib.suppress(OSError):
        (device_dir / "root").rmdir()


# ---------------------------------------------------------------------------------------- the lab's device contract


def _record(device: Device, info: dict[str, Any]) -> None:
    device.launcher = ProcRef(**info["nspawn"])
    device.init = ProcRef(**info["leader"])
    device.extra.update(
        {
            "systemd": info,
            "ansible_ssh_private_key_file": info["ssh_key"],
            "ansible_port": info["ssh_port"],
            "ansible_ssh_common_args": (
                f"-o UserKnownHostsFile={info['known_hosts']} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
            ),
            "ansible_python_interpreter": "/usr/bin/python3",
        }
    )


def up(name: str) -> Device:
    """Create the device's netns and veth (netns.py), boot the container, record it in device.json."""
    check_name(name)
    prepare_quiet()
    with locked():
        if (DEVICES_DIR / name).exists():
            raise LabError(f"device {name} exists already (fleetlab down {name} first)")
        device = Device(name=name, profile=PROFILE, index=free_index(), hostname=name, services={"ssh": SSH_PORT})
        device.save()  # reserves name and address for concurrent `up`s
        netns.ensure_bridge()
    try:
        netns.create_device_net(device.netns, device.veth_host, device.address)
        _record(device, start(name, device.netns, device.address, device.dir))
        device.save()
    except BaseException:
        with contextlib.suppress(Exception):
            down(name)
        raise
    return device


def prepare_quiet() -> None:
    if not (ROOTFS / READY_MARK).exists():
        raise LabError(f"no systemd rootfs at {ROOTFS}: run `fleetlab prepare` first (debootstrap, a few minutes)")


def down(name: str) -> None:
    """Stop the container (by recorded pid), remove mounts, cgroups, netns, veth and files. Idempotent."""
    check_name(name)
    device_dir = DEVICES_DIR / name
    info: dict[str, Any] = {}
    with contextlib.suppress(LabError):
        info = Device.load(name).extra.get("systemd", {})
    stop(name, info, device_dir)
    netns.remove_device_net(f"fleetlab-{name}", f"flv-{name}")
    shutil.rmtree(device_dir, ignore_errors=True)


def reboot(name: str) -> Device:
    """Halt the container and boot it again on the same upper dir: files written in the device survive."""
    device = Device.load(name)
    stop_container(name, device.extra.get("systemd", {}), device.dir)
    _record(device, start(name, device.netns, device.address, device.dir))
    device.save()
    return device


def exec_(
    name: str, argv: list[str], *, input: str | None = None, timeout: float | None = 60
) -> subprocess.CompletedProcess[str]:
    """Run argv as root inside the container (nsenter into its namespaces; no ssh needed)."""
    device = Device.load(name)
    if device.init is None or not device.init.alive():
        raise LabError(f"device {name} is not running (fleetlab reboot {name}?)")
    return subprocess.run(
        [*_nsenter(device.init), *argv],
        input=input,
        check=False,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
    )


def ssh_cmd(device: Device) -> list[str]:
    """An ssh command line (without the remote command) that logs in as root with the lab key."""
    info = device.extra["systemd"]
    return [
        "ssh",
        "-i",
        info["ssh_key"],
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        f"UserKnownHostsFile={info['known_hosts']}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-p",
        str(info["ssh_port"]),
        f"root@{device.address}",
    ]
