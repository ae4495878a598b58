"""Reading what a server sends, whatever its API generation. Pure: no I/O.

Bounded JSON decoding, text made safe to show a person, URL checks (https
only, base URLs as we store them, relative endpoints resolved), language
maps, HTTP dates. The eduVPN v1/v2/v3 modules and the OAuth module build on
these, so every generation bounds and cleans a server's documents the same
way.

Malformed server documents raise ServerError (a configuration text that
cannot be used raises ConfigRejected); a caller's malformed base URL raises
InvalidArgument. Messages name what is wrong in words any client can
show.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
import re
import unicodedata
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import TypeGuard
from urllib.parse import quote, urljoin, urlsplit

from vpnd.errors import ConfigRejected, InvalidArgument, ServerError

MAX_JSON_BYTES = 1 << 20
"""Largest JSON document accepted from a server."""

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects accepted in a server's JSON."""

MAX_URL_LENGTH = 2048
"""Longest base URL or endpoint URL accepted."""

MAX_CONFIG_BYTES = 1 << 20
"""Largest configuration accepted from a server (the OpenVPN allow-list bounds it further)."""

MAX_ERROR_TEXT = 200
"""How much of a server's error text is passed on to the user."""

MAX_DISPLAY_NAME = 200
"""Longest display name passed on (longer ones are cut)."""

MAX_LANGUAGES = 100
"""Most translations accepted in one display name."""

PROFILE_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
"""What a profile_id may look like (every eduVPN generation)."""

# BCP 47 tags as servers write them ("en", "en-US", "nl_NL", "sr-Latn-RS").
LANGUAGE_TAG_RE = re.compile(r"[A-Za-z]{1,8}(?:[_-][A-Za-z0-9]{1,8}){0,4}")
"""What a key of a language map may look like."""


# --- bounded JSON -------------------------------------------------------------

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


# --- configuration text ---------------------------------------------------------


def decode_config(body: bytes) -> str:
    """A configuration a server sent, as text: ConfigRejected when it is larger
    than MAX_CONFIG_BYTES, not UTF-8, or holds a NUL."""
    if len(body) > MAX_CONFIG_BYTES:
        raise ConfigRejected("the server sent a configuration larger than 1 MiB")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigRejected("the server sent a configuration that is not UTF-8 text") from None
    if "\0" in text:
        raise ConfigRejected("the server sent a configuration containing NUL characters")
    return text


# --- text shown to people -----------------------------------------------------


def clean_text(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    """Server-supplied text made safe to show: printable characters and
    spaces only (no control, format or line-separator characters, which could
    forge lines or reorder text), at most `limit` characters."""
    kept = "".join(ch for ch in text if ch.isprintable())
    return kept.strip()[:limit]


def is_language_map(value: object) -> TypeGuard[dict[str, str]]:
    """Whether `value` is a language map: at most MAX_LANGUAGES language tags, each to a text."""
    return (
        isinstance(value, dict)
        and len(value) <= MAX_LANGUAGES
        and all(
            isinstance(k, str) and LANGUAGE_TAG_RE.fullmatch(k) and isinstance(v, str)
            for k, v in value.items()
        )
    )


def translated_text(
    value: object, *, fallback: str, owner: str, field: str
) -> str | Mapping[str, str]:
    """A string or a language map ({"nl": "…", "en-US": "…"}) as a server sent
    it, each text cleaned and cut to MAX_DISPLAY_NAME; an absent or empty text
    becomes `fallback`.

    ServerError ("the server's <owner> has a <field> that is neither …") when
    the value is of another type, or a map has more than MAX_LANGUAGES keys or
    a key that is not a language tag. The caller picks a language later
    (protocols.lang.choose), so one stored document serves every user.
    """
    if value is None:
        return fallback
    if isinstance(value, str):
        return clean_text(value, MAX_DISPLAY_NAME) or fallback
    if is_language_map(value):
        return {k: clean_text(v, MAX_DISPLAY_NAME) or fallback for k, v in value.items()}
    raise ServerError(
        f"the server's {owner} has a {field} that is neither a "
        f"string nor a language map (at most {MAX_LANGUAGES} language tags)"
    )


# --- dates --------------------------------------------------------------------


def http_date(value: str | None) -> float:
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


# --- URLs ---------------------------------------------------------------------

# "mailto:x", "javascript:..." — a scheme without "//" that is not host:port.
_BARE_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?![0-9])")
_HOST_LABEL_RE = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
# Characters left as they are in a path; everything else is percent-encoded.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


def has_space_or_control(text: str) -> bool:
    """Whether `text` holds whitespace, control, format or surrogate characters."""
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
    if has_space_or_control(url):
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


def https_url(value: object, what: str) -> str:
    """`value` if it is an https URL with a host; ServerError naming `what` otherwise."""
    problem = f"the server's {what} is not an https URL"
    if not isinstance(value, str) or len(value) > MAX_URL_LENGTH or has_space_or_control(value):
        raise ServerError(problem)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError:
        raise ServerError(problem) from None
    if parts.scheme != "https" or not parts.hostname or "@" in parts.netloc:
        raise ServerError(problem)
    return value


def resolved_https_url(value: object, document_url: str, what: str) -> str:
    """An endpoint named in a document, as an absolute https URL.

    A relative reference ("/portal/api.php", "api.php", "//host/x") is
    resolved against `document_url`, the URL the document was finally read
    from (after redirects), as RFC 3986 section 5 says; an absolute one is
    taken as it is. Either way the result must be https: ServerError naming
    `what` otherwise (also when `document_url` itself is not https, so a
    relative endpoint can never inherit plain http).
    """
    if not isinstance(value, str) or not value or has_space_or_control(value):
        raise ServerError(f"the server's {what} is not an https URL")
    if len(value) > MAX_URL_LENGTH:
        raise ServerError(f"the server's {what} is not an https URL")
    try:
        if urlsplit(value).scheme:
            return https_url(value, what)
        absolute = urljoin(https_url(document_url, f"address of the document naming {what}"), value)
    except ValueError:
        raise ServerError(f"the server's {what} is not an https URL") from None
    return https_url(absolute, what)


def api_call_url(api_endpoint: str, call: str) -> str:
    """The URL of an API call (`info`, `connect`, `profile_list`, …) under an API endpoint."""
    return api_endpoint.rstrip("/") + "/" + call
