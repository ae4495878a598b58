"""OpenVPN Access Server: the REST profile API and its challenges. Pure: no I/O.

An Access Server hands out OpenVPN profiles at `{base}/rest/GetUserlogin`
(a profile that asks for the user name and password when connecting) and
`{base}/rest/GetAutologin` (one with a client certificate for unattended
use, if the user holds the autologin permission). Both are GET requests
with HTTP Basic authentication. A success is the profile text
(`application/x-openvpn-profile`); a failure is a small XML document
(`text/xml`):

    <Error><Type>…</Type><Synopsis>…</Synopsis><Message>…</Message></Error>

The `Message` tells the cases apart: `AUTH_FAILED: …` (wrong credentials),
`NEED_AUTOLOGIN: …` (no autologin permission), an enrolment notice
(two-factor authentication not set up), `Ovpn-WebAuth: provider,flags`
(the server wants a web/SAML login) and `CRV1:…`, a dynamic challenge: a
question the user answers, after which the client sends the request again
with the user name from the challenge and the password
`CRV1::<state_id>::<response>`. openvpn itself uses the same CRV1 format on
its management interface, and `SCRV1:<b64 password>:<b64 response>` for a
static challenge (`static-challenge` in a profile), so those builders live
here too.

Requests are built as values (`ProfileRequest`) and replies read from
status, Content-Type and body; the caller does the HTTP. A malformed reply
raises ServerError (a profile that cannot be used raises ConfigRejected); a
caller's malformed argument raises InvalidArgument; every error document
maps to a named error (see `parse_error_reply`).
"""

from __future__ import annotations

import base64
import binascii
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from vpnd.errors import (
    AccessServerFailure,
    AuthorizationRequired,
    AutologinNotPermitted,
    CredentialsRejected,
    InvalidArgument,
    RestCallFailed,
    ServerError,
    TwoFactorRequired,
    VpndError,
    WebAuthRequired,
)
from vpnd.protocols.documents import (
    clean_text,
    decode_config,
    has_space_or_control,
    normalize_base_url,
)

ProfileKind = Literal["userlogin", "autologin"]
"""Which profile to ask for: `userlogin` asks for the user name and password
when connecting; `autologin` connects unattended (client certificate only)."""

METHODS: Mapping[ProfileKind, str] = {"userlogin": "GetUserlogin", "autologin": "GetAutologin"}
"""The REST method that hands out each kind of profile."""

PROFILE_CONTENT_TYPE = "application/x-openvpn-profile"
"""The Content-Type of a successful reply."""

MAX_ERROR_XML = 64 * 1024
"""Largest error document accepted (the ones the server sends are a few hundred bytes)."""

MAX_DEVICE_ID = 128
"""Longest deviceID sent."""

MAX_USERNAME = 256
"""Longest user name accepted, typed or named by a challenge."""

MAX_PASSWORD = 4096
"""Longest password accepted (a CRV1 or SCRV1 answer counts as a password)."""

MAX_RESPONSE = 1024
"""Longest answer to a challenge accepted."""

MAX_CHALLENGE = 4096
"""Longest CRV1 challenge accepted, as a whole."""

MAX_STATE_ID = 256
"""Longest CRV1 state id accepted."""

MAX_CHALLENGE_TEXT = 500
"""How much of a challenge's question is passed on (longer ones are cut)."""

MAX_WEBAUTH_FLAGS = 16
"""Most flags kept from an Ovpn-WebAuth error."""

# The state id goes back to the server inside "CRV1::<state_id>::<response>",
# so it must not hold the separator, blanks or anything unprintable.
_STATE_ID_RE = re.compile(rf"[!-9;-~]{{1,{MAX_STATE_ID}}}")
_WEBAUTH_PREFIX = "Ovpn-WebAuth:"
_CRV1_PREFIX = "CRV1:"
_XML_TYPES = frozenset({"text/xml", "application/xml"})


# --- values -------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """A user name and password for HTTP Basic authentication (the password is
    left out of repr() so that logging cannot leak it)."""

    username: str
    password: str = field(repr=False)

    def authorization(self) -> str:
        """The `Authorization` header value for these credentials."""
        return basic_authorization(self.username, self.password)


@dataclass(frozen=True)
class SessionToken:
    """A session the server issued earlier, sent back (as `VPN-Session-User` and
    `VPN-Session-Token`) so that the user is not asked for two-factor
    authentication again."""

    user: str
    token: str = field(repr=False)


@dataclass(frozen=True)
class ProfileRequest:
    """One GET to make: `url` with `headers` (which hold the credentials, so
    they are left out of repr())."""

    kind: ProfileKind
    url: str
    headers: Mapping[str, str] = field(repr=False)


@dataclass(frozen=True)
class DynamicChallenge:
    """A CRV1 challenge: a question (`text`) for the user.

    `echo`: show the answer as the user types it (flag E). `response_required`:
    an empty answer will not do (flag R). `username` is the one to send with
    the answer. The state id ties the answer to this challenge; it is left out
    of repr() because it stands for a half-finished login.
    """

    state_id: str = field(repr=False)
    username: str
    text: str
    echo: bool = False
    response_required: bool = False

    def answer(self, response: str) -> Credentials:
        """The credentials that carry `response` back to the server.

        InvalidArgument when the challenge requires an answer and `response`
        is empty, or when `response` is too long or holds control characters.
        """
        if self.response_required and not response:
            raise InvalidArgument("the server requires an answer to its question; enter one")
        return Credentials(self.username, crv1_password(self.state_id, response))


class ChallengeRequired(AuthorizationRequired):
    """The server asks a question (a CRV1 challenge) before it hands out the
    profile; `challenge` carries it."""

    def __init__(self, message: str, *, challenge: DynamicChallenge) -> None:
        super().__init__(message)
        self.challenge = challenge


# --- requests -----------------------------------------------------------------


def checked_device_id(device_id: str) -> str:
    """`device_id` if it can name this machine to the server; InvalidArgument otherwise.

    It must be stable (the server ties the profile to it), so it is taken as
    given: 1 to MAX_DEVICE_ID printable characters without blanks.
    """
    if (
        not 0 < len(device_id) <= MAX_DEVICE_ID
        or has_space_or_control(device_id)
        or not device_id.isprintable()
    ):
        raise InvalidArgument(
            f"a device id is 1 to {MAX_DEVICE_ID} printable characters without spaces"
        )
    return device_id


def profile_url(base_url: str, kind: ProfileKind, device_id: str) -> str:
    """`{base}/rest/GetUserlogin` or `…/GetAutologin`, asking for TLS Crypt v2
    (`tls-cryptv2=1`), a profile ready to import (`action=import`) for
    `device_id`.

    InvalidArgument when `base_url` is not an https URL (a bare host name
    means https) or `device_id` is not a device id.
    """
    query = urlencode(
        {"tls-cryptv2": "1", "action": "import", "deviceID": checked_device_id(device_id)},
        quote_via=quote,
    )
    return f"{normalize_base_url(base_url)}rest/{METHODS[kind]}?{query}"


#: What a token link may start with: the address OpenVPN clients register for imports.
TOKEN_LINK_PREFIXES = ("openvpn://import-profile/", "openvpn://import/")
TOKEN_METHOD = "GetProfileViaToken"  # noqa: S105 (a REST method's name)
_TOKEN = re.compile(r"[A-Za-z0-9_-]{8,256}")


def token_profile_url(base_url: str, link: str) -> str:
    """The download URL of a token link the server's web login hands out
    (`openvpn://import-profile/https://host/rest/GetProfileViaToken?token=…`,
    or the same without the prefix), for a server at `base_url`.

    A token link replaces the user name and password where the server logs
    users in on its web page (SAML). InvalidArgument unless it is an https
    link to this same server's GetProfileViaToken with one plain token.
    """
    base = urlsplit(normalize_base_url(base_url))
    text = link.strip()
    for prefix in TOKEN_LINK_PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    if len(text) > 2048 or not text.isprintable():
        raise InvalidArgument("the profile link is not a link the server's web page gives")
    try:
        parts = urlsplit(text)
        same_server = parts.scheme == "https" and (parts.hostname, parts.port or 443) == (
            base.hostname,
            base.port or 443,
        )
    except ValueError:
        same_server = False
    if not same_server:
        raise InvalidArgument(
            f"the profile link must point to {base.netloc} over https, as the server's web page"
            " gives it"
        )
    query = parse_qsl(parts.query, keep_blank_values=True)
    tokens = [value for key, value in query if key == "token"]
    if not parts.path.endswith(f"/rest/{TOKEN_METHOD}") or len(tokens) != 1:
        raise InvalidArgument(
            "the profile link is not an Access Server profile link (…/rest/GetProfileViaToken"
            "?token=…)"
        )
    if not _TOKEN.fullmatch(tokens[0]):
        raise InvalidArgument("the profile link's token is not one the server hands out")
    return f"{normalize_base_url(base_url)}rest/{TOKEN_METHOD}?{urlencode({'token': tokens[0]})}"


def _check_credential_text(value: str, what: str, limit: int) -> None:
    if len(value) > limit:
        raise InvalidArgument(f"the {what} is longer than {limit} characters")
    # RFC 7617 forbids control characters in both parts; the server could not
    # compare them with what its user database holds anyway.
    if not value.isprintable():
        raise InvalidArgument(f"the {what} contains control characters; type it again")


def basic_authorization(username: str, password: str) -> str:
    """The HTTP Basic `Authorization` header value (RFC 7617) for `username`
    and `password`, encoded as UTF-8.

    InvalidArgument when the user name is empty or holds a ':' (Basic
    authentication cannot carry one), or either holds control characters or
    is longer than MAX_USERNAME / MAX_PASSWORD.
    """
    if not username:
        raise InvalidArgument("the user name is empty; enter your user name for the server")
    if ":" in username:
        raise InvalidArgument("the user name contains ':', which the server cannot receive")
    _check_credential_text(username, "user name", MAX_USERNAME)
    _check_credential_text(password, "password", MAX_PASSWORD)
    # Sent as typed, without Unicode normalization: the server compares the
    # bytes with its user database, as it does for any other client.
    pair = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def profile_request(
    base_url: str,
    kind: ProfileKind,
    *,
    device_id: str,
    credentials: Credentials,
    session: SessionToken | None = None,
) -> ProfileRequest:
    """The GET that downloads a profile of `kind` with `credentials` (which may
    be the answer to a challenge, see DynamicChallenge.answer).

    `session`, when the server issued one, is sent along so that the user is
    not asked for two-factor authentication again. InvalidArgument as for
    profile_url and basic_authorization.
    """
    headers = {"Authorization": credentials.authorization()}
    if session is not None:
        _check_credential_text(session.user, "session user", MAX_USERNAME)
        _check_credential_text(session.token, "session token", MAX_PASSWORD)
        headers["VPN-Session-User"] = _b64(session.user)
        headers["VPN-Session-Token"] = _b64(session.token)
    return ProfileRequest(kind, profile_url(base_url, kind, device_id), headers)


# --- challenges ---------------------------------------------------------------


def _bad_challenge(problem: str) -> ServerError:
    return ServerError(
        f"the server sent a challenge vpnd cannot read ({problem}); try again, and tell"
        " the server's administrators if it keeps happening"
    )


def _decode_b64_text(value: str) -> str:
    """UTF-8 text from base64 (padding optional); ValueError if it is neither."""
    if len(value) % 4:
        value += "=" * (-len(value) % 4)
    try:
        return base64.b64decode(value.encode("ascii"), validate=True).decode("utf-8")
    except (UnicodeError, binascii.Error):
        raise ValueError("not base64 of UTF-8 text") from None


def parse_crv1(message: str) -> DynamicChallenge:
    """Read `CRV1:<flags>:<state_id>:<base64 username>:<challenge text>`.

    Flags are comma-separated: E (echo the answer), R (an answer is
    required); others are ignored, as openvpn does. The text may hold ':'.
    ServerError when a part is missing, too long or malformed (the username
    must be base64 of printable UTF-8 text); the question is cleaned and cut
    to MAX_CHALLENGE_TEXT.
    """
    if len(message) > MAX_CHALLENGE:
        raise _bad_challenge(f"longer than {MAX_CHALLENGE} characters")
    parts = message.split(":", 4)
    if len(parts) != 5 or parts[0] != "CRV1":
        raise _bad_challenge("it is not a CRV1 challenge with flags, state, user and question")
    _, flags_text, state_id, user_b64, text = parts
    flags = {flag.strip() for flag in flags_text.split(",")}
    if not _STATE_ID_RE.fullmatch(state_id):
        raise _bad_challenge("its state is missing or malformed")
    if len(user_b64) > 2 * MAX_USERNAME:
        raise _bad_challenge("its user name is too long")
    try:
        username = _decode_b64_text(user_b64)
    except ValueError:
        raise _bad_challenge("its user name is not base64 of UTF-8 text") from None
    if not username or len(username) > MAX_USERNAME or not username.isprintable():
        raise _bad_challenge("its user name is empty, too long or unprintable")
    return DynamicChallenge(
        state_id=state_id,
        username=username,
        text=clean_text(text, MAX_CHALLENGE_TEXT),
        echo="E" in flags,
        response_required="R" in flags,
    )


def crv1_message(challenge: DynamicChallenge) -> str:
    """The CRV1 challenge text for `challenge` (what a server sends; for test servers)."""
    flags = ",".join(
        flag for flag, on in (("R", challenge.response_required), ("E", challenge.echo)) if on
    )
    return f"CRV1:{flags}:{challenge.state_id}:{_b64(challenge.username)}:{challenge.text}"


def crv1_password(state_id: str, response: str) -> str:
    """`CRV1::<state_id>::<response>`: the password that answers a dynamic challenge.

    InvalidArgument when `state_id` is not one a challenge could carry, or
    `response` is longer than MAX_RESPONSE or holds control characters.
    """
    if not _STATE_ID_RE.fullmatch(state_id):
        raise InvalidArgument("the challenge's state is malformed; ask the server again")
    _check_credential_text(response, "answer", MAX_RESPONSE)
    return f"CRV1::{state_id}::{response}"


def parse_crv1_password(password: str) -> tuple[str, str] | None:
    """(state_id, response) of a `CRV1::<state_id>::<response>` password; None
    for any other password. For test servers and logs that must not show answers."""
    if not password.startswith("CRV1::"):
        return None
    state_id, separator, response = password[len("CRV1::") :].partition("::")
    if not separator or not _STATE_ID_RE.fullmatch(state_id):
        return None
    return state_id, response


def scrv1_password(password: str, response: str) -> str:
    """`SCRV1:<base64 password>:<base64 response>`: the password openvpn sends
    for a profile with a static challenge (`static-challenge`).

    InvalidArgument when either is too long or holds control characters.
    """
    _check_credential_text(password, "password", MAX_PASSWORD)
    _check_credential_text(response, "answer", MAX_RESPONSE)
    return f"SCRV1:{_b64(password)}:{_b64(response)}"


# --- replies ------------------------------------------------------------------


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _looks_like_xml(body: bytes) -> bool:
    start = body[:64].removeprefix(b"\xef\xbb\xbf").lstrip()
    return start.startswith((b"<?xml", b"<Error"))


def _read_error_xml(body: bytes) -> tuple[str, str]:
    """(Type, Message) of an error document, both stripped; ServerError if it is not one.

    Parsed with the standard library's expat-based ElementTree, which
    expands entities declared in a DTD: a few hundred bytes of nested
    entities ("billion laughs") can grow into gigabytes, and external
    entities could make the parser look elsewhere. An Access Server's error
    document has no DTD, so anything declaring one is refused before the
    parser sees it. The text is decoded first and the parser fed the
    decoded text, so that an encoding declaration cannot hide a declaration
    from that check (expat reads a str as UTF-8 whatever the document says).
    """
    if len(body) > MAX_ERROR_XML:
        raise ServerError(
            f"the server sent an error document larger than {MAX_ERROR_XML // 1024} KiB"
        )
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ServerError("the server sent an error document that is not UTF-8 text") from None
    lowered = text.lower()
    if "<!doctype" in lowered or "<!entity" in lowered:
        raise ServerError(
            "the server sent an error document with a document type declaration, which vpnd"
            " refuses; tell the server's administrators"
        )
    try:
        root = ET.fromstring(text)  # noqa: S314 -- no DTD can reach here, see above
    except (ET.ParseError, ValueError):
        raise ServerError("the server sent an error document that is not well-formed XML") from None
    if root.tag != "Error":
        raise ServerError("the server sent an XML document that is not an Access Server error")
    return (root.findtext("Type") or "").strip(), (root.findtext("Message") or "").strip()


def _web_auth_required(message: str) -> WebAuthRequired:
    provider, _, flags_text = message[len(_WEBAUTH_PREFIX) :].partition(",")
    cleaned = (clean_text(flag, 32) for flag in flags_text.split(",")[:MAX_WEBAUTH_FLAGS])
    flags = tuple(flag for flag in cleaned if flag)
    return WebAuthRequired(
        "the server logs users in on its web page (SAML), not with a user name and password:"
        " sign in there in a browser and use the profile link it offers for an OpenVPN app",
        provider=clean_text(provider, 100),
        flags=flags,
    )


def _challenge_required(message: str) -> ChallengeRequired:
    challenge = parse_crv1(message)
    question = challenge.text or "(the server sent no question)"
    return ChallengeRequired(
        f"the server asks a further question before it hands out the profile: {question};"
        " answer it to continue",
        challenge=challenge,
    )


_AGAIN = "try again later, and tell the server's administrators if it keeps happening"

# The Message decides where it is specific; the Type otherwise. Checked in
# order; the first match wins. Each entry: pattern on the Type (or None),
# pattern on the Message (or None), the error, and its message.
_Failure = tuple[re.Pattern[str] | None, re.Pattern[str] | None, type[VpndError], str]
_FAILURES: tuple[_Failure, ...] = (
    (
        None,
        re.compile(r"^AUTH_FAILED\b"),
        CredentialsRejected,
        "the server refused the user name or password; check them and try again",
    ),
    (
        None,
        re.compile(r"^NEED_AUTOLOGIN\b"),
        AutologinNotPermitted,
        "the server does not allow this user an unattended (autologin) profile; ask the"
        " server's administrators for the autologin permission, or use a profile that"
        " asks for the password when connecting",
    ),
    (
        None,
        re.compile(r"\benrol", re.IGNORECASE),
        TwoFactorRequired,
        "the server requires you to enroll in its two-factor authentication before it hands"
        " out a profile; enroll on the server's web portal, then try again",
    ),
    (
        re.compile(r"authorization required", re.IGNORECASE),
        None,
        CredentialsRejected,
        "the server refused the login; check the user name and password and try again",
    ),
    (
        re.compile(r"internal server error", re.IGNORECASE),
        None,
        AccessServerFailure,
        f"the server failed to produce the profile; {_AGAIN}",
    ),
)


def error_for(error_type: str, message: str) -> VpndError:
    """The named error for an error document's Type and Message. Returned, not raised.

    ChallengeRequired (CRV1), WebAuthRequired (Ovpn-WebAuth),
    CredentialsRejected (AUTH_FAILED, or any other "Authorization Required"),
    AutologinNotPermitted (NEED_AUTOLOGIN), TwoFactorRequired (enrolment
    needed), AccessServerFailure (any other "Internal Server Error"),
    RestCallFailed for anything else; ServerError for a malformed challenge.
    The server's text is cleaned, bounded and quoted in the message.
    """
    message = message.strip()
    try:
        if message.startswith(_CRV1_PREFIX):
            return _challenge_required(message)
    except ServerError as error:
        return error
    if message.startswith(_WEBAUTH_PREFIX):
        return _web_auth_required(message)
    detail = clean_text(message)
    said = f" (the server said: {detail})" if detail else ""
    for type_pattern, message_pattern, kind, text in _FAILURES:
        if type_pattern is not None and not type_pattern.fullmatch(error_type.strip()):
            continue
        if message_pattern is not None and not message_pattern.search(message):
            continue
        return kind(text + said)
    if detail:
        return RestCallFailed(f"the server refused the request: {detail}; {_AGAIN}")
    return RestCallFailed(f"the server refused the request without saying why; {_AGAIN}")


def parse_error_reply(body: bytes) -> VpndError:
    """The named error an XML error document stands for (see error_for); a
    ServerError when the document is too large, not UTF-8, declares a DTD or
    is not an `<Error>` document. Returned, not raised."""
    try:
        error_type, message = _read_error_xml(body)
    except ServerError as error:
        return error
    return error_for(error_type, message)


def parse_profile_reply(status: int, content_type: str | None, body: bytes) -> str:
    """The profile text of a reply to GetUserlogin/GetAutologin, or the error it stands for.

    An XML reply (by type, or by its first bytes) raises its named error
    (see parse_error_reply). A 2xx reply of type
    application/x-openvpn-profile is the profile (ConfigRejected when larger
    than 1 MiB, not UTF-8 or holding a NUL). Anything else raises CredentialsRejected (401)
    or ServerError naming what came back.
    """
    media = _media_type(content_type)
    # An error document is recognised by its first bytes too (no profile
    # starts like one), in case a proxy or an older server mislabels it.
    if media in _XML_TYPES or _looks_like_xml(body):
        raise parse_error_reply(body)
    if 200 <= status < 300 and media == PROFILE_CONTENT_TYPE:
        return decode_config(body)
    if status == 401:
        raise CredentialsRejected(
            "the server refused the user name or password; check them and try again"
        )
    if status == 404:
        raise ServerError(
            "the server has no Access Server profile API at this address (HTTP 404); check"
            " the server's address, or ask its administrators to enable the REST API"
        )
    if 200 <= status < 300:
        shown = clean_text(media, 100) or "of no stated type"
        raise ServerError(
            f"the server's reply is not an OpenVPN profile (it is {shown}); check that the"
            " address is an OpenVPN Access Server"
        )
    raise ServerError(f"the server answered with HTTP status {status}; {_AGAIN}")
