"""eduVPN / Let's Connect! API v2 documents. Pure: no I/O.

API v2 (vpn-user-portal 2.x) works like this: `{base}/info.json` names the
API base and the OAuth endpoints under "http://eduvpn.org/api#2"; OAuth is
the code flow with PKCE, as for v3. Every API call answers with an envelope,
`{"<call>": {"ok": true, "data": …}}` or `{"<call>": {"ok": false, "error": "…"}}`.
The client obtains one certificate and private key per server
(`create_keypair`), and for each connection the profile's configuration
without them (`profile_config`), which it completes itself. The certificate's
notAfter is when the session ends.

This module builds the requests (`ApiRequest`: method, URL, fields) and reads
the replies. Like protocols.eduvpn, every document is bounded, every URL must
be https, and text meant for a person is cleaned. A malformed document raises
ServerError; `ok: false` raises a named error (see `failure_error`); key
material that cannot be used raises CertificateRejected; a configuration that
cannot be used raises ConfigRejected.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from vpnd.errors import (
    AccountDisabled,
    ApiCallFailed,
    AuthorizationRequired,
    CertificateRejected,
    InvalidArgument,
    ProfileUnavailable,
    ServerError,
    TwoFactorRequired,
    VpndError,
)
from vpnd.protocols import lang
from vpnd.protocols.documents import (
    MAX_LANGUAGES,
    PROFILE_ID_RE,
    api_call_url,
    clean_text,
    decode_config,
    is_language_map,
    load_json,
    resolved_https_url,
    translated_text,
)
from vpnd.protocols.eduvpn import Endpoints, Profile, read_profiles

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

API_V2 = "http://eduvpn.org/api#2"

PROFILE_LIST = "profile_list"
USER_INFO = "user_info"
CREATE_KEYPAIR = "create_keypair"
PROFILE_CONFIG = "profile_config"
CHECK_CERTIFICATE = "check_certificate"
SYSTEM_MESSAGES = "system_messages"
USER_MESSAGES = "user_messages"

KEYPAIR_DISPLAY_NAME = "vpnd"
"""The `display_name` sent with create_keypair (older servers require one)."""

MAX_MESSAGES = 100
"""Most system or user messages accepted in one reply."""

MAX_MESSAGE_TEXT = 1000
"""Longest message text passed on (longer ones are cut)."""

MAX_PEM_CHARS = 64 * 1024
"""Longest certificate or private key (PEM) accepted."""

MAX_COMMON_NAME = 64
"""Longest certificate common name (X.509's upper bound for a CN)."""

MAX_METHODS = 16
"""Most entries accepted in a list of two-factor methods."""

CLOCK_SKEW = 300.0
"""Seconds a fresh certificate may start in the future (this machine's clock may lag)."""

CertificateReason = Literal[
    "certificate_missing",
    "certificate_expired",
    "certificate_not_yet_valid",
    "user_disabled",
    "unknown",
]
MessageType = Literal["notification", "motd", "maintenance"]
MessageCall = Literal["system_messages", "user_messages"]


# --- values -------------------------------------------------------------------


@dataclass(frozen=True)
class ApiRequest:
    """One API call to make: GET with `params` as the query, or POST with
    `params` as form fields (application/x-www-form-urlencoded)."""

    call: str
    method: Literal["GET", "POST"]
    url: str
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LegacyProfile:
    """One profile from an API v1/v2 profile_list. `display_name` as sent
    (string or language map)."""

    profile_id: str
    display_name: str | Mapping[str, str]
    two_factor: bool = False
    default_gateway: bool = False
    two_factor_method: tuple[str, ...] = ()

    def as_profile(self) -> Profile:
        """The same profile in the shape every server family shares (OpenVPN only)."""
        return Profile(
            profile_id=self.profile_id,
            display_name=self.display_name,
            vpn_proto_list=("openvpn",),
            default_gateway=self.default_gateway,
        )


@dataclass(frozen=True)
class UserInfo:
    """What user_info says about the user's account at the server."""

    is_disabled: bool
    two_factor_enrolled: bool = False
    two_factor_enrolled_with: tuple[str, ...] = ()
    user_id: str = ""


@dataclass(frozen=True)
class CertificateStatus:
    """check_certificate's verdict. `reason` is "" when the certificate is valid."""

    is_valid: bool
    reason: CertificateReason | Literal[""] = ""

    @property
    def renewable(self) -> bool:
        """Whether a new key pair (create_keypair) can cure an invalid certificate.

        Not for a disabled user: the server would refuse the new one too.
        """
        return not self.is_valid and self.reason != "user_disabled"

    @property
    def problem(self) -> str:
        """The verdict in words a person can read ("" when valid)."""
        return "" if self.is_valid else _REASON_TEXT[self.reason or "unknown"]


@dataclass(frozen=True)
class Message:
    """A system or user message. Times are Unix times; `begin`/`end` only for maintenance."""

    type: MessageType
    text: str
    date_time: float
    begin: float | None = None
    end: float | None = None


@dataclass(frozen=True)
class KeyPair:
    """A client certificate and its private key, both checked and re-encoded
    as PEM by this module. `not_before`/`not_after` are Unix times; the
    private key is left out of repr() so that logging cannot leak it."""

    certificate: str
    private_key: str = field(repr=False)
    common_name: str
    not_before: float
    not_after: float


@dataclass(frozen=True)
class ConnectableConfig:
    """An OpenVPN configuration ready for the allow-list: `text` carries the
    client certificate as `<cert>` and no `<key>`; the private key is apart
    (openvpn asks vpnd for signatures instead). `expires_at` is the
    certificate's notAfter, the end of the session."""

    text: str
    private_key: str = field(repr=False)
    certificate: str
    expires_at: float


_REASON_TEXT: dict[str, str] = {
    "certificate_missing": "the server no longer knows the certificate vpnd holds",
    "certificate_expired": "the certificate vpnd holds has expired",
    "certificate_not_yet_valid": "the certificate vpnd holds is not valid yet",
    "user_disabled": (
        "the server has disabled your account; ask the server's administrators to enable it"
    ),
    "unknown": "the server no longer accepts the certificate vpnd holds",
}


# --- discovery ----------------------------------------------------------------


class NotApiV2(ServerError):
    """info.json is readable but announces no API v2 (another generation may fit)."""


def info_json_url(base_url: str) -> str:
    """`{base}/info.json`, where API v1 and v2 servers describe themselves."""
    if not base_url.endswith("/"):
        base_url += "/"
    return base_url + "info.json"


def parse_info_json(body: bytes, document_url: str) -> Endpoints:
    """Read info.json for API v2: the "http://eduvpn.org/api#2" entry's
    api_base_uri (as `api_endpoint`), authorization_endpoint and token_endpoint.

    `document_url` is where the document was finally read from (after
    redirects); relative endpoints are resolved against it. Every endpoint must
    end up https. NotApiV2 when the document offers no API v2; ServerError
    when an entry is missing or malformed.
    """
    doc = load_json(body)
    if not isinstance(doc, dict):
        raise ServerError("the server's info.json is not a JSON object")
    api = doc.get("api")
    if not isinstance(api, dict):
        raise ServerError('the server\'s info.json has no "api" map')
    entry = api.get(API_V2)
    if entry is None:
        if doc.get("version") == 1:
            raise NotApiV2("the server speaks eduVPN API v1, not API v2")
        raise NotApiV2("the server does not offer eduVPN API v2")
    if not isinstance(entry, dict):
        raise ServerError("the server's API v2 entry is not a JSON object")
    version = doc.get("v")
    return Endpoints(
        api_endpoint=resolved_https_url(entry.get("api_base_uri"), document_url, "api_base_uri"),
        authorization_endpoint=resolved_https_url(
            entry.get("authorization_endpoint"), document_url, "authorization_endpoint"
        ),
        token_endpoint=resolved_https_url(
            entry.get("token_endpoint"), document_url, "token_endpoint"
        ),
        server_version=clean_text(version, 64) if isinstance(version, str) else "",
    )


# --- requests -----------------------------------------------------------------


def _get(api_base_uri: str, call: str, **params: str) -> ApiRequest:
    return ApiRequest(call, "GET", api_call_url(api_base_uri, call), params)


def profile_list_request(api_base_uri: str) -> ApiRequest:
    """GET profile_list: the profiles the user may use."""
    return _get(api_base_uri, PROFILE_LIST)


def user_info_request(api_base_uri: str) -> ApiRequest:
    """GET user_info: whether the account is disabled, two-factor enrollment."""
    return _get(api_base_uri, USER_INFO)


def system_messages_request(api_base_uri: str) -> ApiRequest:
    """GET system_messages: notices for every user of the server."""
    return _get(api_base_uri, SYSTEM_MESSAGES)


def user_messages_request(api_base_uri: str) -> ApiRequest:
    """GET user_messages: notices for this user."""
    return _get(api_base_uri, USER_MESSAGES)


def checked_profile_id(profile_id: str) -> str:
    """`profile_id` if it looks like one; InvalidArgument otherwise."""
    if not PROFILE_ID_RE.fullmatch(profile_id):
        raise InvalidArgument(
            "a profile id is 1 to 128 letters, digits, '-', '_' and '.'; check the profile's name"
        )
    return profile_id


def profile_config_request(api_base_uri: str, profile_id: str) -> ApiRequest:
    """GET profile_config?profile_id=…: the profile's configuration without certificate and key."""
    return _get(api_base_uri, PROFILE_CONFIG, profile_id=checked_profile_id(profile_id))


def check_certificate_request(api_base_uri: str, common_name: str) -> ApiRequest:
    """GET check_certificate?common_name=…: whether the server still accepts a certificate."""
    if not 0 < len(common_name) <= MAX_COMMON_NAME or not common_name.isprintable():
        raise InvalidArgument("a certificate's common name is 1 to 64 printable characters")
    return _get(api_base_uri, CHECK_CERTIFICATE, common_name=common_name)


def create_keypair_request(
    api_base_uri: str, display_name: str = KEYPAIR_DISPLAY_NAME
) -> ApiRequest:
    """POST create_keypair with `display_name` (ignored by current servers,
    required by older ones): a new certificate and private key for every
    profile of the server."""
    name = clean_text(display_name, 100)
    if not name:
        raise InvalidArgument("a key pair's display name must hold printable characters")
    return ApiRequest(
        CREATE_KEYPAIR, "POST", api_call_url(api_base_uri, CREATE_KEYPAIR), {"display_name": name}
    )


# --- the reply envelope and its errors ----------------------------------------

# ok:false comes with a free-text reason and, on the servers we know, HTTP
# 200, so the text is all there is to go on. Only a few well-known reasons
# are told apart; anything else is a plain ApiCallFailed, which is always a
# correct (if less specific) answer. Checked in order; the first match wins.
_FAILURES: tuple[tuple[re.Pattern[str], type[VpndError], str], ...] = (
    (
        re.compile(
            r"\b(?:user|account)\b.*\b(?:disabled|blocked)\b"
            r"|\b(?:disabled|blocked)\b.*\b(?:user|account)\b"
        ),
        AccountDisabled,
        "the server has disabled your account; ask the server's administrators to enable it",
    ),
    (
        re.compile(
            r"\bprofile\b.*\b(?:not available|not found|unknown|does not exist|no access)\b"
            r"|\bno such profile\b|\b(?:unknown|invalid) profile\b"
        ),
        ProfileUnavailable,
        "the server does not offer this profile to you (any more); choose another profile",
    ),
    (
        re.compile(r"\b(?:two[- ]factor|2fa|totp|otp|yubikey)\b"),
        TwoFactorRequired,
        "the server requires two-factor authentication; enroll on the server's web portal,"
        " then try again",
    ),
)


def failure_error(call: str, error: str) -> VpndError:
    """The named error for `{"<call>": {"ok": false, "error": error}}`.

    AccountDisabled, ProfileUnavailable or TwoFactorRequired for the reasons
    servers are known to give, ApiCallFailed for any other. The server's text
    is cleaned, bounded and quoted in the message. Returned, not raised.
    """
    detail = clean_text(error)
    lowered = detail.lower()
    for pattern, kind, message in _FAILURES:
        if pattern.search(lowered):
            return kind(f"{message} (the server said: {detail})")
    if detail:
        return ApiCallFailed(
            f"the server refused the {call} request: {detail}; try again later, and tell"
            " the server's administrators if it keeps happening"
        )
    return ApiCallFailed(
        f"the server refused the {call} request without saying why; try again later, and"
        " tell the server's administrators if it keeps happening"
    )


def _envelope(call: str, doc: object) -> dict[str, object]:
    """The `{"ok": …}` object of a decoded envelope; ServerError if there is none."""
    if not isinstance(doc, dict):
        raise ServerError(f"the server's {call} reply is not a JSON object")
    reply = doc.get(call)
    if not isinstance(reply, dict):
        raise ServerError(f'the server\'s {call} reply has no "{call}" object')
    if not isinstance(reply.get("ok"), bool):
        raise ServerError(f'the server\'s {call} reply has no true or false "ok"')
    return reply


def _failure(call: str, reply: Mapping[str, object]) -> VpndError:
    error = reply.get("error")
    return failure_error(call, error if isinstance(error, str) else "")


def parse_envelope(call: str, body: bytes) -> object:
    """The `data` of `{"<call>": {"ok": true, "data": …}}`.

    `ok: false` raises `failure_error(call, error)`; a body that is not such
    an envelope raises ServerError.
    """
    reply = _envelope(call, load_json(body))
    if reply["ok"] is False:
        raise _failure(call, reply)
    if "data" not in reply:
        raise ServerError(f'the server\'s {call} reply has no "data"')
    return reply["data"]


def api_error(status: int, call: str, body: bytes) -> VpndError:
    """The error for a non-2xx reply to an API v1/v2 call. Returned, not raised.

    401 -> AuthorizationRequired; a body holding an `ok: false` envelope ->
    its `failure_error`; anything else -> ServerError naming the status (with
    the server's `error` text, if it sent one).
    """
    if status == 401:
        return AuthorizationRequired(
            "the server no longer accepts the saved authorization; log in to the server again"
        )
    try:
        doc = load_json(body)
    except ServerError:
        doc = None
    try:
        reply = _envelope(call, doc)
    except ServerError:
        pass
    else:
        if reply["ok"] is False:
            return _failure(call, reply)
    detail = ""
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, str):
        text = clean_text(error)
        detail = f": {text}" if text else ""
    return ServerError(f"the server answered the {call} request with HTTP status {status}{detail}")


# --- replies ------------------------------------------------------------------


def _strings(value: object, owner: str, key: str) -> tuple[str, ...]:
    """A short list of short printable strings (methods of two-factor authentication)."""
    if value is None:
        return ()
    if (
        not isinstance(value, list)
        or len(value) > MAX_METHODS
        or not all(isinstance(item, str) and 0 < len(item) <= 64 for item in value)
    ):
        raise ServerError(
            f'the server\'s {owner} has a "{key}" that is not a list of at most '
            f"{MAX_METHODS} short strings"
        )
    return tuple(clean_text(item, 64) for item in value)


def _flag(item: Mapping[str, object], key: str, owner: str, default: bool | None) -> bool:
    value = item.get(key, default)
    if not isinstance(value, bool):
        raise ServerError(f'the server\'s {owner} has no true or false "{key}"')
    return value


def _legacy_profile(item: object) -> LegacyProfile:
    if not isinstance(item, dict):
        raise ServerError("the server's profile list has an entry that is not a JSON object")
    profile_id = item.get("profile_id")
    if not isinstance(profile_id, str) or not PROFILE_ID_RE.fullmatch(profile_id):
        raise ServerError(
            "the server's profile list has a profile_id that is missing or not made of "
            "letters, digits, '-', '_' and '.'"
        )
    owner = f'profile "{profile_id}"'
    return LegacyProfile(
        profile_id=profile_id,
        display_name=translated_text(
            item.get("display_name"), fallback=profile_id, owner=owner, field="display_name"
        ),
        two_factor=_flag(item, "two_factor", owner, False),
        default_gateway=_flag(item, "default_gateway", owner, False),
        two_factor_method=_strings(item.get("two_factor_method"), owner, "two_factor_method"),
    )


def parse_profile_list(body: bytes) -> list[LegacyProfile]:
    """Read profile_list: `[{"profile_id", "display_name", "two_factor", …}]`."""
    data = parse_envelope(PROFILE_LIST, body)
    if not isinstance(data, list):
        raise ServerError("the server's profile list is not a list")
    return read_profiles(data, _legacy_profile)


def parse_user_info(body: bytes) -> UserInfo:
    """Read user_info: is_disabled, two_factor_enrolled, two_factor_enrolled_with, user_id."""
    data = parse_envelope(USER_INFO, body)
    if not isinstance(data, dict):
        raise ServerError("the server's user info is not a JSON object")
    user_id = data.get("user_id")
    return UserInfo(
        is_disabled=_flag(data, "is_disabled", "user info", None),
        two_factor_enrolled=_flag(data, "two_factor_enrolled", "user info", False),
        two_factor_enrolled_with=_strings(
            data.get("two_factor_enrolled_with"), "user info", "two_factor_enrolled_with"
        ),
        user_id=clean_text(user_id, 128) if isinstance(user_id, str) else "",
    )


def check_can_connect(profile: LegacyProfile, user: UserInfo) -> None:
    """What the application flow asks before connecting: AccountDisabled when
    the account is disabled, TwoFactorRequired when the profile needs
    two-factor authentication the user has not enrolled in."""
    if user.is_disabled:
        raise AccountDisabled(
            "the server has disabled your account; ask the server's administrators to enable it"
        )
    if profile.two_factor and not user.two_factor_enrolled:
        raise TwoFactorRequired(
            f'the profile "{profile.profile_id}" requires two-factor authentication; enroll'
            " on the server's web portal, then connect again"
        )


_REASONS: dict[str, CertificateReason] = {
    "certificate_missing": "certificate_missing",
    "certificate_expired": "certificate_expired",
    "certificate_not_yet_valid": "certificate_not_yet_valid",
    "user_disabled": "user_disabled",
}


def parse_check_certificate(body: bytes) -> CertificateStatus:
    """Read check_certificate: is_valid and, when false, reason (an unknown or
    missing reason becomes "unknown")."""
    data = parse_envelope(CHECK_CERTIFICATE, body)
    if not isinstance(data, dict):
        raise ServerError("the server's certificate check is not a JSON object")
    if _flag(data, "is_valid", "certificate check", None):
        return CertificateStatus(is_valid=True)
    reason = data.get("reason")
    known = _REASONS.get(reason, "unknown") if isinstance(reason, str) else "unknown"
    return CertificateStatus(is_valid=False, reason=known)


def _iso_time(value: object, owner: str, key: str) -> float:
    """Unix time of an ISO 8601 date and time (UTC when it names no zone)."""
    if isinstance(value, str) and len(value) <= 64:
        try:
            when = _dt.datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if when.tzinfo is None:
                when = when.replace(tzinfo=_dt.UTC)
            try:
                return when.timestamp()
            except (OverflowError, OSError, ValueError):
                pass
    raise ServerError(f'the server\'s {owner} has a "{key}" that is not an ISO 8601 date and time')


def _message_text(value: object, preferred: Sequence[str]) -> str:
    """A message in the best of the user's languages, on one line, cleaned and bounded."""
    if value is None:
        return ""
    if isinstance(value, dict):
        if not is_language_map(value):
            raise ServerError(
                "the server's message is a language map with more than "
                f"{MAX_LANGUAGES} entries or one that is not a language tag and a text"
            )
        value = lang.choose(value, preferred)
    if not isinstance(value, str):
        raise ServerError("the server's message is neither a text nor a language map")
    # Line breaks become spaces: a server must not be able to forge lines
    # in whatever shows the message.
    return clean_text(" ".join(value.split()), MAX_MESSAGE_TEXT)


_MESSAGE_TYPES: dict[str, MessageType] = {
    "notification": "notification",
    "motd": "motd",
    "maintenance": "maintenance",
}


def _message(item: object, preferred: Sequence[str]) -> Message | None:
    if not isinstance(item, dict):
        raise ServerError("the server's message list has an entry that is not a JSON object")
    kind = item.get("type")
    message_type = _MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if message_type is None:
        # A type this version does not know is left out, not an error: newer
        # servers may add kinds of messages.
        return None
    owner = f"{message_type} message"
    text = _message_text(item.get("message"), preferred)
    date_time = _iso_time(item.get("date_time"), owner, "date_time")
    if message_type != "maintenance":
        return Message(message_type, text, date_time) if text else None
    begin = _iso_time(item.get("begin"), owner, "begin")
    end = _iso_time(item.get("end"), owner, "end")
    if end < begin:
        raise ServerError("the server's maintenance message ends before it begins")
    return Message(message_type, text, date_time, begin, end)


def parse_messages(call: MessageCall, body: bytes, preferred: Sequence[str] = ()) -> list[Message]:
    """Read system_messages or user_messages (`call` says which), each text in
    the best of the `preferred` language tags (see protocols.lang.choose).

    Messages of an unknown type, and notifications without text, are left out.
    """
    if call not in (SYSTEM_MESSAGES, USER_MESSAGES):
        raise ValueError(f"not a message call: {call!r}")  # a bug in the caller
    data = parse_envelope(call, body)
    if not isinstance(data, list):
        raise ServerError(f"the server's {call} reply is not a list")
    if len(data) > MAX_MESSAGES:
        raise ServerError(f"the server sent more than {MAX_MESSAGES} messages")
    found = (_message(item, preferred) for item in data)
    return [message for message in found if message is not None]


# --- certificates and keys ----------------------------------------------------
# cryptography is imported where a certificate is read, not with this
# module: the daemon loads this module at start, and an idle daemon has no
# use for cryptography's 7 MiB.


def _load_certificate(pem: object, what: str) -> x509.Certificate:
    from cryptography import x509

    if (
        not isinstance(pem, str)
        or len(pem) > MAX_PEM_CHARS
        # One certificate, not a chain: which one would be ours?
        or pem.count("-----BEGIN") != 1
    ):
        raise CertificateRejected(f"{what} is missing or is not one PEM certificate")
    try:
        return x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise CertificateRejected(f"{what} cannot be read (not a PEM certificate)") from None


def _common_name(certificate: x509.Certificate, what: str) -> str:
    from cryptography.x509.oid import NameOID

    try:
        attributes = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        attributes = []
    values = [a.value for a in attributes if isinstance(a.value, str)]
    if len(values) != 1 or not 0 < len(values[0]) <= MAX_COMMON_NAME or not values[0].isprintable():
        raise CertificateRejected(f"{what} does not name exactly one printable common name")
    return values[0]


def certificate_common_name(pem: str) -> str:
    """The common name (CN) of a PEM certificate, as check_certificate wants it.

    CertificateRejected when the certificate cannot be read or has not exactly one CN.
    """
    what = "the client certificate"
    return _common_name(_load_certificate(pem, what), what)


def certificate_expiry(pem: str) -> float:
    """The notAfter of a PEM certificate as Unix time: when an API v1/v2 session ends.

    CertificateRejected when the certificate cannot be read.
    """
    return _load_certificate(pem, "the client certificate").not_valid_after_utc.timestamp()


def _public_der(key: PublicKeyTypes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_keypair(certificate: object, private_key: object, *, now: float, what: str) -> KeyPair:
    """Check a certificate and private key from a server and re-encode both.

    CertificateRejected when either cannot be read, the key is encrypted or of
    a kind openvpn cannot use, the certificate is not for this key, it has
    already expired at `now` (Unix time), or it starts more than CLOCK_SKEW
    seconds after `now`. `what` names the source in messages ("the server's
    create_keypair reply"). Re-encoding keeps anything a server put around the
    PEM blocks out of the configuration they are merged into.
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    cert = _load_certificate(certificate, f"the certificate in {what}")
    if not isinstance(private_key, str) or len(private_key) > MAX_PEM_CHARS:
        raise CertificateRejected(f"the private key in {what} is missing or too long")
    if private_key.count("-----BEGIN") != 1:
        raise CertificateRejected(f"the private key in {what} is not one PEM private key")
    try:
        key = serialization.load_pem_private_key(private_key.encode("ascii"), password=None)
    except TypeError:
        raise CertificateRejected(
            f"the private key in {what} is encrypted; the server must send it unencrypted"
        ) from None
    except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError):
        raise CertificateRejected(
            f"the private key in {what} cannot be read (not a PEM private key)"
        ) from None
    usable = (
        rsa.RSAPrivateKey,
        ec.EllipticCurvePrivateKey,
        ed25519.Ed25519PrivateKey,
        ed448.Ed448PrivateKey,
    )
    if not isinstance(key, usable):
        raise CertificateRejected(
            f"the private key in {what} is of a kind openvpn cannot use ({type(key).__name__})"
        )
    try:
        certified = _public_der(cert.public_key())
    except (ValueError, UnsupportedAlgorithm):
        certified = b""
    if not certified or certified != _public_der(key.public_key()):
        raise CertificateRejected(
            f"the certificate in {what} does not belong to its private key; get a new key"
            " pair, and tell the server's administrators if it happens again"
        )
    not_before = cert.not_valid_before_utc.timestamp()
    not_after = cert.not_valid_after_utc.timestamp()
    if not_after <= now:
        raise CertificateRejected(
            f"the certificate in {what} had already expired when it arrived; check this"
            " computer's clock, and tell the server's administrators if the clock is right"
        )
    if not_before > now + CLOCK_SKEW:
        raise CertificateRejected(
            f"the certificate in {what} is not valid yet; check this computer's clock"
        )
    return KeyPair(
        certificate=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        private_key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii"),
        common_name=_common_name(cert, f"the certificate in {what}"),
        not_before=not_before,
        not_after=not_after,
    )


def parse_keypair(body: bytes, *, now: float, call: str = CREATE_KEYPAIR) -> KeyPair:
    """Read a create_keypair reply (or API v1's create_certificate: `call`),
    `{"certificate": PEM, "private_key": PEM}`, and check the pair (see load_keypair)."""
    data = parse_envelope(call, body)
    if not isinstance(data, dict):
        raise ServerError(f"the server's {call} reply is not a JSON object")
    return load_keypair(
        data.get("certificate"),
        data.get("private_key"),
        now=now,
        what=f"the server's {call} reply",
    )


# --- configurations -----------------------------------------------------------

_JSON_TYPES = frozenset({"application/json", "text/json"})


def _inline_re(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"^[ \t]*<{name}>[ \t]*\r?\n(.*?)^[ \t]*</{name}>[ \t]*(?:\r?\n|\Z)", re.M | re.S
    )


_INLINE = {name: _inline_re(name) for name in ("cert", "key")}


def inline_blocks(text: str, name: str) -> list[str]:
    """The bodies of every `<name>` … `</name>` block (cert or key) in a config text."""
    return [match.group(1) for match in _INLINE[name].finditer(text)]


def without_inline_blocks(text: str, *names: str) -> str:
    """The config text without its `<cert>`/`<key>` blocks of these names."""
    for name in names:
        text = _INLINE[name].sub("", text)
    return text


def config_text(call: str, content_type: str, body: bytes) -> str:
    """The text of a reply that carries an OpenVPN configuration (profile_config,
    API v1's create_config).

    A JSON reply is the envelope of a failure (its named error is raised), or
    ServerError if it claims success. A body that is too large, not UTF-8 or
    holds a NUL raises ConfigRejected.
    """
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in _JSON_TYPES or body.lstrip()[:1] == b"{":
        parse_envelope(call, body)
        raise ServerError(f"the server's {call} reply is JSON, not an OpenVPN configuration")
    return decode_config(body)


def parse_profile_config(content_type: str, body: bytes) -> str:
    """Read a profile_config reply: the configuration text, without certificate and key."""
    return config_text(PROFILE_CONFIG, content_type, body)


def complete_config(config: str, keypair: KeyPair) -> ConnectableConfig:
    """Merge a key pair into a profile's configuration.

    Any `<cert>`/`<key>` block the server left in is dropped (only the checked
    pair counts); the certificate goes in as `<cert>`, the private key stays
    apart. The session ends at the certificate's notAfter.
    """
    text = without_inline_blocks(config, "cert", "key")
    if text and not text.endswith("\n"):
        text += "\n"
    text += "<cert>\n" + keypair.certificate.strip() + "\n</cert>\n"
    return ConnectableConfig(
        text=text,
        private_key=keypair.private_key,
        certificate=keypair.certificate,
        expires_at=keypair.not_after,
    )
