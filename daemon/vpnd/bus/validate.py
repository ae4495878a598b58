"""Checks of D-Bus arguments, before anything is looked up, asked or changed.

Each returns the value to use or raises InvalidArgument with a message for a
person. The bus has already checked the types; these check the contents.
"""

from __future__ import annotations

import re
from typing import Any

from dbus_fast import Variant

from vpnd.bus.spec import SERVERS_PATH
from vpnd.errors import InvalidArgument

MAX_TEXT = 2048
MAX_OPTIONS = 16

_PROFILE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# A POSIX locale or a LANGUAGE list: "nl_NL.UTF-8", "sr_RS@latin", "de_DE:fr".
_LOCALE = re.compile(r"[A-Za-z0-9_.@:+-]{0,128}")
_SERVER_PATH = re.compile(re.escape(SERVERS_PATH) + r"/[0-9a-f]{16}")

CONNECT_OPTIONS = {"prefer_tcp": "b"}
ADD_OPTIONS = {"kind": "s", "system": "b", "org_id": "s"}
# What AddServerWithOptions' kind may name: "eduvpn" finds the generation itself.
ADD_KINDS = {"eduvpn": None, "access-server": "access-server"}
SIGN_IN_FIELDS = frozenset(
    {"username", "password", "profile", "remember", "response", "token_url"}
)


def text(value: str, what: str, *, limit: int = MAX_TEXT) -> str:
    """A free-form string argument: bounded, no control characters."""
    if len(value) > limit:
        raise InvalidArgument(f"the {what} is longer than {limit} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidArgument(f"the {what} contains control characters")
    return value


def url(value: str) -> str:
    """A server URL as given (the manager normalizes it and insists on https)."""
    return text(value, "server URL")


def query(value: str) -> str:
    """A server's URL, host name or part of its URL."""
    value = text(value, "server name").strip()
    if not value:
        raise InvalidArgument("name a server by its URL or host name")
    return value


def locale(value: str) -> str:
    """A locale for display names, "" for the server's default."""
    if not _LOCALE.fullmatch(value):
        raise InvalidArgument(
            f"{value[:40]!r} is not a locale (like nl_NL.UTF-8, or empty for the default)"
        )
    return value


def profile_id(value: str) -> str:
    """A profile id as servers name them."""
    if not _PROFILE_ID.fullmatch(value):
        raise InvalidArgument("a profile id is 1 to 64 letters, digits, '.', '_' or '-'")
    return value


def _options(options: dict[str, Any], known: dict[str, str], what: str) -> dict[str, Any]:
    """The values of an a{sv} of options, each of a known name and type."""
    if len(options) > MAX_OPTIONS:
        raise InvalidArgument(f"more than {MAX_OPTIONS} {what} options")
    values = {}
    for key, value in options.items():
        expected = known.get(key)
        if expected is None or not isinstance(value, Variant) or value.signature != expected:
            listed = ", ".join(f"{k} ({s})" for k, s in known.items())
            raise InvalidArgument(f"unknown {what} option {key[:40]!r} (known: {listed})")
        values[key] = value.value
    return values


def connect_options(options: dict[str, Any]) -> bool:
    """Connect's options; returns prefer_tcp."""
    return bool(_options(options, CONNECT_OPTIONS, "connect").get("prefer_tcp", False))


def add_options(options: dict[str, Any]) -> tuple[str | None, bool]:
    """AddServerWithOptions' options; returns the server kind (None: find out) and system."""
    values = _options(options, ADD_OPTIONS, "add")
    kind = values.get("kind", "eduvpn")
    if kind not in ADD_KINDS:
        raise InvalidArgument(f"a server kind is one of {', '.join(ADD_KINDS)}")
    return ADD_KINDS[kind], bool(values.get("system", False))


def add_org_id(options: dict[str, Any]) -> str:
    """AddServerWithOptions' org_id: an organization of the discovery list ("" for none)."""
    value = _options(options, ADD_OPTIONS, "add").get("org_id", "")
    return text(value, "organization id", limit=256).strip() if value else ""


def location(value: str) -> str:
    """SetLocation's argument: a country code or a base URL ("" for the home server)."""
    return text(value, "location", limit=2048).strip()


DISCOVER_OPTIONS = {"kinds": "as", "language": "s", "limit": "u"}
DISCOVER_KINDS = ("institute-access", "organization", "secure-internet")
MAX_SEARCH_TEXT = 200
DEFAULT_DISCOVER_LIMIT = 50
MAX_DISCOVER_RESULTS = 5000


def search_text(value: str) -> str:
    """Discover's search text: bounded, no control characters; "" lists everything."""
    return text(value, "search text", limit=MAX_SEARCH_TEXT).strip()


def discover_options(options: dict[str, Any]) -> tuple[frozenset[str] | None, str, int]:
    """Discover's options; returns the kinds (None: all), the locale and the limit."""
    values = _options(options, DISCOVER_OPTIONS, "discover")
    kinds = None
    if "kinds" in values:
        kinds = frozenset(values["kinds"])
        if not kinds or not kinds <= set(DISCOVER_KINDS):
            raise InvalidArgument(f"kinds name one or more of {', '.join(DISCOVER_KINDS)}")
    language = locale(values.get("language", ""))
    limit = values.get("limit", DEFAULT_DISCOVER_LIMIT)
    if limit > MAX_DISCOVER_RESULTS:
        raise InvalidArgument(
            f"limit is at most {MAX_DISCOVER_RESULTS} (0 asks for every result up to that)"
        )
    return kinds, language, limit or MAX_DISCOVER_RESULTS


def sign_in_fields(fields: dict[str, str]) -> dict[str, str]:
    """SignIn's fields: known names, bounded values without control characters."""
    unknown = sorted(set(fields) - SIGN_IN_FIELDS)
    if unknown:
        known = ", ".join(sorted(SIGN_IN_FIELDS))
        raise InvalidArgument(f"unknown sign-in field {unknown[0][:40]!r} (known: {known})")
    return {key: text(value, f"sign-in field {key}", limit=4096) for key, value in fields.items()}


#: Answer's field names: what openvpn's questions ask (vpnd.protocols.credentials).
ANSWER_FIELDS = frozenset({"username", "password", "response"})


def answer_values(values: dict[str, str]) -> dict[str, str]:
    """Answer's values: known field names, bounded values without control characters.

    The message names a field, never what was typed in it."""
    unknown = sorted(set(values) - ANSWER_FIELDS)
    if unknown:
        known = ", ".join(sorted(ANSWER_FIELDS))
        raise InvalidArgument(f"unknown answer field {unknown[0][:40]!r} (known: {known})")
    return {
        key: text(value, f"the answer field {key}", limit=1024) for key, value in values.items()
    }


def server_path(value: str) -> str:
    """The object path of a server."""
    if not _SERVER_PATH.fullmatch(value):
        raise InvalidArgument(f"{value[:80]!r} is not the object path of a vpnd server")
    return value
