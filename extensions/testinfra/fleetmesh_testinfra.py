"""A pytest-testinfra backend that runs commands through Ansible connection plugins (fleetmesh.tailscale).

testinfra's own `ansible` backend runs the `shell` module, which needs Python on the target; the devices this
collection manages have only a POSIX shell. This backend loads an Ansible inventory, builds the host's connection
plugin exactly as ansible-playbook would (fleetmesh.tailscale.telnet, fleetmesh.tailscale.adb, ssh, local, ...,
with the host's templated variables) and runs each command with the plugin's `exec_command` as `/bin/sh -c CMD`.
So the same tests verify lab devices in Molecule and a real fleet from its inventory.

Use (this directory on PYTHONPATH, or `pytest -p fleetmesh_testinfra` after putting it there):

    pytest -p fleetmesh_testinfra --connection=fleetmesh --ansible-inventory=inventories/fleet --hosts=kobo tests/

`--hosts` takes Ansible host patterns (`all`, a group, a host); in Python,
`testinfra.get_host("fleetmesh://kobo-sage", ansible_inventory="inventories/fleet")`.
Vault-encrypted variables need ANSIBLE_VAULT_PASSWORD_FILE. Not an Ansible plugin: it is never loaded by Ansible.
"""

from __future__ import annotations

import shlex
from typing import Any

import testinfra.backend
from testinfra.backend import base

NAME = "fleetmesh"


class _Inventory:
    """One loaded inventory (cached per source): hosts by pattern and the templated variables of a host."""

    _cache: dict[str, _Inventory] = {}

    def __init__(self, sources: str | None) -> None:
        from ansible import constants as C  # noqa: N812 - Ansible's own spelling
        from ansible.inventory.manager import InventoryManager
        from ansible.parsing.dataloader import DataLoader
        from ansible.plugins.loader import init_plugin_loader
        from ansible.utils.collection_loader import AnsibleCollectionConfig
        from ansible.vars.manager import VariableManager

        if AnsibleCollectionConfig.collection_finder is None:  # not already set up by the caller (pytest, Ansible)
            init_plugin_loader(C.COLLECTIONS_PATHS)
        self.loader = DataLoader()
        if C.DEFAULT_VAULT_PASSWORD_FILE:
            from ansible.cli import CLI

            CLI.setup_vault_secrets(self.loader, [], vault_password_files=[C.DEFAULT_VAULT_PASSWORD_FILE])
        self.inventory = InventoryManager(loader=self.loader, sources=sources.split(",") if sources else None)
        self.variables = VariableManager(loader=self.loader, inventory=self.inventory)

    @classmethod
    def get(cls, sources: str | None) -> _Inventory:
        key = sources or ""
        if key not in cls._cache:
            cls._cache[key] = cls(sources)
        return cls._cache[key]

    def hosts(self, pattern: str) -> list[str]:
        return [h.name for h in self.inventory.get_hosts(pattern)]

    def host_vars(self, name: str) -> dict[str, Any]:
        host = self.inventory.get_host(name)
        if host is None:
            raise RuntimeError(f"host {name!r} is not in the inventory")
        return dict(self.variables.get_vars(host=host, include_hostvars=False))


class FleetmeshBackend(base.BaseBackend):
    """Run testinfra commands over the host's own Ansible connection plugin (no Python needed on the target)."""

    NAME = NAME

    def __init__(self, hostname: str, ansible_inventory: str | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(hostname, *args, **kwargs)
        self.ansible_inventory = ansible_inventory
        self._connection: Any = None

    @classmethod
    def get_hosts(cls, host: str, **kwargs: Any) -> list[str]:
        hosts = _Inventory.get(kwargs.get("ansible_inventory")).hosts(host or "all")
        if not hosts:
            raise RuntimeError(f"no host matches {host or 'all'!r} in the inventory")
        return hosts

    @property
    def connection(self) -> Any:
        """The host's connection plugin, built and configured as the task executor does (once per backend)."""
        if self._connection is None:
            from ansible.playbook.play_context import PlayContext
            from ansible.plugins.loader import connection_loader
            from ansible.template import Templar

            inv = _Inventory.get(self.ansible_inventory)
            variables = inv.host_vars(self.hostname)
            templar = Templar(loader=inv.loader, variables=variables)
            name = str(templar.template(variables.get("ansible_connection", "ssh")))
            conn = connection_loader.get(name, PlayContext(), None)
            if conn is None:
                raise RuntimeError(f"connection plugin {name!r} of host {self.hostname} was not found")
            var_options = conn._resolve_option_variables(variables, templar)
            conn.set_options(var_options=var_options)
            # ssh reads a few settings from the shell plugin (tmp dirs); give it the host's values too.
            shell_vars = {k: templar.template(v) for k, v in variables.items() if k.startswith("ansible_shell")}
            conn._shell.set_options(var_options=shell_vars)
            self._connection = conn
        return self._connection

    def run(self, command: str, *args: str, **kwargs: Any) -> base.CommandResult:
        cmd = self.get_command(command, *args)
        # A fresh shell per command, as Ansible's raw does: the telnet/adb plugins keep one session, which a
        # command's `cd`, `exit` or `set -e` must not change.
        rc, out, err = self.connection.exec_command(f"/bin/sh -c {shlex.quote(cmd)}", sudoable=False)
        return self.result(rc, self.encode(cmd), out, err)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def register() -> None:
    """Make `--connection=fleetmesh` / `fleetmesh://HOST` known to testinfra (done on import; idempotent)."""
    testinfra.backend.BACKENDS.setdefault(NAME, f"{__name__}.FleetmeshBackend")


register()
