# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bring a node's Tailscale login and prefs to the desired state with the least command, without Python on it.

One round trip reads `tailscale status --json` and `tailscale debug prefs`; the pure planner in
plugin_utils/_prefs.py picks nothing / `tailscale set` / `tailscale up`; a second round trip applies it and reads
the truth back. The auth key travels only as a 0600 file (the connection's put_file into a 0700 temp dir), is
passed as `--auth-key=file:PATH` and removed in the same shell line as the command, and again from Python if that
round trip broke. It never appears in a command line, the result, or an error (outputs are redacted).

With `mint_key` (and `control`, the control server's API credential) no key comes from the play: only when the plan
needs a login is a single-use, short-lived pre-auth key minted on the controller (plugin_utils/_control_api.py),
used the same way, and expired through the API as soon as the command returned.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import tempfile
import typing as t

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils import _control_api
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_script import (
    parse_sections,
    run_script,
    sh_quote,
)
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._device_shell import WRITE_TMP_SUFFIX, atomic_write
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._prefs import (
    AUTH_KEY_PLACEHOLDER,
    LOGIN_STATES,
    Plan,
    PrefsError,
    desired_flags,
    managed_view,
    parse_json,
    plan,
    render_config,
)
from ansible_collections.fleetmesh.tailscale.plugins.plugin_utils._routes import TAILNET_RANGES

REDACTED = "********"

ARGUMENT_SPEC: dict[str, t.Any] = {
    "mode": {"type": "str", "default": "cli", "choices": ["cli", "config"]},
    "tailscale": {"type": "str", "default": "tailscale"},
    "socket": {"type": "str"},
    "auth_key": {"type": "str", "no_log": True},
    "key_dir": {"type": "str", "default": "/tmp"},
    "login_server": {"type": "str"},
    "hostname": {"type": "str"},
    "accept_dns": {"type": "bool"},
    "accept_routes": {"type": "bool"},
    "ssh": {"type": "bool"},
    "shields_up": {"type": "bool"},
    "advertise_routes": {"type": "list", "elements": "str"},
    "advertise_exit_node": {"type": "bool"},
    "advertise_tags": {"type": "list", "elements": "str"},
    "snat_subnet_routes": {"type": "bool"},
    "netfilter_mode": {"type": "str", "choices": ["on", "nodivert", "off"]},
    "extra_up_args": {"type": "list", "elements": "str", "default": []},
    "reset": {"type": "bool", "default": False},
    "timeout": {"type": "str", "default": "60s"},
    "fail_on_machine_auth": {"type": "bool", "default": False},
    "config_path": {"type": "str"},
    "config_auth_key_file": {"type": "str"},
    "connection_address": {"type": "str"},
    "allow_reauth_over_tailnet": {"type": "bool", "default": False},
    "control": {"type": "dict", "options": _control_api.CONTROL_SPEC},
    "mint_key": {
        "type": "dict",
        "options": {
            "tags": {"type": "list", "elements": "str", "default": []},
            "expiry": {"type": "int", "default": 600},
            "ephemeral": {"type": "bool", "default": False},
            "description": {"type": "str", "default": "fleetmesh login"},
        },
    },
}


def self_view(status: dict[str, t.Any]) -> dict[str, t.Any]:
    """Who the node is, as the control actions find it again: node key, tailnet addresses, hostname."""
    me = status.get("Self") if isinstance(status.get("Self"), dict) else {}
    return {
        "node_key": str(me.get("PublicKey") or ""),
        "addresses": [str(a) for a in (me.get("TailscaleIPs") or [])],
        "hostname": str(me.get("HostName") or ""),
        "dns_name": str(me.get("DNSName") or ""),
    }


def over_tailnet(address: str | None) -> bool:
    """True when the play reaches the device through a Tailscale address (a re-auth would cut that path)."""
    if not address:
        return False
    host = address.strip().strip("[]").rsplit("%", 1)[0]
    if host.count(":") == 1:  # host:port (adb serials)
        host = host.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(net) for net in TAILNET_RANGES)


def redact(text: str, secret: str | None) -> str:
    """Remove the key from anything the device or the CLI printed."""
    return text.replace(secret, REDACTED) if secret else text


class ActionModule(ActionBase):
    """Idempotent login and prefs over POSIX sh (see the doc stub plugins/modules/tailscale_prefs.py)."""

    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_diff = True

    def _cli(self, args: dict[str, t.Any]) -> str:
        cli = sh_quote(args["tailscale"])
        if args.get("socket"):
            cli += " " + sh_quote(f"--socket={args['socket']}")
        return cli

    @staticmethod
    def _have_script(binary: str) -> str:
        """Whether the tailscale CLI is on the device at all (@@have yes/no): a fresh device has none yet."""
        test = f"[ -x {sh_quote(binary)} ]" if "/" in binary else f"command -v {sh_quote(binary)} >/dev/null 2>&1"
        return f"echo @@have; if {test}; then echo yes; else echo no; fi\n"

    def _read_script(self, cli: str) -> str:
        # A daemon that just started reports NoState until it has loaded its state file: wait for that (up to ~10 s)
        # rather than mistake a logged-in node for a fresh one and spend the auth key on it. stderr joins stdout so
        # "failed to connect to local tailscaled" reaches the error message.
        return (
            f"i=0; while s=$({cli} status --json 2>&1); rc=$?; [ $i -lt 20 ] && "
            'case $s in *\'"BackendState": "NoState"\'*) true ;; *) false ;; esac; '
            "do i=$((i+1)); sleep 0.5 2>/dev/null || sleep 1; done\n"
            "echo @@status; printf '%s\\n' \"$s\"; echo @@status_rc; echo $rc\n"
            f"echo @@prefs; {cli} debug prefs 2>&1; echo @@end\n"
        )

    def _truth(self, sections: dict[str, str], secret: str | None) -> tuple[dict[str, t.Any], dict[str, t.Any]]:
        status_text = redact(sections.get("status", ""), secret)
        if sections.get("have", "").strip() == "no":
            raise AnsibleActionFail(
                "the tailscale CLI is not on the device (the binary role installs it): " + status_text.strip()[:300]
            )
        if sections.get("status_rc", "").strip() != "0":
            raise AnsibleActionFail(
                "tailscale status failed (is tailscaled running? the boot integration starts it): "
                + status_text.strip()[:500]
            )
        try:
            return (
                parse_json(status_text, "tailscale status --json"),
                parse_json(redact(sections.get("prefs", ""), secret), "tailscale debug prefs"),
            )
        except PrefsError as exc:
            raise AnsibleActionFail(str(exc)) from None

    def run(self, tmp: str | None = None, task_vars: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
        result = super().run(tmp, task_vars)
        del tmp
        _spec, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        # ansible-core 2.19 hands tagged str subclasses: plain str before they reach shell text or libraries.
        key = str(args["auth_key"]) if args.get("auth_key") else None
        mint = args.get("mint_key")
        if mint is not None and (key or not args.get("control")):
            raise AnsibleActionFail("mint_key needs control (the API credential) and no auth_key")
        try:
            wanted = desired_flags(args)
        except PrefsError as exc:
            raise AnsibleActionFail(str(exc)) from None
        cli = self._cli(args)
        config_changed = False
        if args["mode"] == "config":
            result = self._config_mode(result, args)
            if not key and mint is None:
                return result
            config_changed = bool(result["changed"])

        script = self._have_script(str(args["tailscale"])) + self._read_script(cli)
        read = run_script(self, script, "tailscale_prefs (read)")
        sections = parse_sections(read.stdout)
        if "end" not in sections:
            raise AnsibleActionFail("tailscale_prefs: the device's output was cut short: " + redact(read.stdout, key))
        if args["mode"] == "config":
            # The config file never holds the key (it outlives this task, and tailscaled reads AuthKey only when it
            # starts): a node that needs a login gets it once from the CLI, the key in a file of this task alone.
            # Before the daemon runs (the boot role renders the file first) there is nothing to log in yet.
            if sections.get("status_rc", "").strip() != "0":
                result["login_pending"] = True
                return result
            status, prefs = self._truth(sections, key)
            # As in cli mode (LOGIN_STATES): a daemon left in NoState, e.g. by a key the server refused, needs a login
            # too (tests/faults: key-bogus, key-expired).
            if str(status.get("BackendState") or "") not in LOGIN_STATES:
                result["login_pending"] = False
                return result
        elif self._task.check_mode and sections.get("status_rc", "").strip() != "0":
            return self._not_there_yet(result, args, sections)
        else:
            status, prefs = self._truth(sections, key)
        try:
            the_plan = plan(
                status,
                prefs,
                wanted,
                timeout=str(args["timeout"]),
                have_key=bool(key) or mint is not None,
                extra_up_args=[str(a) for a in args["extra_up_args"]],
                reset=bool(args["reset"]),
            )
        except PrefsError as exc:
            raise AnsibleActionFail(str(exc)) from None
        before = {"backend_state": the_plan.backend_state, **managed_view(status, prefs, wanted)}
        result.update(
            changed=the_plan.changed or config_changed,
            command=the_plan.verb,
            argv=self._shown_argv(the_plan),
            reason=the_plan.reason,
            changes=the_plan.changes,
            backend_state=the_plan.backend_state,
            node=self_view(status),
        )
        if mint is not None:
            result["minted_key"] = None  # set below when a login needed one
        if the_plan.needs_key and over_tailnet(args.get("connection_address")):
            # A re-auth restarts the node's session: the connection this play runs over would drop mid-command.
            msg = (
                f"{the_plan.reason}, but this play reaches the device over the tailnet "
                f"({args['connection_address']}): the re-authentication would cut the connection it runs on. "
                "Run it over another path (LAN, adb, serial) or set allow_reauth_over_tailnet (docs/login.md)."
            )
            if not args["allow_reauth_over_tailnet"]:
                raise AnsibleActionFail(msg, result=result)
        if args["mode"] == "config":
            result["login_pending"] = the_plan.needs_key
        if not the_plan.changed or self._task.check_mode:
            result["machine_auth_pending"] = the_plan.backend_state == "NeedsMachineAuth"
            if self._task.diff and the_plan.changed:
                after = {**before, **{flag: c["after"] for flag, c in the_plan.changes.items()}}
                result["diff"] = {"before": before, "after": after}
            return self._machine_auth(result, args)

        minted = None
        if the_plan.needs_key and mint is not None:
            minted = self._mint(args, mint)
            key = str(minted.pop("key"))
            result["minted_key"] = minted
        if the_plan.needs_key and over_tailnet(args.get("connection_address")):
            # The detached command reads the key after this task returned: a minted key expires on its own.
            self._apply_detached(cli, the_plan, args, key)
            result["detached"] = True
            result.setdefault("warnings", []).append(
                f"tailscale {the_plan.verb} runs detached on the device (ignoring SIGHUP) because it cuts this "
                "connection; the next run verifies the result"
            )
            return result
        try:
            status2, prefs2, out, rc = self._apply(cli, the_plan, args, key)
        finally:
            if minted is not None:
                result["minted_key"] = self._spend(args, minted)
        result["node"] = self_view(status2)
        if minted is not None and result["minted_key"].get("expire_error"):
            result.setdefault("warnings", []).append(
                f"the minted pre-auth key could not be expired ({result['minted_key']['expire_error']}); it is "
                f"single-use and expires by itself at {minted.get('expiration')}"
            )
        state2 = str(status2.get("BackendState") or "")
        result.update(backend_state=state2, output=out)
        if args["mode"] == "config":
            result["login_pending"] = state2 == "NeedsLogin"
        after = {"backend_state": state2, **managed_view(status2, prefs2, wanted)}
        if self._task.diff:
            result["diff"] = {"before": before, "after": after}
        result["machine_auth_pending"] = state2 == "NeedsMachineAuth"
        if rc != 0 and not result["machine_auth_pending"]:
            raise AnsibleActionFail(f"tailscale {the_plan.verb} failed (rc={rc}): {out.strip()[:1500]}", result=result)
        # The truth after the change must match: a CLI that silently ignored a flag is a failure, not "changed".
        again = plan(status2, prefs2, wanted, timeout="0s", have_key=True)
        if again.changed and not result["machine_auth_pending"]:
            tags = again.changes.get("advertise-tags")
            if tags is not None and set(again.changes) == {"advertise-tags"}:
                # The tags are the control server's decision: the request went out and was not granted.
                raise AnsibleActionFail(
                    f"after tailscale {the_plan.verb} the control server gave the node the tags {tags['before']}, "
                    f"not {tags['after']}: the server decides a node's tags (headscale keeps the tags of the "
                    "pre-auth key a node registered with, whatever it asks; change them there, `headscale nodes "
                    "tag`); leave advertise_tags unset to take the server's tags",
                    result=result,
                )
            raise AnsibleActionFail(
                f"after tailscale {the_plan.verb} the node still differs ({again.reason}): {again.changes}",
                result=result,
            )
        return self._machine_auth(result, args)

    @staticmethod
    def _mint(args: dict[str, t.Any], mint: dict[str, t.Any]) -> dict[str, t.Any]:
        """A single-use pre-auth key from the control server, with the node's tags (the secret under "key")."""
        try:
            return _control_api.client(args["control"]).mint_key(
                tags=[str(tag) for tag in mint["tags"]],
                expiry_seconds=int(mint["expiry"]),
                ephemeral=bool(mint["ephemeral"]),
                description=str(mint["description"]),
            )
        except _control_api.ControlError as exc:
            raise AnsibleActionFail(f"cannot mint a pre-auth key: {exc}") from None

    @staticmethod
    def _spend(args: dict[str, t.Any], minted: dict[str, t.Any]) -> dict[str, t.Any]:
        """Expire the minted key now, used or not, and report what the control server says of it."""
        api = _control_api.client(args["control"])
        try:
            api.expire_key(str(minted["id"]))
            return {**minted, **api.key_state(str(minted["id"]))}
        except _control_api.ControlError as exc:
            return {**minted, "expire_error": str(exc)}

    @staticmethod
    def _not_there_yet(result: dict[str, t.Any], args: dict[str, t.Any], sections: dict[str, str]) -> dict[str, t.Any]:
        """Check mode on a device not provisioned yet: no CLI, or no daemon, to ask. A real run installs and starts
        them first (binary and boot roles), then logs in and applies the prefs: report that it would."""
        missing = sections.get("have", "").strip() == "no"
        what = f"{args['tailscale']} is not on the device yet" if missing else "tailscaled is not running yet"
        result.update(
            changed=True,
            command="up",
            backend_state="",
            reason=what,
            msg=f"check mode: {what} (a real run installs and starts it first); would log in and apply the prefs",
            machine_auth_pending=False,
        )
        return result

    @staticmethod
    def _shown_argv(the_plan: Plan) -> list[str]:
        return [a.replace(AUTH_KEY_PLACEHOLDER, "<auth key file>") for a in the_plan.args]

    def _machine_auth(self, result: dict[str, t.Any], args: dict[str, t.Any]) -> dict[str, t.Any]:
        if result.get("machine_auth_pending"):
            msg = "logged in, but the machine awaits approval by a tailnet admin (NeedsMachineAuth)"
            result["msg"] = msg
            if args["fail_on_machine_auth"]:
                result["failed"] = True
            else:
                result.setdefault("warnings", []).append(msg)
        return result

    def _apply(
        self, cli: str, the_plan: Plan, args: dict[str, t.Any], key: str | None
    ) -> tuple[dict[str, t.Any], dict[str, t.Any], str, int]:
        key_dir = None
        finished = False
        try:
            if the_plan.needs_key:
                if key is None:  # plan() refuses a login without a key; kept as a guard for future planners
                    raise AnsibleActionFail("internal: a login was planned without an auth key")
                key_dir = self._push_key(key, str(args["key_dir"]))
                argv = [a.replace(AUTH_KEY_PLACEHOLDER, f"{key_dir}/key") for a in the_plan.args]
            else:
                argv = list(the_plan.args)
            command = f"{cli} {' '.join(sh_quote(a) for a in argv)}"
            # The key file goes in the same shell line as the command: removed whatever the command's outcome.
            cleanup = f"rm -rf {sh_quote(key_dir)}; " if key_dir else ""
            script = f"echo @@out; {command} 2>&1; rc=$?; {cleanup}echo @@rc; echo $rc\n" + self._read_script(cli)
            run = run_script(self, script, f"tailscale_prefs ({the_plan.verb})")
            finished = True
        finally:
            if key_dir and not finished:
                # The round trip broke before its own rm ran: remove the key from the device now.
                run_script(self, f"rm -rf {sh_quote(key_dir)}", "tailscale_prefs (key cleanup)")
        sections = parse_sections(run.stdout)
        out = redact(sections.get("out", ""), key)
        if "end" not in sections:
            raise AnsibleActionFail("tailscale_prefs: the device's output was cut short: " + out)
        status, prefs = self._truth(sections, key)
        return status, prefs, out, int(sections.get("rc", "1").strip() or 1)

    def _apply_detached(self, cli: str, the_plan: Plan, args: dict[str, t.Any], key: str | None) -> None:
        """Start the command in a background shell that ignores SIGHUP and removes the key file afterwards.

        Not `nohup`: busybox builds often lack that applet (Debian's busybox-static has none), and then the command
        never ran while the key stayed on the device. A signal ignored at exec stays ignored (and cannot be trapped
        again by a non-interactive sh), so `trap '' HUP; exec sh -c ...` is nohup with nothing but the shell.
        """
        if key is None:
            raise AnsibleActionFail("internal: a login was planned without an auth key")
        key_dir = self._push_key(key, str(args["key_dir"]))
        argv = [a.replace(AUTH_KEY_PLACEHOLDER, f"{key_dir}/key") for a in the_plan.args]
        inner = f"{cli} {' '.join(sh_quote(a) for a in argv)}; rm -rf {sh_quote(key_dir)}"
        started = run_script(
            self, f"(trap '' HUP; exec sh -c {sh_quote(inner)}) </dev/null >/dev/null 2>&1 &\necho started", "up"
        )
        if "started" not in started.stdout:
            run_script(self, f"rm -rf {sh_quote(key_dir)}", "tailscale_prefs (key cleanup)")
            raise AnsibleActionFail("could not start the detached tailscale up")

    def _push_key(self, key: str, key_dir: str) -> str:
        """Put the key into a fresh 0700 dir on the device as a 0600 file; returns the dir."""
        made = run_script(
            self,
            f"umask 077; mktemp -d {sh_quote(key_dir.rstrip('/') + '/.fleetmesh-ts.XXXXXX')}",
            "tailscale_prefs (key dir)",
        )
        remote_dir = made.stdout.strip().splitlines()[-1] if made.stdout.strip() else ""
        if made.rc != 0 or not remote_dir.startswith("/"):
            raise AnsibleActionFail(f"cannot create a private temp dir under {key_dir}: {made.stdout} {made.stderr}")
        fd, local = tempfile.mkstemp(prefix="fleetmesh-ts-")  # mkstemp: 0600 on the controller too
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(key + "\n")
            try:
                self._connection.put_file(local, f"{remote_dir}/key")
            except Exception:
                run_script(self, f"rm -rf {sh_quote(remote_dir)}", "tailscale_prefs (key cleanup)")
                raise AnsibleActionFail("could not copy the auth key file to the device") from None
        finally:
            os.unlink(local)
        return remote_dir

    def _config_mode(self, result: dict[str, t.Any], args: dict[str, t.Any]) -> dict[str, t.Any]:
        """Render tailscaled's --config file (alpha0) and install it atomically, 0600, only when it differs."""
        path = args.get("config_path")
        if not path or not str(path).startswith("/"):
            raise AnsibleActionFail("mode=config needs config_path, an absolute path on the device")
        path = str(path)
        try:
            text = render_config(args, args.get("config_auth_key_file"))
        except PrefsError as exc:
            raise AnsibleActionFail(str(exc)) from None
        read = run_script(self, f"echo @@conf; cat {sh_quote(path)} 2>/dev/null; echo @@end", "tailscale_prefs")
        current = parse_sections(read.stdout).get("conf", "")
        changed = current.strip() != text.strip()
        result.update(changed=changed, config_path=path)
        if self._task.diff and changed:
            result["diff"] = {"before": current, "after": text, "before_header": path, "after_header": path}
        if not changed or self._task.check_mode:
            return result
        fd, local = tempfile.mkstemp(prefix="fleetmesh-tsconf-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            tmp_remote = f"{path}{WRITE_TMP_SUFFIX}"
            prep = run_script(
                self, f'umask 077; mkdir -p "$(dirname {sh_quote(path)})" && : > {sh_quote(tmp_remote)}', "config"
            )
            if prep.rc != 0:
                raise AnsibleActionFail(f"cannot write next to {path}: {prep.stdout} {prep.stderr}")
            try:
                self._connection.put_file(local, tmp_remote)
            except Exception:
                # A full disk: no half-written temp file stays beside the config (tests/faults: full-config). A
                # dead connection cannot clean up; the error is then the transfer's.
                with contextlib.suppress(Exception):
                    run_script(self, f"rm -f {sh_quote(tmp_remote)}", "config")
                raise
        finally:
            os.unlink(local)
        done = run_script(
            self,
            " && ".join(atomic_write(sh_quote(path), sh_quote(tmp_remote), mode="600"))
            + f" || {{ rc=$?; rm -f {sh_quote(tmp_remote)}; exit $rc; }}",
            "config",
        )
        if done.rc != 0:
            raise AnsibleActionFail(f"cannot install {path}: {done.stdout} {done.stderr}")
        return result
