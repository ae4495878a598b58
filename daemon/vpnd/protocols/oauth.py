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

from vpnd.errors import (
    AuthorizationDenied,
    AuthorizationFailed,
    AuthorizationRequired,
    ServerError,
    StateMismatch,
    StorageFailed,
)
from vpnd.protocols.documents import clean_text, load_json

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
VSCHAR_RE = re.compile(r"[\x20-\x7e]+")
"""What an authorization code or a token may be made of (RFC 6749 appendix A)."""

_ERROR_CODE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")

_CALLBACK_ERRORS = {
    "access_denied": "the authorization was denied at the server",
    "invalid_request": "the server found the authorization request invalid",
    "unauthorized_client": "the server does not let this client ask for authorization",
    "unsupported_response_type": "the server does not support the {flow}",
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


def callback_fields(text: str, *, what: str = "callback") -> dict[str, str]:
    """The form fields of a callback's query (or a redirect's fragment).

    AuthorizationFailed ("the authorization <what> …") if there are too many
    or a field repeats.
    """
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, max_num_fields=32)
    except ValueError:
        raise AuthorizationFailed(f"the authorization {what} has too many fields") from None
    fields: dict[str, str] = {}
    for key, value in pairs:
        if key in fields:
            # Two values for one field would leave us guessing which one counts.
            raise AuthorizationFailed(
                f"the authorization {what} repeats the field {clean_text(key, 40)!r}"
            )
        fields[key] = value
    return fields


def check_callback(
    fields: Mapping[str, str],
    expected_state: str,
    *,
    what: str = "callback",
    flow: str = "code flow",
) -> None:
    """The checks every authorization callback passes before its grant is read.

    The state first, compared in constant time: a callback that does not carry
    our state was not sent for our request, whatever it says (StateMismatch).
    Then the server's `error`: AuthorizationDenied for access_denied,
    AuthorizationFailed for any other (`flow` names the login in the message
    for unsupported_response_type).
    """
    state = fields.get("state")
    if state is None or not hmac.compare_digest(
        state.encode("utf-8", "surrogatepass"), expected_state.encode("utf-8", "surrogatepass")
    ):
        raise StateMismatch(
            f"the authorization {what} does not belong to this login attempt (state mismatch); "
            "start the login again"
        )
    error = fields.get("error")
    if error is not None:
        # A server may echo our state anywhere; no message carries it on.
        echoed = bool(expected_state) and expected_state in error
        code = error if not echoed and _ERROR_CODE_RE.fullmatch(error) else "unknown error"
        reason = _CALLBACK_ERRORS.get(code, "the server refused the authorization")
        description = fields.get("error_description", "")
        if expected_state:
            description = description.replace(expected_state, "(state)")
        description = clean_text(description)
        message = f"{reason.format(flow=flow)} ({code})"
        if description:
            message += f": {description}"
        raise (AuthorizationDenied if code == "access_denied" else AuthorizationFailed)(message)


def parse_callback(query: str, expected_state: str) -> str:
    """The authorization code from the callback's query string.

    Raises AuthorizationFailed when the state does not match (StateMismatch,
    compared in constant time), when the server sent `error=...`
    (AuthorizationDenied for access_denied), or when there is no code.
    """
    if len(query) > MAX_CALLBACK_QUERY:
        raise AuthorizationFailed("the authorization callback is too long")
    fields = callback_fields(query.removeprefix("?"))
    check_callback(fields, expected_state)
    code_value = fields.get("code")
    if not code_value:
        raise AuthorizationFailed("the authorization callback carries no authorization code")
    if len(code_value) > MAX_CODE_LENGTH or not VSCHAR_RE.fullmatch(code_value):
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
    if len(value) > MAX_TOKEN_LENGTH or not VSCHAR_RE.fullmatch(value):
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
            f"the server refused the authorization{detail}; log in to the server again"
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
        raise StorageFailed("a stored authorization is damaged; log in to the server again")
    return Tokens(
        access_token=access_token, refresh_token=refresh_token, expires_at=float(expires_at)
    )
