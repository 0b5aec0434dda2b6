"""`fleetlab inventory`: a YAML Ansible inventory of the running lab devices, ready for playbooks/site.yml.

One group per profile (the collection picks the device profile from the group name), the connection variables of
each device's door, and in all.vars the roles' own variables: the lab mirror as release source (binary role, real
Tailscale builds), the lab's iptables bundles (iptables_shim role), the lab's headscale as login server with a
reusable pre-auth key per profile it minted, tagged tag:fleetmesh-<profile> (login role), and
tailscaled flags and environment that keep a node from calling anything outside the lab (boot role).
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from fleetlab import control
from fleetlab.bundles import BUNDLES_DIR
from fleetlab.devices import PROFILES
from fleetlab.state import GATEWAY, MIRROR_PORT, RUN_DIR, Device, LabError

# Variable names the collection's roles read (roles/*/defaults/main.yml); a rename in the roles changes them here.
RELEASE_BASE_URL_VAR = "binary_base_url"
AUTH_KEY_VAR = "login_auth_key"
LOGIN_SERVER_VAR = "login_login_server"
BUNDLES_VAR = "iptables_shim_bundles"
TAILSCALED_ARGS_VAR = "boot_tailscaled_extra_args"
TAILSCALED_ENV_VAR = "boot_environment"
NETWORKING_MODE_VAR = "networking_mode"
# Nothing leaves the lab: no log upload (the flag also stops tailscaled's other "support" calls home), no
# UPnP/NAT-PMP/PCP probes of the gateway or SSDP multicast (portmapper off).
LAB_TAILSCALED_ARGS = ["--no-logs-no-support"]
LAB_TAILSCALED_ENV = {"TS_NO_LOGS_NO_SUPPORT": "1", "TS_DISABLE_PORTMAPPER": "1"}
# Tailscale release arch -> the lab's bundle dir (Debian arch names).
BUNDLE_ARCHES = {"arm": "armhf", "amd64": "amd64"}
# Lab devices whose rootfs has no iptables (busybox + glibc only). tailscaled in kernel mode needs it, so the
# inventory says what an owner of such a device would: install the shim from the lab's bundles.
NO_IPTABLES = ("kobo", "quecopen", "sysvinit")
AUTH_KEY_FILE = RUN_DIR / "authkey"


def _control_instance() -> str:
    """Which control-plane lifetime this is: its headscale's recorded pid and start time (a restart mints anew)."""
    record = RUN_DIR / f"{control.RECORD_NAMES[0]}.json"
    return record.read_text().strip().replace(" ", "") if record.exists() else ""


def lab_auth_key(profile: str) -> str:
    """A reusable pre-auth key of the lab's headscale tagged tag:fleetmesh-<profile>, minted once per profile and
    control-plane lifetime (kept root-only in /run/fleetlab/authkey, one "url#instance profile key" line each;
    `fleetlab control down` makes them worthless). headscale gives a node registered with a pre-auth key the key's
    tags and refuses --advertise-tags with it ("requested tags [...] are invalid or not permitted"), so the tags
    come from the key, as they would for an owner of a headscale fleet."""
    url = control.status()
    if url is None:
        raise LabError("the lab's control server is not running: 'fleetlab control up' first")
    instance = f"{url}#{_control_instance()}"
    keys: dict[str, str] = {}
    if AUTH_KEY_FILE.exists():
        for line in AUTH_KEY_FILE.read_text().splitlines():
            parts = line.split(" ")
            if len(parts) == 3 and parts[0] == instance:
                keys[parts[1]] = parts[2]
    if profile in keys:
        return keys[profile]
    keys[profile] = control.mint_key(reusable=True, expiration="24h", tags=[f"tag:fleetmesh-{profile}"])
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    tmp = AUTH_KEY_FILE.with_name(f".authkey.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.writelines(f"{instance} {name} {key}\n" for name, key in sorted(keys.items()))
    tmp.replace(AUTH_KEY_FILE)
    return keys[profile]


def _door(device: Device, service: str, default: int) -> tuple[str, int]:
    """Where the controller connects: the device itself, or the link shaper in front of it (`fleetlab shape`)."""
    shaper = device.extra.get("shaper")
    if shaper:
        host, _sep, port = shaper["listen"].rpartition(":")
        return host, int(port)
    return device.address, device.services.get(service, default)


def host_vars(device: Device) -> dict[str, Any]:
    if device.profile in ("kobo", "sysvinit"):
        host, port = _door(device, "telnet", 23)
        return {
            "ansible_connection": "fleetmesh.tailscale.telnet",
            "ansible_host": host,
            "ansible_port": port,
            "ansible_user": "root",
            "ansible_password": device.password,
        }
    if device.profile == "quecopen":
        host, port = _door(device, "adb", 5555)
        serial = f"{host}:{port}"
        hv: dict[str, Any] = {
            "ansible_connection": "fleetmesh.tailscale.adb",
            "fleetmesh_adb_serial": serial,
            "ansible_host": serial,
            "ansible_user": "root",
        }
        if device.login_prompt:
            hv["ansible_password"] = device.password
        return hv
    # systemd: the systemd-device helper records its ssh details in device.extra.
    hv = {"ansible_connection": "ssh", "ansible_host": device.address, "ansible_user": "root"}
    ssh_keys = ("ansible_ssh_private_key_file", "ansible_port", "ansible_ssh_common_args", "ansible_python_interpreter")
    for key in ssh_keys:
        if key in device.extra:
            hv[key] = device.extra[key]
    return hv


def select(devices: list[Device], names: list[str]) -> list[Device]:
    """The named devices (all of them when no name is given), so a run never reaches another user's devices."""
    if not names:
        return devices
    by_name = {device.name: device for device in devices}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise LabError(f"no running lab device named {', '.join(missing)}")
    return [by_name[name] for name in names]


def build(devices: list[Device]) -> dict[str, Any]:
    children: dict[str, Any] = {}
    for device in sorted(devices, key=lambda d: (d.profile, d.name)):
        group = children.setdefault(device.profile, {"hosts": {}})
        hv = host_vars(device)
        if device.profile in NO_IPTABLES:
            hv["device_profile_overrides"] = {"iptables_shim": True}
        if (device.arch or getattr(PROFILES.get(device.profile), "arch", "")) == "armhf":
            # ARM devices run under qemu-user 7.2, whose syscall translation lacks what kernel mode's router needs
            # (measured, docs/lab.md "ARM devices under qemu-user"): socket(NETLINK_NETFILTER) EPROTONOSUPPORT (no
            # nftables), getsockopt IPT_SO_GET_INFO ENOPROTOOPT (the shim's iptables: "can't initialize iptables
            # table"), RTM_GETRULE EOPNOTSUPP (no policy routing, no IPv6 tunnel), SO_MARK ENOPROTOOPT. Tailnet
            # traffic would flow, but with a router health error and no firewall, which a real Kobo or QuecOpen
            # kernel does not have: userspace mode gives a node that behaves as on the device. Kernel mode,
            # netfilter and the shim are proven on amd64 boxes (`fleetlab up --profile kobo --arch amd64`).
            hv[NETWORKING_MODE_VAR] = "userspace"
        group["hosts"][device.name] = hv
        group.setdefault("vars", {AUTH_KEY_VAR: lab_auth_key(device.profile)})
    return {
        "all": {
            "vars": {
                RELEASE_BASE_URL_VAR: f"http://{GATEWAY}:{MIRROR_PORT}",
                BUNDLES_VAR: {ts_arch: str(BUNDLES_DIR / deb_arch) for ts_arch, deb_arch in BUNDLE_ARCHES.items()},
                LOGIN_SERVER_VAR: control.url(),
                TAILSCALED_ARGS_VAR: list(LAB_TAILSCALED_ARGS),
                TAILSCALED_ENV_VAR: dict(LAB_TAILSCALED_ENV),
            },
            "children": children,
        }
    }


def render(devices: list[Device]) -> str:
    header = "# fleetlab inventory: simulated lab devices, the lab's mirror of real Tailscale builds, its headscale.\n"
    return header + yaml.safe_dump(build(devices), sort_keys=False, default_flow_style=False)
