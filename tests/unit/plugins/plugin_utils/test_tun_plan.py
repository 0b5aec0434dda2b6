"""_tun_plan: the networking-mode decision (pure), and its device scripts run for real under dash and busybox ash
against a fake root (its /proc/misc, /sys/class/misc and /dev/net are files in a temp dir)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import typing as t
from pathlib import Path

import pytest
from ansible.errors import AnsibleActionFail
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._tun_plan import (
    INSMOD_LINE,
    LO_LINE,
    NODE_LINE,
    Probe,
    apply_script,
    check_listen,
    decide,
    parse_probe,
    render_probe,
)
from fake_tun_root import fake_insmod, fake_root, need, sh

BUSYBOX = shutil.which("busybox")
SHELLS = [pytest.param(["dash"], id="dash"), pytest.param([BUSYBOX or "busybox", "sh"], id="busybox")]
KO = "/usrdata/tailscale/tun.ko"
SHA = "a" * 64


# --- the decision -------------------------------------------------------------------------------------------


def probe(**kw: t.Any) -> Probe:
    kw.setdefault("commands", {"mknod", "insmod", "ip"})
    kw.setdefault("lo_addr", True)
    kw.setdefault("lo_up", True)
    return Probe(**kw)


def test_usable_node_is_kernel_mode_with_nothing_to_do() -> None:
    d = decide(probe(node_tun=True, node_opens=True, misc=True), "auto")
    assert (d.mode, d.branch, d.actions, d.tailscaled_args) == ("kernel", "node", [], [])
    # The boot line is the same as when the node had to be made: the next run decides the same.
    assert d.boot_commands == decide(probe(misc=True), "auto").boot_commands == [NODE_LINE]


@pytest.mark.parametrize("where", ["misc", "sysfs"])
def test_kernel_tun_without_node_creates_it(where: str) -> None:
    d = decide(probe(**{where: True}), "kernel")
    assert (d.mode, d.branch, d.actions, d.boot_commands) == ("kernel", "mknod", ["mknod"], [NODE_LINE])


def test_foreign_file_at_the_node_is_replaced() -> None:
    assert decide(probe(node_other=True, misc=True), "auto").actions == ["replace_node"]


def test_no_tun_anywhere_falls_back_to_userspace_with_a_warning_that_says_what_works() -> None:
    d = decide(probe(), "auto", socks5="127.0.0.1:1055", http="127.0.0.1:1055")
    assert (d.mode, d.branch, d.actions) == ("userspace", "userspace", [])
    assert d.tailscaled_args == [
        "--tun=userspace-networking",
        "--socks5-server=127.0.0.1:1055",
        "--outbound-http-proxy-listen=127.0.0.1:1055",
    ]
    assert d.boot_commands == [LO_LINE]
    (warning,) = d.warnings
    assert "the kernel has no tun driver" in warning
    assert "no tailscale0 interface" in warning and "SOCKS5 127.0.0.1:1055" in warning
    assert "not installed in the system" in warning and "no IP forwarding" in warning


def test_userspace_fixes_loopback_when_it_lacks_its_address() -> None:
    assert decide(probe(lo_addr=False), "userspace").actions == ["lo"]
    assert decide(probe(lo_up=False), "auto").actions == ["lo"]
    assert decide(probe(misc=True, node_tun=True, node_opens=True, lo_addr=False), "userspace").actions == ["lo"]


def test_forced_kernel_that_cannot_work_fails_before_any_change() -> None:
    with pytest.raises(AnsibleActionFail, match=r"networking_mode=kernel cannot work.*no tun driver.*Nothing was"):
        decide(probe(), "kernel")
    with pytest.raises(AnsibleActionFail, match="cannot be opened"):
        decide(probe(misc=True, node_tun=True, node_opens=False), "kernel")
    with pytest.raises(AnsibleActionFail, match="has no mknod"):
        decide(probe(misc=True, commands=set()), "kernel")
    # auto takes the same facts to userspace instead
    assert decide(probe(misc=True, node_tun=True), "auto").mode == "userspace"


def test_user_module_uploaded_loaded_and_loaded_at_boot() -> None:
    d = decide(probe(), "kernel", module=KO, module_sha256=SHA)
    assert (d.mode, d.branch, d.upload) == ("kernel", "module", True)
    assert d.actions == ["upload", "insmod", "install", "mknod"]
    assert d.boot_commands == [f"grep -qw tun /proc/misc || insmod '{KO}'", NODE_LINE]
    assert d.boot_commands[0] == INSMOD_LINE.format(path=f"'{KO}'")
    # after a reboot that did not load it: no upload, only insmod (+ node)
    again = decide(probe(module_sha256=SHA), "auto", module=KO, module_sha256=SHA)
    assert (again.actions, again.boot_commands) == (["insmod", "mknod"], d.boot_commands)
    # loaded and node present: nothing, and the boot lines stay
    done = decide(
        probe(misc=True, module_loaded=True, node_tun=True, node_opens=True, module_sha256=SHA),
        "auto",
        module=KO,
        module_sha256=SHA,
    )
    assert (done.actions, done.boot_commands) == ([], d.boot_commands)


def test_user_module_is_not_used_when_tun_is_built_in() -> None:
    d = decide(probe(misc=True, node_tun=True, node_opens=True), "auto", module=KO, module_sha256=SHA)
    assert (d.branch, d.actions, d.upload) == ("node", [], False)


def test_user_module_without_insmod_fails_clearly() -> None:
    with pytest.raises(AnsibleActionFail, match="no insmod"):
        decide(probe(commands={"mknod"}), "auto", module=KO, module_sha256=SHA)


def test_firmware_image_is_not_probed_and_makes_the_node_at_boot() -> None:
    d = decide(None, "auto")
    assert (d.mode, d.branch, d.actions, d.boot_commands) == ("kernel", "image", [], [NODE_LINE])
    assert decide(None, "userspace").tailscaled_args == ["--tun=userspace-networking"]
    with pytest.raises(AnsibleActionFail, match="firmware image"):
        decide(None, "auto", module=KO, module_sha256=SHA)


def test_non_linux_kernels_are_left_to_tailscaled() -> None:
    netbsd = probe(os="NetBSD", commands={"ifconfig"})
    d = decide(netbsd, "kernel")
    assert (d.mode, d.branch, d.actions, d.boot_commands) == ("kernel", "os", [], [])
    u = decide(netbsd, "userspace", socks5="127.0.0.1:1055")
    assert (u.actions, u.boot_commands) == ([], [])
    assert u.tailscaled_args == ["--tun=userspace-networking", "--socks5-server=127.0.0.1:1055"]
    with pytest.raises(AnsibleActionFail, match="for Linux kernels, and this device runs NetBSD"):
        decide(netbsd, "auto", module=KO, module_sha256=SHA)
    assert parse_probe("@@os\nNetBSD\n@@end\n").os == "NetBSD"
    assert parse_probe("@@end\n").os == "Linux"


@pytest.mark.parametrize(
    ("value", "loopback"),
    [("127.0.0.1:1055", True), ("localhost:1080", True), ("[::1]:1055", True), (":1055", False), ("", True)],
)
def test_listen_addresses(value: str, loopback: bool) -> None:
    assert check_listen(value, "x") == (value, loopback)


@pytest.mark.parametrize("value", ["1055", "127.0.0.1:0", "127.0.0.1:70000", "a b:1", "127.0.0.1:1055;reboot"])
def test_bad_listen_addresses_fail(value: str) -> None:
    with pytest.raises(AnsibleActionFail, match="must be HOST:PORT"):
        check_listen(value, "networking_socks5_server")


# --- the scripts, for real, on a fake root ------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_node_made_0600_char_10_200_then_nothing_to_do(shell: list[str], tmp_path: Path) -> None:
    need(shell)
    root = fake_root(tmp_path)
    first = parse_probe(sh(shell, render_probe("", str(root))).stdout)
    assert first.misc and not first.node_tun and "mknod" in first.commands
    d = decide(first, "auto")
    out = sh(shell, apply_script(d.actions, root=str(root)))
    assert out.returncode == 0, out
    assert f"mknod {root}/dev/net/tun" in out.stdout
    st = (root / "dev/net/tun").stat()
    assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (10, 200)
    assert st.st_mode & 0o777 == 0o600
    second = decide(parse_probe(sh(shell, render_probe("", str(root))).stdout), "auto")
    assert (second.branch, second.actions) == ("node", [])


@pytest.mark.parametrize("shell", SHELLS)
def test_sysfs_alone_tells_tun_and_a_foreign_node_is_replaced(shell: list[str], tmp_path: Path) -> None:
    need(shell)
    root = fake_root(tmp_path, misc=False, sysfs=True)
    (root / "dev/net").mkdir(parents=True)
    (root / "dev/net/tun").write_text("not a device")
    p = parse_probe(sh(shell, render_probe("", str(root))).stdout)
    assert (p.sysfs, p.misc, p.node_other, p.node_tun) == (True, False, True, False)
    out = sh(shell, apply_script(decide(p, "auto").actions, root=str(root)))
    assert out.returncode == 0 and stat.S_ISCHR((root / "dev/net/tun").stat().st_mode)


@pytest.mark.parametrize("shell", SHELLS)
def test_kernel_without_tun_probes_as_userspace(shell: list[str], tmp_path: Path) -> None:
    need(shell)
    root = fake_root(tmp_path, misc=False)
    p = parse_probe(sh(shell, render_probe("", str(root))).stdout)
    assert not p.kernel_tun
    assert decide(p, "auto").mode == "userspace"
    with pytest.raises(AnsibleActionFail, match="cannot work"):
        decide(p, "kernel")
    assert not (root / "dev").exists()


def test_module_upload_insmod_install_then_second_run_is_quiet(tmp_path: Path) -> None:
    shell = ["dash"]  # busybox would run its own insmod applet, never the fake one
    need(shell)
    root = fake_root(tmp_path, misc=False)
    path = fake_insmod(tmp_path, root, ok=True)
    ko_src = tmp_path / "tun.ko"
    ko_src.write_bytes(b"\x7fELF fake module")
    sha = hashlib.sha256(ko_src.read_bytes()).hexdigest()
    dest = root / "usrdata/tailscale/tun.ko"
    dest.parent.mkdir(parents=True)
    p = parse_probe(sh(shell, render_probe(str(dest), str(root)), path).stdout)
    d = decide(p, "auto", module=str(dest), module_sha256=sha)
    assert d.actions == ["upload", "insmod", "install", "mknod"]
    shutil.copy(ko_src, f"{dest}.fmtmp")  # what put_file does
    out = sh(shell, apply_script(d.actions, module=str(dest), module_sha256=sha, root=str(root)), path)
    assert out.returncode == 0, out
    assert (root / "insmod.log").read_text() == f"{dest}.fmtmp\n"
    assert dest.read_bytes() == ko_src.read_bytes() and not Path(f"{dest}.fmtmp").exists()
    assert stat.S_ISCHR((root / "dev/net/tun").stat().st_mode)
    p2 = parse_probe(sh(shell, render_probe(str(dest), str(root)), path).stdout)
    assert p2.module_sha256 == sha
    assert decide(p2, "auto", module=str(dest), module_sha256=sha).actions == []


def test_failed_insmod_leaves_the_device_as_it_was(tmp_path: Path) -> None:
    shell = ["dash"]
    need(shell)
    root = fake_root(tmp_path, misc=False)
    path = fake_insmod(tmp_path, root, ok=False)
    dest = root / "usrdata/tun.ko"
    dest.parent.mkdir(parents=True)
    Path(f"{dest}.fmtmp").write_bytes(b"wrong kernel")
    sha = hashlib.sha256(b"wrong kernel").hexdigest()
    actions = ["upload", "insmod", "install", "mknod"]
    out = sh(shell, apply_script(actions, module=str(dest), module_sha256=sha, root=str(root)), path)
    assert "@@error" in out.stdout and "invalid module format" in out.stdout
    assert not dest.exists() and not Path(f"{dest}.fmtmp").exists() and not (root / "dev").exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_boot_lines_parse_and_the_node_line_is_idempotent(shell: list[str], tmp_path: Path) -> None:
    need(shell)
    for line in (NODE_LINE, LO_LINE, INSMOD_LINE.format(path="'/usrdata/tailscale/tun.ko'")):
        assert sh([*shell, "-n"], line).returncode == 0, line
    root = fake_root(tmp_path)
    line = NODE_LINE.replace("/dev/net", f"{root}/dev/net")
    assert sh(shell, line).returncode == 0 and sh(shell, line).returncode == 0
    st = (root / "dev/net/tun").stat()
    assert (os.major(st.st_rdev), os.minor(st.st_rdev), st.st_mode & 0o777) == (10, 200, 0o600)


@pytest.mark.parametrize("shell", SHELLS)
def test_loopback_without_address_is_fixed_in_a_fresh_network_namespace(shell: list[str], tmp_path: Path) -> None:
    need(shell)
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip (util-linux, iproute2)")
    # A new netns has lo down and without 127.0.0.1, like the KOReader user's device.
    (tmp_path / "probe").write_text(render_probe(""))
    (tmp_path / "apply").write_text(apply_script(["lo"]))
    run = f"{' '.join(shell)} {tmp_path}/probe > {tmp_path}/p1; {' '.join(shell)} {tmp_path}/apply > {tmp_path}/a; "
    run += f'{" ".join(shell)} {tmp_path}/probe > {tmp_path}/p2; {" ".join(shell)} -c "$LO" && echo again-ok'
    out = subprocess.run(
        ["unshare", "--net", "sh", "-c", run],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=dict(os.environ, LO=LO_LINE),
    )
    if out.returncode != 0 and "unshare failed" in out.stderr:
        pytest.skip(f"cannot create a network namespace here: {out.stderr.strip()}")
    before = parse_probe((tmp_path / "p1").read_text())
    after = parse_probe((tmp_path / "p2").read_text())
    assert (before.lo_addr, before.lo_up) == (False, False)
    assert decide(before, "userspace").actions == ["lo"]
    assert "lo 127.0.0.1 up" in (tmp_path / "a").read_text()
    assert (after.lo_addr, after.lo_up) == (True, True)
    assert "again-ok" in out.stdout  # the boot line on a loopback that is already fine
