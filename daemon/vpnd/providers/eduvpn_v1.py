"""eduVPN / Let's Connect! servers speaking API v1 (spec 003).

info.json names each call's URL. A server that offers create_certificate
and profile_config gets one key pair for all its profiles, kept sealed in
the server's vault until it expires (API v1 cannot ask whether the server
still accepts it); otherwise create_config hands out a configuration with a
new certificate and key at every connect. The login is the implicit grant.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from vpnd.errors import ProfileUnavailable
from vpnd.http import HttpClient
from vpnd.protocols import eduvpn_v1 as v1
from vpnd.protocols import eduvpn_v2 as v2
from vpnd.protocols.eduvpn import Endpoints, Profile
from vpnd.providers.base import Connectable, NotThisFamily, Session
from vpnd.providers.eduvpn_v2 import (
    connectable,
    fetch_messages,
    keep_keypair,
    send,
    stored_keypair,
)
from vpnd.store.store import ServerRecord

_JSON = {"Accept": "application/json"}


class EduVPNv1Provider:
    """API v1: profile_list, create_config or create_certificate + profile_config, messages."""

    kind = "eduvpn-v1"

    def __init__(self, http: HttpClient) -> None:
        self._http = http

    async def discover(self, base_url: str, record: ServerRecord | None = None) -> Endpoints:
        """Fetch info.json; NotThisFamily unless it is an API v1 document."""
        reply = await self._http.get(
            v2.info_json_url(base_url), headers=_JSON, follow_redirects=True
        )
        if reply.status != 200:
            raise NotThisFamily(
                f"{base_url} does not look like an eduVPN or Let's Connect! server"
                f" (its info.json answered HTTP {reply.status})"
            )
        try:
            found = v1.parse_info_json(reply.body, reply.url)
        except v1.NotApiV1 as exc:
            raise NotThisFamily(f"{base_url}: {exc.message}") from None
        return Endpoints(
            api_endpoint="",
            authorization_endpoint=found.authorization_endpoint,
            token_endpoint="",
            calls=found.calls,
        )

    async def profiles(self, session: Session) -> list[Profile]:
        """profile_list."""
        return [profile.as_profile() for profile in await self._profile_list(session)]

    async def obtain(self, session: Session, profile_id: str, *, prefer_tcp: bool) -> Connectable:
        """A configuration for the profile with the server's key pair, or a fresh one."""
        endpoints = _v1_endpoints(session)
        if not any(p.profile_id == profile_id for p in await self._profile_list(session)):
            raise ProfileUnavailable(
                f'{session.label} does not offer the profile "{profile_id}" to you (any more);'
                " choose another profile"
            )
        if {v1.CREATE_CERTIFICATE, "profile_config"} <= endpoints.calls.keys():
            keypair = await self._keypair(session, endpoints)
            reply = await send(
                self._http,
                session,
                v2.ApiRequest(
                    "profile_config",
                    "GET",
                    endpoints.url("profile_config"),
                    {"profile_id": v2.checked_profile_id(profile_id)},
                ),
            )
            text = v2.parse_profile_config(reply.headers.get("content-type", ""), reply.body)
            merged = v2.complete_config(text, keypair)
        else:
            reply = await send(self._http, session, v1.create_config_request(endpoints, profile_id))
            merged = v1.parse_create_config(
                reply.headers.get("content-type", ""), reply.body, now=time.time()
            )
        return connectable(merged, prefer_tcp=prefer_tcp)

    async def messages(self, session: Session, languages: Sequence[str]) -> list[v2.Message]:
        """system_messages and user_messages, where the server offers them."""
        endpoints = _v1_endpoints(session)
        calls = [
            v1.messages_request(endpoints, call)
            for call in ("system_messages", "user_messages")
            if call in endpoints.calls
        ]
        return await fetch_messages(self._http, session, calls, languages)

    async def release(self, session: Session) -> None:
        """API v1 keeps nothing per session."""

    async def _profile_list(self, session: Session) -> list[v2.LegacyProfile]:
        reply = await send(self._http, session, v1.profile_list_request(_v1_endpoints(session)))
        return v1.parse_profile_list(reply.body)

    async def _keypair(self, session: Session, endpoints: v1.V1Endpoints) -> v2.KeyPair:
        # API v1 cannot ask whether the server still accepts the certificate:
        # it is used until it expires.
        kept = stored_keypair(session)
        if kept is not None:
            return kept
        reply = await send(self._http, session, v1.create_certificate_request(endpoints))
        return keep_keypair(session, v1.parse_create_certificate(reply.body, now=time.time()))


def _v1_endpoints(session: Session) -> v1.V1Endpoints:
    return v1.V1Endpoints(session.endpoints.authorization_endpoint, session.endpoints.calls)
