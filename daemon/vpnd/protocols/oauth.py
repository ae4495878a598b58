"""OAuth 2.0 authorization-code flow with PKCE for a native client. Pure: no I/O.

Builds the authorization URL and token requests, checks the loopback
callback and reads token responses. No message this module produces
contains a token, a code or a state value.
"""

from __future__ import annotations

import hmac
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit

from vpnd.errors import AuthorizationFailed, AuthorizationRequired, ServerError, StorageFailed
from vpnd.protocols.eduvpn import clean_text, load_json

CLIENT_ID = "org.eduvpn.app.linux"
SCOPE = "config"

MAX_CALLBACK_QUERY = 8192
"""Longest callback query string accepted."""

MAX_CODE_LENGTH = 4096
"""Longest authorization code accepted."""

MAX_TOKEN_LENGTH = 16384
"""Longest access or refresh token accepted."""

MAX_TOKEN_REPLY_BYTES = 65536
"""Largest token endpoint reply accepted."""

MAX_EXPIRES_IN = 1 << 31
"""Longest token lifetime (seconds) taken as meant; more is a malformed reply."""

# Codes and tokens are opaque, but RFC 6749 limits them to printable ASCII.
_VSCHAR_RE = re.compile(r"[\x20-\x7e]+")
_ERROR_CODE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")

_CALLBACK_ERRORS = {
    "access_denied": "the authorization was denied at the server",
    "invalid_request": "the server found the authorization request invalid",
    "unauthorized_client": "the server does not let this client ask for authorization",
    "unsupported_response_type": "the server does not support the code flow",
    "invalid_scope": "the server does not grant the requested scope",
    "server_error": "the server failed while authorizing",
    "temporarily_unavailable": "the server cannot authorize right now; try again later",
}


@dataclass(frozen=True)
class Tokens:
    """What a token endpoint granted. `expires_at` is Unix time (0 if unknown).

    `refresh_token` is "" when the server granted none. The tokens are left
    out of repr() so that logging this object cannot leak them.
    """

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: float


def authorization_url(
    endpoint: str, *, client_id: str, redirect_uri: str, state: str, code_challenge: str
) -> str:
    """The URL the user's browser opens (response_type=code, scope=config, S256).

    Raises ServerError if the endpoint is not https.
    """
    if urlsplit(endpoint).scheme != "https":
        raise ServerError("the server's authorization endpoint is not an https URL")
    query = urlencode(
        {
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "scope": SCOPE,
            "state": state,
            "code_challenge_method": "S256",
            "code_challenge": code_challenge,
        }
    )
    # An endpoint may carry its own query (e.g. a routing parameter); keep it.
    separator = "&" if "?" in endpoint else "?"
    return endpoint + separator + query


def _single_fields(query: str) -> dict[str, str]:
    """The query's fields; AuthorizationFailed if malformed or a field repeats."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False, max_num_fields=32)
    except ValueError:
        raise AuthorizationFailed("the authorization callback has too many fields") from None
    fields: dict[str, str] = {}
    for key, value in pairs:
        if key in fields:
            # Two values for one field would leave us guessing which one counts.
            raise AuthorizationFailed(
                f"the authorization callback repeats the field {clean_text(key, 40)!r}"
            )
        fields[key] = value
    return fields


def parse_callback(query: str, expected_state: str) -> str:
    """The authorization code from the callback's query string.

    Raises AuthorizationFailed when the state does not match (compared in
    constant time), when the server sent `error=...`, or when there is no code.
    """
    if len(query) > MAX_CALLBACK_QUERY:
        raise AuthorizationFailed("the authorization callback is too long")
    fields = _single_fields(query.removeprefix("?"))
    state = fields.get("state")
    # The state is checked before anything else: a callback that does not
    # carry our state was not sent for our request, whatever it says.
    if state is None or not hmac.compare_digest(
        state.encode("utf-8", "surrogatepass"), expected_state.encode("utf-8", "surrogatepass")
    ):
        raise AuthorizationFailed(
            "the authorization callback does not belong to this login attempt (state mismatch); "
            "start the login again"
        )
    error = fields.get("error")
    if error is not None:
        code = error if _ERROR_CODE_RE.fullmatch(error) else "unknown error"
        reason = _CALLBACK_ERRORS.get(code, "the server refused the authorization")
        description = clean_text(fields.get("error_description", ""))
        message = f"{reason} ({code})"
        if description:
            message += f": {description}"
        raise AuthorizationFailed(message)
    code_value = fields.get("code")
    if not code_value:
        raise AuthorizationFailed("the authorization callback carries no authorization code")
    if len(code_value) > MAX_CODE_LENGTH or not _VSCHAR_RE.fullmatch(code_value):
        raise AuthorizationFailed("the authorization callback carries a malformed code")
    return code_value


def code_grant(code: str, *, verifier: str, redirect_uri: str, client_id: str) -> dict[str, str]:
    """Form fields for exchanging an authorization code."""
    return {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "client_id": client_id,
        "code_verifier": verifier,
    }


def refresh_grant(refresh_token: str, *, client_id: str) -> dict[str, str]:
    """Form fields for a refresh."""
    return {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": client_id,
    }


def _token_error_code(body: bytes) -> str:
    """The OAuth `error` code of an error reply, if it is a plain code."""
    try:
        doc = load_json(body, what="the token endpoint")
    except ServerError:
        return ""
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, str) and _ERROR_CODE_RE.fullmatch(error):
        return error
    return ""


def _token_string(value: object, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ServerError(f"the token endpoint's reply has no usable {key}")
    if len(value) > MAX_TOKEN_LENGTH or not _VSCHAR_RE.fullmatch(value):
        raise ServerError(f"the token endpoint's reply has a malformed {key}")
    return value


def parse_token_response(
    status: int, body: bytes, *, now: float, previous_refresh_token: str | None = None
) -> Tokens:
    """Read a token endpoint reply.

    400/401 with `invalid_grant` (or any 400/401) raises AuthorizationRequired;
    other non-200, invalid JSON or missing/ill-typed keys raise ServerError.
    A reply without refresh_token keeps `previous_refresh_token`.
    """
    if status in (400, 401):
        code = _token_error_code(body)
        detail = f" ({code})" if code else ""
        raise AuthorizationRequired(
            f"the server refused the authorization{detail}; run `vpnctl login <server>`"
        )
    if status != 200:
        raise ServerError(f"the token endpoint answered with HTTP status {status}")
    if len(body) > MAX_TOKEN_REPLY_BYTES:
        raise ServerError("the token endpoint's reply is too large")
    doc = load_json(body, what="the token endpoint")
    if not isinstance(doc, dict):
        raise ServerError("the token endpoint's reply is not a JSON object")
    access_token = _token_string(doc.get("access_token"), "access_token")
    token_type = doc.get("token_type")
    if token_type is not None and (
        not isinstance(token_type, str) or token_type.lower() != "bearer"
    ):
        shown = clean_text(token_type, 32) if isinstance(token_type, str) else "non-string"
        raise ServerError(f"the token endpoint granted an unsupported token type {shown!r}")
    expires_in = doc.get("expires_in")
    if expires_in is None:
        expires_at = 0.0
    elif (
        isinstance(expires_in, int)
        and not isinstance(expires_in, bool)
        and 0 <= expires_in <= MAX_EXPIRES_IN
    ):
        expires_at = now + expires_in
    else:
        raise ServerError("the token endpoint's reply has a malformed expires_in")
    if "refresh_token" in doc and doc["refresh_token"] is not None:
        refresh_token = _token_string(doc["refresh_token"], "refresh_token")
    else:
        refresh_token = previous_refresh_token or ""
    return Tokens(access_token=access_token, refresh_token=refresh_token, expires_at=expires_at)


def tokens_to_dict(tokens: Tokens) -> dict[str, object]:
    """A JSON-able form of tokens for the store."""
    return {
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token,
        "expires_at": tokens.expires_at,
    }


def tokens_from_dict(data: Mapping[str, object]) -> Tokens:
    """Inverse of tokens_to_dict; raises StorageFailed on a malformed record."""
    access_token = data.get("access_token")
    refresh_token = data.get("refresh_token")
    expires_at = data.get("expires_at")
    if (
        not isinstance(access_token, str)
        or not isinstance(refresh_token, str)
        or isinstance(expires_at, bool)
        or not isinstance(expires_at, int | float)
        or not math.isfinite(expires_at)
    ):
        raise StorageFailed("a stored authorization is damaged; run `vpnctl login <server>`")
    return Tokens(
        access_token=access_token, refresh_token=refresh_token, expires_at=float(expires_at)
    )
