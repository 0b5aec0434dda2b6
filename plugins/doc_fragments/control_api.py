# Copyright (c) fleetmesh developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The O(control) option: how the collection's controller-side actions reach a tailnet's control server API."""

from __future__ import annotations


class ModuleDocFragment:
    """The control server's API credential, shared by tailscale_prefs (key minting), control_routes, control_node."""

    DOCUMENTATION = r"""
options:
  control:
    description:
      - The tailnet's control server API, called from the controller (never from the device).
      - headscale's REST API (C(/api/v1), a Bearer API key from C(headscale apikeys create)), tested against
        headscale 0.29.2; or Tailscale's API v2 with an API access token or an OAuth client, written from Tailscale's
        published API reference and unit-tested on its documented requests and responses, not run against the
        service.
      - Credentials go only into request headers and bodies; they are never logged or returned.
    type: dict
    suboptions:
      type:
        description: Which API.
        type: str
        choices: [headscale, tailscale]
        default: headscale
      url:
        description:
          - headscale's server URL (the C(server_url), e.g. V(https://headscale.example.org)); required for it.
          - For Tailscale, the API's base URL (default V(https://api.tailscale.com)).
        type: str
      api_key:
        description: headscale API key, or Tailscale API access token (C(tskey-api-...)).
        type: str
      oauth_client_id:
        description: Tailscale OAuth client id (instead of O(control.api_key)); needs the scopes of the calls made.
        type: str
      oauth_client_secret:
        description: Tailscale OAuth client secret (C(tskey-client-...)).
        type: str
      tailnet:
        description: Tailscale tailnet name; V(-) is the credential's default tailnet.
        type: str
        default: "-"
      user:
        description:
          - headscale user (name or numeric id) that owns minted pre-auth keys. Unset mints tag-only keys
            (headscale 0.28+); with tags owned by a user in the policy, name that user.
        type: str
      validate_certs:
        description: Verify the server's TLS certificate.
        type: bool
        default: true
      timeout:
        description: Seconds per API request.
        type: int
        default: 30
"""
