"""eduVPN / Let's Connect! API v3 documents. Pure: no I/O.

Reads the discovery document, /info and /connect replies, and API errors.
Every malformed document raises ServerError with a message naming what is
wrong (a configuration text that cannot be used raises ConfigRejected);
URLs the server hands us must be https.

Everything a server sends is bounded: documents, nesting, lists and
strings. Text that reaches a person (display names, server messages) is
cleaned of control, format and separator characters, so a server can
neither forge lines in a terminal nor put a NUL on the bus.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from vpnd.errors import AuthorizationRequired, NotFound, ServerError

# The general helpers live in protocols.documents. Names that callers have
# long imported from this module are re-exported (`x as x`, which mypy's
# strict mode needs to count them as exports).
from vpnd.protocols.documents import MAX_CONFIG_BYTES as MAX_CONFIG_BYTES
from vpnd.protocols.documents import MAX_DISPLAY_NAME as MAX_DISPLAY_NAME
from vpnd.protocols.documents import MAX_ERROR_TEXT as MAX_ERROR_TEXT
from vpnd.protocols.documents import MAX_JSON_BYTES as MAX_JSON_BYTES
from vpnd.protocols.documents import MAX_JSON_DEPTH as MAX_JSON_DEPTH
from vpnd.protocols.documents import MAX_LANGUAGES as MAX_LANGUAGES
from vpnd.protocols.documents import MAX_URL_LENGTH as MAX_URL_LENGTH
from vpnd.protocols.documents import (
    PROFILE_ID_RE,
    decode_config,
    http_date,
    https_url,
    translated_text,
)
from vpnd.protocols.documents import api_call_url as api_call_url
from vpnd.protocols.documents import clean_text as clean_text
from vpnd.protocols.documents import load_json as load_json
from vpnd.protocols.documents import normalize_base_url as normalize_base_url

API_V3 = "http://eduvpn.org/api#3"
API_V2 = "http://eduvpn.org/api#2"

OPENVPN_PROFILE = "application/x-openvpn-profile"
WIREGUARD_PROFILE = "application/x-wireguard-profile"

MAX_PROFILES = 1000
"""Most profiles accepted in /info."""

MAX_LIST_ITEMS = 64
"""Most entries accepted in a profile's string lists (protocols, DNS domains)."""

MAX_LIST_ITEM = 253
"""Longest entry accepted in those lists (a DNS name's length)."""


@dataclass(frozen=True)
class Endpoints:
    """Where a server's API and OAuth endpoints are.

    API v3 and v2 name one API base; API v1 names each call's URL in `calls`
    and has no token endpoint ("")."""

    api_endpoint: str
    authorization_endpoint: str
    token_endpoint: str
    server_version: str = ""
    calls: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    """One VPN profile from /info. `display_name` as sent (string or language map)."""

    profile_id: str
    display_name: str | Mapping[str, str]
    vpn_proto_list: tuple[str, ...] = ("openvpn",)
    default_gateway: bool = False
    vpn_proto_transport_list: tuple[str, ...] = ()
    dns_search_domain_list: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class IssuedConfig:
    """A configuration from /connect. `expires_at`: Unix time from Expires (0 if absent)."""

    protocol: str  # "openvpn" or "wireguard"
    text: str
    expires_at: float


# --- discovery ----------------------------------------------------------------


def well_known_url(base_url: str) -> str:
    """`{base}/.well-known/vpn-user-portal`."""
    if not base_url.endswith("/"):
        base_url += "/"
    return base_url + ".well-known/vpn-user-portal"


# --- documents ----------------------------------------------------------------


class NotApiV3(ServerError):
    """The discovery document is readable but offers no API v3 (an older generation may fit)."""


def parse_well_known(body: bytes) -> Endpoints:
    """Read the discovery document; NotApiV3 when it offers no API v3, ServerError when
    it is malformed."""
    doc = load_json(body)
    if not isinstance(doc, dict):
        raise ServerError("the server's discovery document is not a JSON object")
    api = doc.get("api")
    if not isinstance(api, dict):
        raise ServerError('the server\'s discovery document has no "api" map')
    v3 = api.get(API_V3)
    if v3 is None:
        if API_V2 in api:
            raise NotApiV3("the server's discovery document offers eduVPN API v2 only, not v3")
        raise NotApiV3("the server does not offer eduVPN API v3")
    if not isinstance(v3, dict):
        raise ServerError("the server's API v3 entry is not a JSON object")
    version = doc.get("v")
    return Endpoints(
        api_endpoint=https_url(v3.get("api_endpoint"), "api_endpoint"),
        authorization_endpoint=https_url(
            v3.get("authorization_endpoint"), "authorization_endpoint"
        ),
        token_endpoint=https_url(v3.get("token_endpoint"), "token_endpoint"),
        server_version=clean_text(version, 64) if isinstance(version, str) else "",
    )


def _string_list(value: object, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ServerError(f'the server\'s profile list has a "{key}" that is not a list of strings')
    if len(value) > MAX_LIST_ITEMS or not all(
        0 < len(item) <= MAX_LIST_ITEM and item.isprintable() for item in value
    ):
        raise ServerError(
            f'the server\'s profile list has a "{key}" with more than {MAX_LIST_ITEMS} entries'
            " or an entry that is empty, too long or not printable"
        )
    return tuple(value)


def _profile(item: object) -> Profile:
    if not isinstance(item, dict):
        raise ServerError("the server's profile list has an entry that is not a JSON object")
    profile_id = item.get("profile_id")
    if not isinstance(profile_id, str) or not PROFILE_ID_RE.fullmatch(profile_id):
        raise ServerError(
            "the server's profile list has a profile_id that is missing or not made of "
            "letters, digits, '-', '_' and '.'"
        )
    default_gateway = item.get("default_gateway", False)
    if not isinstance(default_gateway, bool):
        raise ServerError(f'the server\'s profile "{profile_id}" has a non-boolean default_gateway')
    return Profile(
        profile_id=profile_id,
        display_name=translated_text(
            item.get("display_name"),
            fallback=profile_id,
            owner=f'profile "{profile_id}"',
            field="display_name",
        ),
        vpn_proto_list=_string_list(item.get("vpn_proto_list"), "vpn_proto_list", ("openvpn",)),
        default_gateway=default_gateway,
        vpn_proto_transport_list=_string_list(
            item.get("vpn_proto_transport_list"), "vpn_proto_transport_list", ()
        ),
        dns_search_domain_list=_string_list(
            item.get("dns_search_domain_list"), "dns_search_domain_list", ()
        ),
    )


def parse_info(body: bytes) -> list[Profile]:
    """Read /info: {"info": {"profile_list": [...]}}."""
    doc = load_json(body)
    info = doc.get("info") if isinstance(doc, dict) else None
    profile_list = info.get("profile_list") if isinstance(info, dict) else None
    if not isinstance(profile_list, list):
        raise ServerError('the server\'s /info reply has no "info.profile_list" list')
    return read_profiles(profile_list, _profile)


class _HasProfileId(Protocol):
    @property
    def profile_id(self) -> str: ...


_P = TypeVar("_P", bound=_HasProfileId)


def read_profiles(items: list[object], read: Callable[[object], _P]) -> list[_P]:
    """A server's list of profiles, each item read by `read`: ServerError when it holds
    more than MAX_PROFILES or names a profile_id twice (which one would be meant?)."""
    if len(items) > MAX_PROFILES:
        raise ServerError(f"the server's profile list has more than {MAX_PROFILES} profiles")
    profiles = [read(item) for item in items]
    ids = [p.profile_id for p in profiles]
    if len(set(ids)) != len(ids):
        raise ServerError("the server's profile list names the same profile_id twice")
    return profiles


_CONFIG_TYPES = {OPENVPN_PROFILE: "openvpn", WIREGUARD_PROFILE: "wireguard"}


def parse_connect(content_type: str, expires: str | None, body: bytes) -> IssuedConfig:
    """Read a successful /connect reply (content type picks the protocol,
    Expires is an HTTP date).

    An unknown content type raises ServerError; a body that is too large,
    not UTF-8 or holds a NUL raises ConfigRejected.
    """
    media_type = content_type.split(";", 1)[0].strip().lower()
    protocol = _CONFIG_TYPES.get(media_type)
    if protocol is None:
        raise ServerError(
            f"the server sent a configuration of unknown type {clean_text(media_type, 100)!r}"
        )
    return IssuedConfig(protocol=protocol, text=decode_config(body), expires_at=http_date(expires))


def _error_detail(body: bytes) -> str:
    """The server's `error` text, sanitized, as ": text" (or "" if there is none)."""
    try:
        doc = load_json(body)
    except ServerError:
        return ""
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, str):
        return ""
    text = clean_text(error)
    return f": {text}" if text else ""


def api_error(status: int, body: bytes) -> Exception:
    """The error for a non-2xx API reply, decided by status code:
    401 -> AuthorizationRequired, 404 -> NotFound (no such profile),
    400/406 -> ServerError with the server's message (sanitized, bounded),
    others -> ServerError. Returned, not raised."""
    detail = _error_detail(body)
    if status == 401:
        return AuthorizationRequired(
            "the server no longer accepts the saved authorization; log in to the server again"
        )
    if status == 404:
        return NotFound("the server has no such profile" + detail)
    if status == 400:
        return ServerError("the server rejected the request" + detail)
    if status == 406:
        return ServerError("the server offers no VPN protocol that vpnd can use" + detail)
    return ServerError(f"the server answered with HTTP status {status}" + detail)
