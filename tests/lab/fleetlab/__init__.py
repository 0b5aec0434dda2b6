"""fleetlab: the fleetmesh.tailscale test lab (simulated devices, Tailscale stand-in release, mirror)."""
