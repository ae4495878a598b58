"""OpenVPN Access Server: the profile its REST API handed out at sign-in.

There is no API to ask at connect time: the server's login
(`auth.access_server`) downloaded one profile, kept sealed in the server's
vault, and a connect starts from it. An autologin profile carries the
client's certificate and key, and connects unattended (at boot too); a
userlogin profile asks for the user's password at every connect, which vpnd
answers when the user let it keep the password.
"""

from __future__ import annotations

from collections.abc import Sequence

from vpnd.auth.access_server import CREDENTIALS, PROFILE
from vpnd.errors import AuthorizationRequired, CertificateRejected, NotFound
from vpnd.protocols import eduvpn_v2, ovpnconfig
from vpnd.protocols.documents import normalize_base_url
from vpnd.protocols.eduvpn import Endpoints, Profile
from vpnd.protocols.eduvpn_v2 import Message
from vpnd.providers.base import Connectable, Session
from vpnd.store.store import ServerRecord

_NAMES = {
    "autologin": "Autologin profile (connects without asking)",
    "userlogin": "User-locked profile (asks for the password)",
}


class AccessServerProvider:
    """The kept profile of an OpenVPN Access Server."""

    kind = "access-server"

    async def discover(self, base_url: str, record: ServerRecord | None = None) -> Endpoints:
        """Nothing to fetch: the REST API lives at the base URL itself."""
        url = normalize_base_url(base_url)
        return Endpoints(api_endpoint=url, authorization_endpoint="", token_endpoint="")

    async def profiles(self, session: Session) -> list[Profile]:
        """The one profile signing in downloaded."""
        kind = _kept(session)["kind"]
        return [Profile(profile_id=kind, display_name=_NAMES.get(kind, kind))]

    async def obtain(self, session: Session, profile_id: str, *, prefer_tcp: bool) -> Connectable:
        """The kept profile, allow-listed, with its key apart."""
        kept = _kept(session)
        if profile_id != kept["kind"]:
            raise NotFound(
                f'{session.label} has no profile "{profile_id}" here; its profile is'
                f' "{kept["kind"]}"'
            )
        config = ovpnconfig.sanitize(kept["text"])
        user_pass = None
        if any(d.name == "auth-user-pass" for d in config.directives):
            # A userlogin profile: openvpn asks for the password at every
            # connect. A kept one answers; else the user is asked then.
            credentials = session.vault.get(CREDENTIALS) or {}
            username, password = credentials.get("username"), credentials.get("password")
            if isinstance(username, str) and username:
                user_pass = (username, password if isinstance(password, str) else "")
        if prefer_tcp:
            config = ovpnconfig.tcp_first(config)
        config, key = ovpnconfig.split_key(config)
        return Connectable("openvpn", config, key, _expiry(config), user_pass)

    async def messages(self, session: Session, languages: Sequence[str]) -> list[Message]:
        """Access Server has no messages for its clients."""
        return []

    async def release(self, session: Session) -> None:
        """Nothing is kept at the server per session."""


def _kept(session: Session) -> dict[str, str]:
    kept = session.vault.get(PROFILE)
    if (
        kept is None
        or not isinstance(kept.get("text"), str)
        or not isinstance(kept.get("kind"), str)
    ):
        raise AuthorizationRequired(f"vpnd has no profile of {session.label}; sign in to it")
    return {"kind": kept["kind"], "text": kept["text"]}


def _expiry(config: ovpnconfig.SanitizedConfig) -> float:
    """When the profile's client certificate ends (0 when there is none to read)."""
    certificate = ovpnconfig.inline_block(config, "cert")
    if certificate is None:
        return 0.0
    try:
        return eduvpn_v2.certificate_expiry(certificate)
    except CertificateRejected:
        return 0.0
