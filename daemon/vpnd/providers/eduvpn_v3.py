"""eduVPN / Let's Connect! servers speaking API v3."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from vpnd.errors import ServerError
from vpnd.http import HttpClient, Response
from vpnd.protocols import eduvpn, ovpnconfig
from vpnd.protocols.eduvpn import Endpoints, Profile
from vpnd.protocols.eduvpn_v2 import Message
from vpnd.providers.base import Connectable, NotThisFamily, Session
from vpnd.store.store import ServerRecord

log = logging.getLogger("vpnd.providers")

_ACCEPT_CONFIG = eduvpn.OPENVPN_PROFILE


class EduVPNv3Provider:
    """API v3: /.well-known/vpn-user-portal, /info, /connect, /disconnect."""

    kind = "eduvpn-v3"

    def __init__(self, http: HttpClient) -> None:
        self._http = http

    async def discover(self, base_url: str, record: ServerRecord | None = None) -> Endpoints:
        """Fetch the discovery document; it is no-store, so this runs before every connect."""
        reply = await self._http.get(
            eduvpn.well_known_url(base_url),
            headers={"Accept": "application/json"},
            follow_redirects=True,
        )
        if reply.status != 200:
            raise NotThisFamily(
                f"{base_url} does not look like an eduVPN or Let's Connect! server"
                f" (its discovery document answered HTTP {reply.status})"
            )
        try:
            return eduvpn.parse_well_known(reply.body)
        except eduvpn.NotApiV3 as exc:
            # A server of the 2.x line: its info.json says how to speak to it.
            raise NotThisFamily(f"{base_url}: {exc.message}") from None

    async def profiles(self, session: Session) -> list[Profile]:
        """GET /info."""
        reply = await self._http.get(
            eduvpn.api_call_url(session.endpoints.api_endpoint, "info"),
            headers=_bearer(session.access_token),
        )
        _check(reply)
        return eduvpn.parse_info(reply.body)

    async def obtain(self, session: Session, profile_id: str, *, prefer_tcp: bool) -> Connectable:
        """POST /connect: v3 issues a new key and certificate with every configuration."""
        reply = await self._http.post(
            eduvpn.api_call_url(session.endpoints.api_endpoint, "connect"),
            data={"profile_id": profile_id, "prefer_tcp": "yes" if prefer_tcp else "no"},
            headers={**_bearer(session.access_token), "Accept": _ACCEPT_CONFIG},
        )
        _check(reply)
        issued = eduvpn.parse_connect(
            reply.headers.get("content-type", ""), reply.headers.get("expires"), reply.body
        )
        if issued.protocol != "openvpn":
            raise ServerError(
                f"{session.label} issued a {issued.protocol} configuration;"
                " vpnd speaks OpenVPN only"
            )
        config, key = ovpnconfig.split_key(ovpnconfig.sanitize(issued.text))
        return Connectable(issued.protocol, config, key, issued.expires_at)

    async def messages(self, session: Session, languages: Sequence[str]) -> list[Message]:
        """API v3 has no messages."""
        return []

    async def release(self, session: Session) -> None:
        """POST /disconnect."""
        reply = await self._http.post(
            eduvpn.api_call_url(session.endpoints.api_endpoint, "disconnect"),
            data={},
            headers=_bearer(session.access_token),
        )
        _check(reply)


def _bearer(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


def _check(reply: Response) -> None:
    if not 200 <= reply.status < 300:
        raise eduvpn.api_error(reply.status, reply.body)
