"""Console entry point of the lab (filled in by the lab-core work)."""

import sys


def main() -> int:
    print("fleetlab: not implemented yet", file=sys.stderr)
    return 2
