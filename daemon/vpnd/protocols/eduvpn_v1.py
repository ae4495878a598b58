"""eduVPN / Let's Connect! API v1 documents and the OAuth implicit grant. Pure: no I/O.

API v1 (spec 003): `{base}/info.json` carries `"version": 1`, the
authorization endpoint, and under "api" one full URL per call
(create_config, profile_list, system_messages, user_messages). Replies use
the same `{"<call>": {"ok": …}}` envelope as API v2 (protocols.eduvpn_v2
reads it). `create_config` returns a complete OpenVPN configuration with the
client certificate and key inside; servers that also offer
`create_certificate` return a key pair as API v2's create_keypair does.

API v1 has no token endpoint: the access token comes back in the fragment
of the redirect URI (`response_type=token`, RFC 6749 section 4.2). A
browser does not send a fragment to the loopback listener, so the listener
serves `callback_page()`, whose script posts the fragment back;
`parse_fragment` checks it. No message this module produces contains a token
or a state value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from vpnd.errors import (
    AuthorizationFailed,
    CertificateRejected,
    InvalidArgument,
    ServerError,
)
from vpnd.protocols.documents import clean_text, load_json, resolved_https_url
from vpnd.protocols.eduvpn_v2 import (
    KEYPAIR_DISPLAY_NAME,
    PROFILE_LIST,
    ApiRequest,
    ConnectableConfig,
    KeyPair,
    LegacyProfile,
    Message,
    MessageCall,
    checked_profile_id,
    complete_config,
    config_text,
    inline_blocks,
    load_keypair,
    parse_keypair,
)
from vpnd.protocols.eduvpn_v2 import parse_messages as _parse_messages
from vpnd.protocols.eduvpn_v2 import parse_profile_list as _parse_profile_list
from vpnd.protocols.oauth import (
    MAX_EXPIRES_IN,
    MAX_TOKEN_LENGTH,
    SCOPE,
    VSCHAR_RE,
    Tokens,
    callback_fields,
    check_callback,
)

VERSION = 1

CREATE_CONFIG = "create_config"
CREATE_CERTIFICATE = "create_certificate"

CALLS = frozenset(
    {
        CREATE_CONFIG,
        CREATE_CERTIFICATE,
        "profile_config",
        PROFILE_LIST,
        "system_messages",
        "user_messages",
    }
)
"""The calls an API v1 info.json may name; others are ignored."""

REQUIRED_CALLS = frozenset({CREATE_CONFIG, PROFILE_LIST})
"""The calls without which vpnd cannot use an API v1 server."""

MAX_REDIRECT = 8192
"""Longest redirect URL or fragment accepted."""

CALLBACK_PATH = "/callback"
"""Where the loopback listener serves the page and receives the fragment."""


@dataclass(frozen=True)
class V1Endpoints:
    """Where an API v1 server's authorization endpoint and calls are."""

    authorization_endpoint: str
    calls: Mapping[str, str] = field(default_factory=dict)

    def url(self, call: str) -> str:
        """The URL of `call`; ServerError if the server does not offer it."""
        url = self.calls.get(call)
        if url is None:
            raise ServerError(f"the server does not offer the {call} call")
        return url


# --- discovery ----------------------------------------------------------------


class NotApiV1(ServerError):
    """info.json is readable but is not an API v1 document (another generation may fit)."""


def parse_info_json(body: bytes, document_url: str) -> V1Endpoints:
    """Read an API v1 info.json (`"version": 1`).

    Relative URLs are resolved against `document_url` (where the document was
    finally read from); every URL must end up https. NotApiV1 when the
    document is not for API v1; ServerError when it lacks the authorization endpoint,
    create_config or profile_list.
    """
    doc = load_json(body)
    if not isinstance(doc, dict):
        raise ServerError("the server's info.json is not a JSON object")
    version = doc.get("version")
    if version != VERSION or isinstance(version, bool):
        if version == 2 and not isinstance(version, bool):
            # Spec 003's "version": 2 document names no token endpoint, so
            # its code flow cannot be finished.
            raise NotApiV1(
                "the server describes an early form of eduVPN API v2 without a token"
                " endpoint, which vpnd cannot log in to"
            )
        raise NotApiV1('the server\'s info.json does not describe eduVPN API v1 ("version": 1)')
    api = doc.get("api")
    if not isinstance(api, dict):
        raise ServerError('the server\'s info.json has no "api" map')
    calls = {
        call: resolved_https_url(url, document_url, f"{call} URL")
        for call, url in api.items()
        if call in CALLS
    }
    missing = sorted(REQUIRED_CALLS - calls.keys())
    if missing:
        raise ServerError(f"the server's info.json names no {' and no '.join(missing)} URL")
    return V1Endpoints(
        authorization_endpoint=resolved_https_url(
            doc.get("authorization_endpoint"), document_url, "authorization_endpoint"
        ),
        calls=calls,
    )


# --- requests and replies -----------------------------------------------------


def profile_list_request(endpoints: V1Endpoints) -> ApiRequest:
    """GET profile_list."""
    return ApiRequest(PROFILE_LIST, "GET", endpoints.url(PROFILE_LIST))


def messages_request(endpoints: V1Endpoints, call: MessageCall) -> ApiRequest:
    """GET system_messages or user_messages."""
    return ApiRequest(call, "GET", endpoints.url(call))


def create_config_request(
    endpoints: V1Endpoints, profile_id: str, display_name: str = KEYPAIR_DISPLAY_NAME
) -> ApiRequest:
    """POST create_config with profile_id and display_name: a complete configuration."""
    name = clean_text(display_name, 100)
    if not name:
        raise InvalidArgument("a configuration's display name must hold printable characters")
    return ApiRequest(
        CREATE_CONFIG,
        "POST",
        endpoints.url(CREATE_CONFIG),
        {"display_name": name, "profile_id": checked_profile_id(profile_id)},
    )


def create_certificate_request(
    endpoints: V1Endpoints, display_name: str = KEYPAIR_DISPLAY_NAME
) -> ApiRequest:
    """POST create_certificate with display_name: a key pair for every profile."""
    name = clean_text(display_name, 100)
    if not name:
        raise InvalidArgument("a key pair's display name must hold printable characters")
    return ApiRequest(
        CREATE_CERTIFICATE, "POST", endpoints.url(CREATE_CERTIFICATE), {"display_name": name}
    )


def parse_profile_list(body: bytes) -> list[LegacyProfile]:
    """Read profile_list: profile_id, display_name, two_factor (the API v2 reader)."""
    return _parse_profile_list(body)


def parse_messages(call: MessageCall, body: bytes, preferred: Sequence[str] = ()) -> list[Message]:
    """Read system_messages or user_messages (the API v2 reader)."""
    return _parse_messages(call, body, preferred)


def parse_create_certificate(body: bytes, *, now: float) -> KeyPair:
    """Read a create_certificate reply and check the key pair (see eduvpn_v2.load_keypair)."""
    return parse_keypair(body, now=now, call=CREATE_CERTIFICATE)


def parse_create_config(content_type: str, body: bytes, *, now: float) -> ConnectableConfig:
    """Read a create_config reply: a configuration with `<cert>` and `<key>` inside.

    The pair is checked as a create_certificate pair would be
    (CertificateRejected) and taken out: the result carries the certificate
    in the text and the key apart. The session ends at the certificate's notAfter.
    """
    text = config_text(CREATE_CONFIG, content_type, body)
    certificates, keys = inline_blocks(text, "cert"), inline_blocks(text, "key")
    if len(certificates) != 1 or len(keys) != 1:
        raise CertificateRejected(
            "the server's configuration does not carry exactly one client certificate and key"
        )
    pair = load_keypair(certificates[0], keys[0], now=now, what="the server's create_config reply")
    return complete_config(text, pair)


# --- OAuth implicit grant -----------------------------------------------------

_EXPIRES_IN_RE = re.compile(r"[0-9]{1,10}")
_PATH_RE = re.compile(r"/[A-Za-z0-9_-]{1,64}")


def authorization_url(endpoint: str, *, client_id: str, redirect_uri: str, state: str) -> str:
    """The URL the user's browser opens for an implicit grant
    (response_type=token, scope=config). ServerError if the endpoint is not https."""
    if urlsplit(endpoint).scheme != "https":
        raise ServerError("the server's authorization endpoint is not an https URL")
    query = urlencode(
        {
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "response_type": "token",
            "scope": SCOPE,
            "state": state,
        }
    )
    # An endpoint may carry its own query (e.g. a routing parameter); keep it.
    separator = "&" if "?" in endpoint else "?"
    return endpoint + separator + query


def parse_fragment(fragment: str, expected_state: str, *, now: float) -> Tokens:
    """The access token from an implicit grant's redirect fragment
    (`access_token`, `token_type`, `expires_in`, `state`).

    The checks are the code flow's (protocols.oauth.check_callback): the
    state first, in constant time (StateMismatch when it is absent or
    differs), then the server's error (AuthorizationDenied for
    access_denied). AuthorizationFailed for any other error, no or a
    malformed token, a token type other than bearer, or a malformed
    expires_in. `now` is Unix time;
    the result has no refresh token (implicit grants have none).
    """
    if len(fragment) > MAX_REDIRECT:
        raise AuthorizationFailed("the authorization redirect is too long")
    fields = callback_fields(fragment.removeprefix("#"), what="redirect")
    check_callback(fields, expected_state, what="redirect", flow="implicit grant")
    token = fields.get("access_token")
    if not token:
        raise AuthorizationFailed("the authorization redirect carries no access token")
    if len(token) > MAX_TOKEN_LENGTH or not VSCHAR_RE.fullmatch(token):
        raise AuthorizationFailed("the authorization redirect carries a malformed access token")
    token_type = fields.get("token_type")
    if token_type is not None and token_type.lower() != "bearer":
        raise AuthorizationFailed(
            f"the server granted an unsupported token type {clean_text(token_type, 32)!r}"
        )
    expires_in = fields.get("expires_in")
    if expires_in is None:
        expires_at = 0.0
    elif _EXPIRES_IN_RE.fullmatch(expires_in) and int(expires_in) <= MAX_EXPIRES_IN:
        expires_at = now + int(expires_in)
    else:
        raise AuthorizationFailed("the authorization redirect has a malformed expires_in")
    return Tokens(access_token=token, refresh_token="", expires_at=expires_at)


def parse_redirect(url: str, expected_state: str, *, now: float) -> Tokens:
    """`parse_fragment` on the fragment of a whole redirect URL.

    A redirect without a fragment may carry an error in its query (servers
    that fail before issuing a token put it there); it is read the same way,
    so the caller always gets a named error.
    """
    if len(url) > MAX_REDIRECT:
        raise AuthorizationFailed("the authorization redirect is too long")
    before, has_fragment, fragment = url.partition("#")
    if not has_fragment:
        fragment = before.partition("?")[2]
    return parse_fragment(fragment, expected_state, now=now)


def callback_page(post_path: str = CALLBACK_PATH) -> str:
    """The page the loopback listener serves at the redirect URI.

    Its script posts the fragment (form-encoded, as the server wrote it) to
    `post_path` on the same origin, then removes it from the address bar and
    the history, and says whether it worked. The listener reads the POST body
    with `parse_fragment`. The page loads nothing else and sends no referrer.
    InvalidArgument if `post_path` is not a plain absolute path.
    """
    if not _PATH_RE.fullmatch(post_path):
        raise InvalidArgument("the callback path must be a plain absolute path like /callback")
    target = json.dumps(post_path)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="referrer" content="no-referrer">
<title>vpnd login</title>
</head>
<body>
<p id="status">Finishing the login…</p>
<noscript><p>This page needs JavaScript to hand the login to vpnd.</p></noscript>
<script>
(function () {{
  "use strict";
  var fragment = window.location.hash.replace(/^#/, "");
  var status = document.getElementById("status");
  // The token must not linger in the address bar or the history.
  window.history.replaceState(null, "", window.location.pathname);
  fetch({target}, {{
    method: "POST",
    headers: {{"Content-Type": "application/x-www-form-urlencoded"}},
    body: fragment,
    credentials: "omit",
    cache: "no-store",
    redirect: "error"
  }}).then(function (response) {{
    status.textContent = response.ok
      ? "You are logged in. You can close this window."
      : "The login did not work. You can close this window and try again.";
  }}, function () {{
    status.textContent = "The login could not be handed to vpnd. Try again.";
  }});
}})();
</script>
</body>
</html>
"""


CALLBACK_PAGE = callback_page()
"""`callback_page()` for the default path."""
