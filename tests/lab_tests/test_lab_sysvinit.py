"""The sysvinit profile against real busybox: telnet login, rc5.d boot order, reboot, persistent /data."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from fleetlab import lab
from fleetlab.rawtelnet import RawTelnet, TelnetError
from fleetlab.state import Device

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, veths)"),
]

NAME = "lt-sv"
PW_NAME = "lt-svpw"


@pytest.fixture(scope="module")
def sysvinit() -> Iterator[Device]:
    lab.down(NAME)
    device = lab.up(NAME, "sysvinit")
    yield device
    lab.down(NAME)


def test_telnet_login_and_command(sysvinit: Device) -> None:
    with RawTelnet(sysvinit.address) as tn:
        tn.login("root")
        assert tn.run("uname -m") == ("x86_64", 0)
        assert tn.run("hostname") == (NAME, 0)
        out, rc = tn.run("false")
        assert rc == 1


def test_device_has_its_own_namespaces(sysvinit: Device) -> None:
    proc = lab.exec_(NAME, ["sh", "-c", "echo $$; cat /proc/1/comm; ip -o -4 addr show eth0"])
    pid, init, addr = proc.stdout.splitlines()
    assert int(pid) > 1 and init == "init"
    assert f"inet {sysvinit.address}/15" in addr
    # The host's interfaces are not visible inside.
    assert "fleetlab0" not in lab.exec_(NAME, ["ip", "-o", "link"]).stdout


def test_reboot_runs_rc5_scripts_in_order_and_keeps_data(sysvinit: Device) -> None:
    script = """cat > /etc/init.d/lt-demo <<'EOF'
#!/bin/sh
case "$1" in
start) echo "$0" >> /data/boot.log
       start-stop-daemon -S -b -m -p /run/lt-demo.pid -x /bin/sleep -- 1000 ;;
esac
EOF
chmod +x /etc/init.d/lt-demo
ln -sf ../init.d/lt-demo /etc/rc5.d/S20second
ln -sf ../init.d/lt-demo /etc/rc5.d/S10first
touch /tmp/volatile /run/volatile
"""
    assert lab.exec_(NAME, ["sh", "-c", script]).returncode == 0
    lab.reboot(NAME)
    log = lab.exec_(NAME, ["cat", "/data/boot.log"]).stdout.split()
    assert log == ["/etc/rc5.d/S10first", "/etc/rc5.d/S20second"]
    listing = lab.exec_(NAME, ["ls", "/tmp", "/run"]).stdout.split()
    assert "volatile" not in listing and "lt-demo.pid" in listing
    # start-stop-daemon's daemon runs after boot, its pid in the device's own pid namespace.
    assert lab.exec_(NAME, ["start-stop-daemon", "-K", "-t", "-p", "/run/lt-demo.pid"]).returncode == 0
    lab.reboot(NAME)
    assert lab.exec_(NAME, ["cat", "/data/boot.log"]).stdout.split() == log * 2
    with RawTelnet(sysvinit.address) as tn:
        tn.login("root")
        assert tn.run("echo back")[0] == "back"


def test_password_login() -> None:
    lab.down(PW_NAME)
    device = lab.up(PW_NAME, "sysvinit", password="s3cret-lab")
    try:
        with RawTelnet(device.address) as tn:
            tn.read_until(b"login: ")
            tn.send_line("root")
            tn.read_until(b"Password: ")
            tn.send_line("wrong")
            with pytest.raises(TelnetError):
                tn.read_until(b"# ", timeout=4)
        with RawTelnet(device.address) as tn:
            tn.login("root", "s3cret-lab")
            assert tn.run("id -u") == ("0", 0)
        assert "s3cret-lab" not in lab.exec_(PW_NAME, ["cat", "/etc/shadow"]).stdout
    finally:
        lab.down(PW_NAME)
