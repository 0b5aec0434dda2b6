"""Tailscale stand-in for the lab: POSIX sh `tailscale`/`tailscaled` scripts and the release builder.

STAND-IN (fleetlab lab), not Tailscale. See docs/standin.md.
"""
