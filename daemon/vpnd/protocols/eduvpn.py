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

import datetime as _dt
import ipaddress
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from urllib.parse import quote, urlsplit

from vpnd.errors import (
    AuthorizationRequired,
    ConfigRejected,
    InvalidArgument,
    NotFound,
    ServerError,
)

API_V3 = "http://eduvpn.org/api#3"
API_V2 = "http://eduvpn.org/api#2"

OPENVPN_PROFILE = "application/x-openvpn-profile"
WIREGUARD_PROFILE = "application/x-wireguard-profile"

MAX_JSON_BYTES = 1 << 20
"""Largest JSON document accepted from a server."""

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects accepted in a server's JSON."""

MAX_URL_LENGTH = 2048
"""Longest base URL or endpoint URL accepted."""

MAX_CONFIG_BYTES = 1 << 20
"""Largest /connect body accepted (the OpenVPN allow-list bounds it further)."""

MAX_ERROR_TEXT = 200
"""How much of a server's error text is passed on to the user."""

MAX_PROFILES = 1000
"""Most profiles accepted in /info."""

MAX_DISPLAY_NAME = 200
"""Longest display name passed on (longer ones are cut)."""

MAX_LANGUAGES = 100
"""Most translations accepted in one display name."""

MAX_LIST_ITEMS = 64
"""Most entries accepted in a profile's string lists (protocols, DNS domains)."""

MAX_LIST_ITEM = 253
"""Longest entry accepted in those lists (a DNS name's length)."""


@dataclass(frozen=True)
class Endpoints:
    """Where a v3 server's API and OAuth endpoints are."""

    api_endpoint: str
    authorization_endpoint: str
    token_endpoint: str
    server_version: str = ""


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


# --- shared helpers (also used by the OAuth module) -------------------------

# A JSON string (closing quote optional, so an unterminated one ends the scan
# in one pass instead of being retried at every later quote) or a bracket.
_JSON_SCAN_RE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def load_json(body: bytes, *, what: str = "the server") -> object:
    """Decode a JSON document from a server within fixed bounds.

    At most MAX_JSON_BYTES and MAX_JSON_DEPTH levels of nesting (checked
    before the decoder runs, so a hostile document cannot exhaust the stack).
    Raises ServerError("invalid JSON from <what>") on anything else wrong.
    """
    if len(body) > MAX_JSON_BYTES:
        raise ServerError(f"{what} sent a JSON document larger than 1 MiB")
    depth = 0
    for match in _JSON_SCAN_RE.finditer(body):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise ServerError(f"invalid JSON from {what}: nested too deeply")
        elif token in (b"]", b"}"):
            depth -= 1
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ServerError(f"invalid JSON from {what}") from None


def clean_text(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    """Server-supplied text made safe to show: printable characters and
    spaces only (no control, format or line-separator characters, which could
    forge lines or reorder text), at most `limit` characters."""
    kept = "".join(ch for ch in text if ch.isprintable())
    return kept.strip()[:limit]


def api_call_url(api_endpoint: str, call: str) -> str:
    """The URL of an API call (`info`, `connect`, `disconnect`) under api_endpoint."""
    return api_endpoint.rstrip("/") + "/" + call


# --- base URLs ----------------------------------------------------------------

# "mailto:x", "javascript:..." — a scheme without "//" that is not host:port.
_BARE_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?![0-9])")
_HOST_LABEL_RE = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
# Characters left as they are in a path; everything else is percent-encoded.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


def _has_space_or_control(text: str) -> bool:
    return any(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in text)


def _normalize_host(host: str) -> str:
    """Lower-case host name, IPv4 address or bracketed IPv6 address; ValueError if bad."""
    if ":" in host:
        if "%" in host:
            # A zone id ("%eth0") means nothing to a remote server.
            raise ValueError("zone id in host")
        return "[" + ipaddress.IPv6Address(host).compressed + "]"
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    host = host.lower()
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if len(host) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        raise ValueError("bad host name")
    return host


def normalize_base_url(url: str) -> str:
    """A server base URL as we store it: https only, host required, no
    userinfo/query/fragment, lower-case host, trailing slash. Raises
    InvalidArgument (a caller's mistake) with a message naming the problem.

    A bare host name ("vpn.example.org", also with a port or path) means
    https on that host.
    """
    if not url:
        raise InvalidArgument("the server URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidArgument(f"the server URL is longer than {MAX_URL_LENGTH} characters")
    if _has_space_or_control(url):
        raise InvalidArgument("the server URL contains spaces or control characters")
    if "://" not in url:
        if _BARE_SCHEME_RE.match(url):
            raise InvalidArgument("the server URL must start with https://")
        url = "https://" + url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidArgument("the server URL is not a valid URL (check the port)") from None
    if parts.scheme == "http":
        raise InvalidArgument("plain http:// is not allowed for a VPN server; use https://")
    if parts.scheme != "https":
        raise InvalidArgument("the server URL must start with https://")
    if "@" in parts.netloc:
        raise InvalidArgument("the server URL must not contain a user name or password")
    if "?" in url or "#" in url:
        raise InvalidArgument("the server URL must not have a query (?…) or fragment (#…)")
    if not parts.hostname:
        raise InvalidArgument("the server URL has no host name")
    try:
        host = _normalize_host(parts.hostname)
    except (ValueError, UnicodeError):
        raise InvalidArgument("the server URL's host name is not valid") from None
    if port == 0:
        raise InvalidArgument("the server URL's port must be between 1 and 65535")
    port_part = f":{port}" if port is not None and port != 443 else ""
    path = quote(parts.path, safe=_PATH_SAFE) or "/"
    if not path.endswith("/"):
        path += "/"
    return f"https://{host}{port_part}{path}"


def well_known_url(base_url: str) -> str:
    """`{base}/.well-known/vpn-user-portal`."""
    if not base_url.endswith("/"):
        base_url += "/"
    return base_url + ".well-known/vpn-user-portal"


def _https_url(value: object, what: str) -> str:
    """`value` if it is an https URL with a host; ServerError naming `what` otherwise."""
    problem = f"the server's {what} is not an https URL"
    if not isinstance(value, str) or len(value) > MAX_URL_LENGTH or _has_space_or_control(value):
        raise ServerError(problem)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError:
        raise ServerError(problem) from None
    if parts.scheme != "https" or not parts.hostname or "@" in parts.netloc:
        raise ServerError(problem)
    return value


# --- documents ----------------------------------------------------------------


def parse_well_known(body: bytes) -> Endpoints:
    """Read the discovery document; v3 required (ServerError if only v2/none)."""
    doc = load_json(body)
    if not isinstance(doc, dict):
        raise ServerError("the server's discovery document is not a JSON object")
    api = doc.get("api")
    if not isinstance(api, dict):
        raise ServerError('the server\'s discovery document has no "api" map')
    v3 = api.get(API_V3)
    if v3 is None:
        if API_V2 in api:
            raise ServerError(
                "the server only speaks eduVPN API v2, which this version of vpnd "
                "does not support yet"
            )
        raise ServerError("the server does not offer eduVPN API v3")
    if not isinstance(v3, dict):
        raise ServerError("the server's API v3 entry is not a JSON object")
    version = doc.get("v")
    return Endpoints(
        api_endpoint=_https_url(v3.get("api_endpoint"), "api_endpoint"),
        authorization_endpoint=_https_url(
            v3.get("authorization_endpoint"), "authorization_endpoint"
        ),
        token_endpoint=_https_url(v3.get("token_endpoint"), "token_endpoint"),
        server_version=clean_text(version, 64) if isinstance(version, str) else "",
    )


_PROFILE_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")


# BCP 47 tags as servers write them ("en", "en-US", "nl_NL", "sr-Latn-RS").
_LANGUAGE_TAG_RE = re.compile(r"[A-Za-z]{1,8}(?:[_-][A-Za-z0-9]{1,8}){0,4}")


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


def _display_name(value: object, profile_id: str) -> str | Mapping[str, str]:
    if value is None:
        return profile_id
    if isinstance(value, str):
        return clean_text(value, MAX_DISPLAY_NAME) or profile_id
    if (
        isinstance(value, dict)
        and len(value) <= MAX_LANGUAGES
        and all(
            isinstance(k, str) and _LANGUAGE_TAG_RE.fullmatch(k) and isinstance(v, str)
            for k, v in value.items()
        )
    ):
        return {k: clean_text(v, MAX_DISPLAY_NAME) or profile_id for k, v in value.items()}
    raise ServerError(
        f'the server\'s profile "{profile_id}" has a display_name that is neither a '
        f"string nor a language map (at most {MAX_LANGUAGES} language tags)"
    )


def _profile(item: object) -> Profile:
    if not isinstance(item, dict):
        raise ServerError("the server's profile list has an entry that is not a JSON object")
    profile_id = item.get("profile_id")
    if not isinstance(profile_id, str) or not _PROFILE_ID_RE.fullmatch(profile_id):
        raise ServerError(
            "the server's profile list has a profile_id that is missing or not made of "
            "letters, digits, '-', '_' and '.'"
        )
    default_gateway = item.get("default_gateway", False)
    if not isinstance(default_gateway, bool):
        raise ServerError(f'the server\'s profile "{profile_id}" has a non-boolean default_gateway')
    return Profile(
        profile_id=profile_id,
        display_name=_display_name(item.get("display_name"), profile_id),
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
    if len(profile_list) > MAX_PROFILES:
        raise ServerError(f"the server's profile list has more than {MAX_PROFILES} profiles")
    profiles = [_profile(item) for item in profile_list]
    ids = [p.profile_id for p in profiles]
    if len(set(ids)) != len(ids):
        raise ServerError("the server's profile list names the same profile_id twice")
    return profiles


def _http_date(value: str | None) -> float:
    """Unix time of an HTTP date; 0 when absent, unparsable or before 1970."""
    if not value or len(value) > 100:
        return 0.0
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=_dt.UTC)
        stamp = when.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return 0.0
    return stamp if stamp > 0 else 0.0


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
    if len(body) > MAX_CONFIG_BYTES:
        raise ConfigRejected("the server sent a configuration larger than 1 MiB")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigRejected("the server sent a configuration that is not UTF-8 text") from None
    if "\0" in text:
        raise ConfigRejected("the server sent a configuration containing NUL characters")
    return IssuedConfig(protocol=protocol, text=text, expires_at=_http_date(expires))


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
            "the server no longer accepts the saved authorization; run `vpnctl login <server>`"
        )
    if status == 404:
        return NotFound("the server has no such profile" + detail)
    if status == 400:
        return ServerError("the server rejected the request" + detail)
    if status == 406:
        return ServerError("the server offers no VPN protocol that vpnd can use" + detail)
    return ServerError(f"the server answered with HTTP status {status}" + detail)
