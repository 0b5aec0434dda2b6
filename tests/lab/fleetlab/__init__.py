"""fleetlab: the fleetmesh.tailscale test lab (simulated devices, real Tailscale builds and their mirror, headscale)."""
