"""Offline stand-in for the get-pip.py script that `ansible-test` downloads to bootstrap pip in its venvs.

ansible-test fetches get-pip.py from a host this project's machines cannot reach, but first looks for a cached copy
at ~/.ansible/test/cache/get_pip_<version>.py and runs it unchecked as
    python get_pip_X.py --disable-pip-version-check pip==X [--no-setuptools] [--no-wheel]
This script does the same job with what the interpreter already has: `ensurepip`, then `pip install` of the
requested packages from the configured index. Plain pip rejects --no-setuptools/--no-wheel (get-pip.py options),
so they are dropped; ansible-test isolates pip's configuration, so the system CA bundle is passed explicitly.
`tests/tooling/install_ansible_test_bootstrap.py` puts this file in the cache.
"""

from __future__ import annotations

import os
import subprocess
import sys

GET_PIP_ONLY_OPTIONS = {"--no-setuptools", "--no-wheel"}
CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


def main() -> int:
    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY_OPTIONS]
    subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"])
    cert = next((path for path in CA_BUNDLES if os.path.exists(path)), None)
    cert_args = ["--cert", cert] if cert else []
    return subprocess.call([sys.executable, "-m", "pip", "install", *cert_args, *args])


if __name__ == "__main__":
    sys.exit(main())
