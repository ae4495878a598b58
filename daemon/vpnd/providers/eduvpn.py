"""eduVPN / Let's Connect! servers speaking API v3."""

from __future__ import annotations

import time

from vpnd.errors import ServerError
from vpnd.http import HttpClient, Response
from vpnd.protocols import eduvpn, oauth
from vpnd.protocols.eduvpn import Endpoints, IssuedConfig, Profile
from vpnd.protocols.oauth import Tokens

_ACCEPT_CONFIG = eduvpn.OPENVPN_PROFILE


class EduVPNProvider:
    """API v3: /.well-known/vpn-user-portal, /info, /connect, /disconnect."""

    def __init__(self, http: HttpClient) -> None:
        self._http = http

    async def discover(self, base_url: str) -> Endpoints:
        """Fetch the discovery document; it is no-store, so this runs before every connect."""
        reply = await self._http.get(
            eduvpn.well_known_url(base_url),
            headers={"Accept": "application/json"},
            follow_redirects=True,
        )
        if reply.status != 200:
            raise ServerError(
                f"{base_url} does not look like an eduVPN or Let's Connect! server"
                f" (its discovery document answered HTTP {reply.status})"
            )
        return eduvpn.parse_well_known(reply.body)

    async def profiles(self, endpoints: Endpoints, access_token: str) -> list[Profile]:
        """GET /info."""
        reply = await self._http.get(
            eduvpn.api_call_url(endpoints.api_endpoint, "info"), headers=_bearer(access_token)
        )
        _check(reply)
        return eduvpn.parse_info(reply.body)

    async def connect(
        self, endpoints: Endpoints, access_token: str, profile_id: str, *, prefer_tcp: bool
    ) -> IssuedConfig:
        """POST /connect for an OpenVPN configuration."""
        reply = await self._http.post(
            eduvpn.api_call_url(endpoints.api_endpoint, "connect"),
            data={"profile_id": profile_id, "prefer_tcp": "yes" if prefer_tcp else "no"},
            headers={**_bearer(access_token), "Accept": _ACCEPT_CONFIG},
        )
        _check(reply)
        return eduvpn.parse_connect(
            reply.headers.get("content-type", ""), reply.headers.get("expires"), reply.body
        )

    async def disconnect(self, endpoints: Endpoints, access_token: str) -> None:
        """POST /disconnect."""
        reply = await self._http.post(
            eduvpn.api_call_url(endpoints.api_endpoint, "disconnect"),
            data={},
            headers=_bearer(access_token),
        )
        _check(reply)

    async def token(
        self, endpoints: Endpoints, form: dict[str, str], previous_refresh: str | None
    ) -> Tokens:
        """POST to the token endpoint."""
        reply = await self._http.post(
            endpoints.token_endpoint, data=form, headers={"Accept": "application/json"}
        )
        return oauth.parse_token_response(
            reply.status, reply.body, now=time.time(), previous_refresh_token=previous_refresh
        )


def _bearer(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


def _check(reply: Response) -> None:
    if not 200 <= reply.status < 300:
        raise eduvpn.api_error(reply.status, reply.body)
