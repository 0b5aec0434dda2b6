"""Boot integration of init systems no lab device runs (NetBSD rc.d, OpenWrt procd): rendered by the boot role
itself (staged into a temp dir through the rootfs path), then checked statically: `sh -n` under dash and busybox
ash, the init system's conventions, idempotence (second run changed=0) and removal.

Nothing here runs on a real NetBSD host or under procd: docs/boot.md says so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from repo_checkout import run_playbook

pytestmark = pytest.mark.slow

PLAY = """\
- name: Boot integration only
  hosts: all
  gather_facts: false
  roles:
    - role: fleetmesh.tailscale.device
    - role: fleetmesh.tailscale.boot
"""

SHELLS = [s for s in ("dash", "busybox") if shutil.which(s)]


def stage(tmp_path: Path, group: str, *extra: str) -> tuple[Path, str]:
    image = tmp_path / "image"
    inventory = tmp_path / "inventory.yml"
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "fleetmesh_rootfs_dir": str(image),
        "routing_routes": ["192.168.225.0/24", "fd00:225::/64"],
        "routing_forwarding": True,
    }
    inventory.write_text(json.dumps({"all": {"children": {group: {"hosts": {"box": host}}}}}))
    play = tmp_path / "play.yml"
    play.write_text(PLAY)
    proc = run_playbook(["-i", str(inventory), str(play), *extra], tmp_path / "home")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return image, proc.stdout


def syntax_ok(path: Path) -> None:
    assert SHELLS, "neither dash nor busybox is installed"
    for shell in SHELLS:
        argv = [shell, "sh", "-n", str(path)] if shell == "busybox" else [shell, "-n", str(path)]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{shell}: {proc.stderr}"


def test_netbsd_rcd_rendered_and_checked(tmp_path: Path) -> None:
    image, out = stage(tmp_path, "netbsd")
    rcd = image / "etc/rc.d/tailscaled"
    boot = image / "usr/pkg/libexec/tailscale/boot"
    for script in (rcd, boot / "tailscaled.run", boot / "tailscaled.defaults", image / "etc/rc.conf.d/tailscaled"):
        syntax_ok(script)
    text = rcd.read_text()
    # rc.subr conventions: rcorder header, rcvar, load_rc_config before run_rc_command, the pid file for stop/status.
    for needle in ("# PROVIDE: tailscaled", "# REQUIRE: NETWORKING", "# KEYWORD: shutdown", ". /etc/rc.subr"):
        assert needle in text
    assert text.index("load_rc_config $name") < text.index('run_rc_command "$1"')
    assert 'name="tailscaled"' in text and "rcvar=$name" in text and "pidfile=" in text
    assert (image / "etc/rc.conf.d/tailscaled").read_text().splitlines()[-1] == "tailscaled=YES"
    assert rcd.stat().st_mode & 0o777 == 0o755
    defaults = (boot / "tailscaled.defaults").read_text()
    # NetBSD has no default state path: it is explicit; forwarding for both families under NetBSD's names.
    assert "--state=/var/db/tailscale/tailscaled.state" in defaults
    assert "sysctl -w net.inet.ip.forwarding=1" in defaults and "sysctl -w net.inet6.ip6.forwarding=1" in defaults

    _image, again = stage(tmp_path, "netbsd")
    assert "changed=0" in again
    stage(tmp_path, "netbsd", "-e", "fleetmesh_state=absent")
    assert not any(image.rglob("*")), sorted(image.rglob("*"))


def test_openwrt_procd_rendered_and_checked(tmp_path: Path) -> None:
    image, _out = stage(tmp_path, "openwrt")
    boot = image / "usr/lib/tailscale/boot"
    init = boot / "tailscaled.init"
    for script in (init, boot / "tailscaled.run", boot / "tailscaled.defaults"):
        syntax_ok(script)
    text = init.read_text()
    assert text.startswith("#!/bin/sh /etc/rc.common\n")
    for needle in ("USE_PROCD=1", "START=99", "STOP=1", "procd_open_instance", "procd_set_param respawn"):
        assert needle in text
    assert f"procd_set_param command {'/usr/lib/tailscale/boot/tailscaled.run'}" in text
    # Like OpenWrt's own package: --cleanup before the start, explicit --state.
    run = (boot / "tailscaled.run").read_text()
    assert run.index("--cleanup") < run.index('exec "$TAILSCALED"')
    assert "--state=/etc/tailscale/tailscaled.state" in (boot / "tailscaled.defaults").read_text()
    # The links `/etc/init.d/tailscaled enable` would make, and the sysupgrade keep list.
    assert (image / "etc/rc.d/S99tailscaled").readlink() == Path("../init.d/tailscaled")
    assert (image / "etc/rc.d/K01tailscaled").readlink() == Path("../init.d/tailscaled")
    keep = (image / "lib/upgrade/keep.d/fleetmesh-tailscale").read_text().splitlines()
    assert "/etc/tailscale/" in keep and "/usr/lib/tailscale/boot/" in keep

    _image, again = stage(tmp_path, "openwrt")
    assert "changed=0" in again
    stage(tmp_path, "openwrt", "-e", "fleetmesh_state=absent")
    assert not any(image.rglob("*")), sorted(image.rglob("*"))
