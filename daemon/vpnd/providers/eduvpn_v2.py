"""eduVPN / Let's Connect! servers speaking API v2 (vpn-user-portal 2.x).

One key pair per server, created once with create_keypair and used for
every profile; before each connect the server is asked whether it still
accepts the certificate, and a new pair is obtained without the user's help
when it does not. The pair is kept sealed in the server's vault.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from urllib.parse import urlencode

from vpnd.errors import (
    AccountDisabled,
    CertificateRejected,
    ProfileUnavailable,
    TwoFactorRequired,
)
from vpnd.http import HttpClient, Response
from vpnd.protocols import eduvpn_v2 as v2
from vpnd.protocols import ovpnconfig
from vpnd.protocols.eduvpn import Endpoints, Profile
from vpnd.providers.base import Connectable, NotThisFamily, Session, all_of
from vpnd.store.store import ServerRecord

log = logging.getLogger("vpnd.providers")

KEYPAIR = "keypair"  # the vault record: {"certificate": PEM, "private_key": PEM}


class EduVPNv2Provider:
    """API v2: info.json with api#2, profile_list, user_info, create_keypair,
    check_certificate, profile_config, system_messages and user_messages."""

    kind = "eduvpn-v2"

    def __init__(self, http: HttpClient) -> None:
        self._http = http

    async def discover(self, base_url: str, record: ServerRecord | None = None) -> Endpoints:
        """Fetch info.json; NotThisFamily unless it announces API v2."""
        url = v2.info_json_url(base_url)
        reply = await self._http.get(url, headers=_JSON, follow_redirects=True)
        if reply.status != 200:
            raise NotThisFamily(
                f"{base_url} does not look like an eduVPN or Let's Connect! server"
                f" (its info.json answered HTTP {reply.status})"
            )
        try:
            return v2.parse_info_json(reply.body, reply.url)
        except v2.NotApiV2 as exc:
            raise NotThisFamily(f"{base_url}: {exc.message}") from None

    async def profiles(self, session: Session) -> list[Profile]:
        """profile_list."""
        return [profile.as_profile() for profile in await self._profile_list(session)]

    async def obtain(self, session: Session, profile_id: str, *, prefer_tcp: bool) -> Connectable:
        """The application flow's steps before a connect, in as few rounds as it allows:
        the profile and the user's account allow it, the kept key pair is still
        accepted, the profile's configuration; then, only if all that holds and
        the pair was refused, a new pair. The certificate goes into the config."""
        api = session.endpoints.api_endpoint
        profile_list, user_reply, kept, config_reply = await all_of(
            self._profile_list(session),
            self._send(session, v2.user_info_request(api)),
            self._accepted_keypair(session),
            self._send(session, v2.profile_config_request(api, profile_id)),
        )
        profile = next((p for p in profile_list if p.profile_id == profile_id), None)
        if profile is None:
            raise ProfileUnavailable(
                f'{session.label} does not offer the profile "{profile_id}" to you (any more);'
                " choose another profile"
            )
        try:
            v2.check_can_connect(profile, v2.parse_user_info(user_reply.body))
        except TwoFactorRequired as exc:
            # Enrolment happens in the server's web portal: say where it is.
            raise TwoFactorRequired(f"{exc.message} ({session.url})") from None
        text = v2.parse_profile_config(
            config_reply.headers.get("content-type", ""), config_reply.body
        )
        keypair = kept or await self._new_keypair(session)
        merged = v2.complete_config(text, keypair)
        return connectable(merged, prefer_tcp=prefer_tcp)

    async def messages(self, session: Session, languages: Sequence[str]) -> list[v2.Message]:
        """system_messages and user_messages, in the user's language where the server has it."""
        api = session.endpoints.api_endpoint
        calls = (v2.system_messages_request(api), v2.user_messages_request(api))
        return await fetch_messages(self._http, session, calls, languages)

    async def release(self, session: Session) -> None:
        """API v2 keeps nothing per session: the key pair outlives connections."""

    async def _profile_list(self, session: Session) -> list[v2.LegacyProfile]:
        reply = await self._send(session, v2.profile_list_request(session.endpoints.api_endpoint))
        return v2.parse_profile_list(reply.body)

    async def _accepted_keypair(self, session: Session) -> v2.KeyPair | None:
        """The kept key pair if the server still accepts it; None if there is none to use."""
        kept = stored_keypair(session)
        if kept is None:
            return None
        api = session.endpoints.api_endpoint
        reply = await self._send(session, v2.check_certificate_request(api, kept.common_name))
        status = v2.parse_check_certificate(reply.body)
        if status.is_valid:
            return kept
        if not status.renewable:
            raise AccountDisabled(status.problem)
        log.info("%s: %s; obtaining a new key pair", session.label, status.problem)
        return None

    async def _new_keypair(self, session: Session) -> v2.KeyPair:
        reply = await self._send(session, v2.create_keypair_request(session.endpoints.api_endpoint))
        return keep_keypair(session, v2.parse_keypair(reply.body, now=time.time()))

    async def _send(self, session: Session, request: v2.ApiRequest) -> Response:
        return await send(self._http, session, request)


def connectable(merged: v2.ConnectableConfig, *, prefer_tcp: bool) -> Connectable:
    """A merged API v1/v2 configuration, allow-listed, with its key apart; TCP first if asked."""
    config = ovpnconfig.sanitize(merged.text)
    if prefer_tcp:
        config = ovpnconfig.tcp_first(config)
    return Connectable(
        "openvpn", ovpnconfig.without(config, "key"), merged.private_key.encode(), merged.expires_at
    )


async def send(http: HttpClient, session: Session, request: v2.ApiRequest) -> Response:
    """Make one API v1/v2 call with the session's token; its named error on failure."""
    headers = {"Authorization": f"Bearer {session.access_token}"}
    if request.method == "POST":
        reply = await http.post(request.url, data=request.params, headers=headers)
    else:
        url = request.url
        if request.params:
            url += ("&" if "?" in url else "?") + urlencode(request.params)
        reply = await http.get(url, headers=headers)
    if not 200 <= reply.status < 300:
        raise v2.api_error(reply.status, request.call, reply.body)
    return reply


async def fetch_messages(
    http: HttpClient, session: Session, calls: Sequence[v2.ApiRequest], languages: Sequence[str]
) -> list[v2.Message]:
    """The messages of the system_messages/user_messages `calls`, in their order."""
    replies = await all_of(*(send(http, session, call) for call in calls))
    return [
        message
        for call, reply in zip(calls, replies, strict=True)
        for message in v2.parse_messages(call.call, reply.body, languages)  # type: ignore[arg-type]
    ]


_JSON = {"Accept": "application/json"}


def keep_keypair(session: Session, keypair: v2.KeyPair) -> v2.KeyPair:
    """Keep a new key pair for the server (sealed in its vault); returns it."""
    session.vault.set(
        KEYPAIR, {"certificate": keypair.certificate, "private_key": keypair.private_key}
    )
    return keypair


def stored_keypair(session: Session) -> v2.KeyPair | None:
    """The key pair kept for the server, if it is still usable here (it may have expired)."""
    stored = session.vault.get(KEYPAIR)
    if stored is None:
        return None
    try:
        return v2.load_keypair(
            stored.get("certificate"),
            stored.get("private_key"),
            now=time.time(),
            what="the key pair vpnd keeps for this server",
        )
    except CertificateRejected as exc:
        log.info("%s: %s; obtaining a new key pair", session.label, exc.message)
        return None
