"""Helpers for tests that need a copy of the checkout or an isolated ansible environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def ansible_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment for ansible commands that cannot see the user's home or config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(HOME=str(home), PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", ANSIBLE_NOCOLOR="1")
    env.update(extra)
    return env


def run_playbook(args: list[str], home: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """ansible-playbook ARGS from the checkout, with its ansible.cfg and an isolated home (not checked: the caller
    asserts on the result)."""
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        ["ansible-playbook", *args],
        cwd=REPO,
        env=ansible_env(home, ANSIBLE_CONFIG=str(REPO / "ansible.cfg")),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def copy_checkout(dest: Path) -> Path:
    """Copy the files git would put in a fresh clone (tracked plus new, unignored ones), symlinks kept as links."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout
    for rel in sorted({p for p in listing.decode().split("\0") if p}):
        src = REPO / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree but not yet in the index
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, target)
    return dest
