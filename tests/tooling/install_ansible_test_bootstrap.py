"""Put the offline pip bootstrap where ansible-test looks for its cached get-pip script (idempotent)."""

from __future__ import annotations

import filecmp
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

from ansible_test._internal.python_requirements import get_venv_packages


def main() -> int:
    python = SimpleNamespace(version=f"{sys.version_info.major}.{sys.version_info.minor}")
    version = get_venv_packages(python)["pip"]
    target = Path.home() / ".ansible" / "test" / "cache" / f"get_pip_{version.replace('.', '_')}.py"
    source = Path(__file__).with_name("ansible_test_get_pip.py")
    if target.exists() and filecmp.cmp(source, target, shallow=False):
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    print(f"installed offline pip bootstrap for ansible-test: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
