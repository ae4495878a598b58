"""An OpenVPN Access Server REST profile API for tests, as the Access Server serves it.

Real TLS on 127.0.0.1 and an ephemeral port, through the same server and
handler classes as the eduVPN portals (tests.lab.portal).

- `GET /rest/GetUserlogin`: a profile that asks for the user name and
  password when connecting (it carries `auth-user-pass`);
- `GET /rest/GetAutologin`: an unattended profile (no `auth-user-pass`), for
  users holding the autologin permission.

Both take HTTP Basic authentication and the optional query parameters
`tls-cryptv2=1`, `action=import` and `deviceID`, which are recorded, not
required. A success is `application/x-openvpn-profile`: the lab's client
profile (`OpenVPNLab.client_config`, or `build_client_config` without a lab)
with a fresh client certificate and key. A failure is the Access Server's
XML error document (`text/xml`), in the exact forms of its documentation
(see the `_AUTH_FAILED`, `_NEED_AUTOLOGIN`, `_NOT_ENROLLED`, `_WEB_AUTH`,
`_CHALLENGE` and `_INTERNAL_ERROR` templates). Checked in this order:

1. `web_auth` set: every request gets `Ovpn-WebAuth: <web_auth>`;
2. the credentials: an unknown user, a wrong password or none at all get
   `AUTH_FAILED`; so does the wrong answer to a challenge, or a state id
   the portal did not issue (or already used) to this user;
3. `enrolment_required`: the "enroll this user in Authenticator" error;
4. `challenge` set and the password (not an answer) was right: a CRV1
   challenge with a fresh state id, good for one answer, unless the request
   carries a `VPN-Session-User` / `VPN-Session-Token` pair (both base64)
   that `session_tokens` holds for this user;
5. GetAutologin for a user outside `autologin_users`: `NEED_AUTOLOGIN`;
6. `internal_error` set: an "Internal Server Error" with that message;
7. the profile.

An unknown path is an HTML 404 (no Access Server API here); another method
than GET on a REST method is a 405 XML error.

Knobs (plain attributes): `users` (user name -> password),
`autologin_users`, `enrolment_required`, `web_auth` ("provider,flags", sent
verbatim), `internal_error` (the message), `challenge` (a `Challenge`),
`session_tokens` (user name -> token), `certificate_days`, `config_filter`
(applied to each profile served). `issue_profile_token(kind, username)`
returns a one-use profile link, as a web login (SAML) hands out;
`GetProfileViaToken` serves it without Basic authentication.

Records: `requests` (one `AccessServerRequest` per request: method, path,
query parameters, Basic user name, lower-cased headers),
`issued_common_names`, `issued_keys` (the private keys handed out, PEM),
`challenges_issued` (the state ids sent). `reset()` restores knobs and
records and forgets unanswered challenges.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

from tests.lab.netns import OpenVPNLab, Remote, build_client_config
from tests.lab.pki import LabPKI
from tests.lab.portal import Hostile, HostileServed, ServedPortal, _Reply

ProfileKind = Literal["userlogin", "autologin"]

OPENVPN_PROFILE = "application/x-openvpn-profile"
XML = "text/xml"
DEFAULT_USERS: Mapping[str, str] = {"alice": "correct horse"}
DEFAULT_AUTOLOGIN_USERS: frozenset[str] = frozenset({"alice"})
DEFAULT_CERTIFICATE_DAYS = 365
METHODS: Mapping[str, ProfileKind] = {
    "/rest/GetUserlogin": "userlogin",
    "/rest/GetAutologin": "autologin",
}

# The error documents, as the Access Server's documentation shows them: the
# first three with an XML declaration, the web-auth and challenge ones
# without. Fields are XML-escaped before they are filled in.
_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'
_ERROR = (
    "<Error>\n"
    "  <Type>{type}</Type>\n"
    "  <Synopsis>REST method failed</Synopsis>\n"
    "  <Message>{message}</Message>\n"
    "</Error>\n"
)
AUTH_FAILED_MESSAGE = "AUTH_FAILED: Server Agent XML method requires authentication (9007)"
NEED_AUTOLOGIN_MESSAGE = "NEED_AUTOLOGIN: User '{user}' lacks autologin privilege (9000)"
NOT_ENROLLED_MESSAGE = (
    "You must enroll this user in Authenticator first before you are allowed to retrieve"
    " a connection profile. (9008)"
)
AUTHORIZATION_REQUIRED = "Authorization Required"
INTERNAL_SERVER_ERROR = "Internal Server Error"
ACCESS_DENIED = "Access denied"


@dataclass(frozen=True)
class Challenge:
    """A CRV1 dynamic challenge the portal asks after a right password:
    `text` is the question, `answer` the response it accepts; `echo` and
    `response_required` become the flags E and R."""

    text: str = "Turing test: what is 1 x 3? (9007)"
    answer: str = "3"
    echo: bool = True
    response_required: bool = True

    @property
    def flags(self) -> str:
        """The challenge's flags as CRV1 writes them ("R,E" as in the documentation)."""
        return ",".join(
            flag for flag, on in (("R", self.response_required), ("E", self.echo)) if on
        )


@dataclass(frozen=True)
class AccessServerRequest:
    """One request the portal answered: `username` is the Basic user name
    (None without readable Basic credentials); `params` the query."""

    method: str
    path: str
    params: dict[str, str]
    username: str | None
    headers: dict[str, str] = field(repr=False)


@dataclass(frozen=True)
class _Pending:
    username: str
    answer: str


def _xml(status: int, error_type: str, message: str, *, declaration: bool = True) -> _Reply:
    document = _ERROR.format(type=escape(error_type), message=escape(message))
    body = (_DECLARATION if declaration else "") + document
    return _Reply(status, body.encode("utf-8"), XML)


def auth_failed() -> _Reply:
    """Wrong or missing credentials (or a wrong answer to a challenge)."""
    return _xml(401, AUTHORIZATION_REQUIRED, AUTH_FAILED_MESSAGE)


def need_autologin(username: str) -> _Reply:
    """The user lacks the autologin permission."""
    return _xml(500, INTERNAL_SERVER_ERROR, NEED_AUTOLOGIN_MESSAGE.format(user=username))


def not_enrolled() -> _Reply:
    """The user has not enrolled in two-factor authentication."""
    return _xml(403, ACCESS_DENIED, NOT_ENROLLED_MESSAGE)


def web_auth_required(provider_and_flags: str) -> _Reply:
    """The server wants a web (SAML) login: `Ovpn-WebAuth: provider,flags`."""
    return _xml(
        401, AUTHORIZATION_REQUIRED, f"Ovpn-WebAuth: {provider_and_flags}", declaration=False
    )


def crv1_challenge(challenge: Challenge, state_id: str, username: str) -> _Reply:
    """A CRV1 challenge: `CRV1:<flags>:<state_id>:<base64 username>:<text>`."""
    user_b64 = base64.b64encode(username.encode("utf-8")).decode("ascii")
    message = f"CRV1:{challenge.flags}:{state_id}:{user_b64}:{challenge.text}"
    return _xml(401, AUTHORIZATION_REQUIRED, message, declaration=False)


def internal_error(message: str) -> _Reply:
    """The server failed to produce the profile."""
    return _xml(500, INTERNAL_SERVER_ERROR, message)


def basic_credentials(authorization: str) -> tuple[str, str] | None:
    """(user name, password) from an `Authorization: Basic …` value; None
    when it is missing or not base64 of UTF-8 `user:password`."""
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        pair = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, separator, password = pair.partition(":")
    return (username, password) if separator else None


def _b64_header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def with_auth_user_pass(config: str) -> str:
    """`config` with an `auth-user-pass` line before its first inline block."""
    lines = config.splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if line.startswith("<")), len(lines))
    if at == len(lines) and lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    lines.insert(at, "auth-user-pass\n")
    return "".join(lines)


class TestAccessServer(ServedPortal):
    """An OpenVPN Access Server REST profile API for tests: real TLS on
    127.0.0.1, an ephemeral port; see the module notes."""

    __test__ = False  # not a test class, whatever its name says
    _thread_name = "lab-access-server"

    users: dict[str, str]
    autologin_users: set[str]
    enrolment_required: bool
    web_auth: str | None
    internal_error: str | None
    challenge: Challenge | None
    session_tokens: dict[str, str]
    profile_tokens: dict[str, tuple[ProfileKind, str]]
    certificate_days: int
    config_filter: Callable[[str], str] | None
    requests: list[AccessServerRequest]
    issued_common_names: list[str]
    issued_keys: list[str]
    challenges_issued: list[str]
    # Read by the shared handler (tests.lab.portal); this portal serves no hostile replies.
    hostile: dict[str, Hostile]
    hostile_served: list[HostileServed]

    def __init__(
        self,
        pki: LabPKI,
        lab: OpenVPNLab | None = None,
        *,
        users: Mapping[str, str] | None = None,
        autologin_users: Iterable[str] | None = None,
    ) -> None:
        """Prepare a server; it listens once `start` is called. `users` and
        `autologin_users` are the defaults `reset()` restores."""
        super().__init__(pki, lab)
        self._initial_users = dict(users if users is not None else DEFAULT_USERS)
        self._initial_autologin = set(
            autologin_users if autologin_users is not None else DEFAULT_AUTOLOGIN_USERS
        )
        self._pending: dict[str, _Pending] = {}
        self.reset()

    def reset(self) -> None:
        """Put every knob back to its default, forget the records and unanswered challenges."""
        with self._state_lock:
            self.users = dict(self._initial_users)
            self.autologin_users = set(self._initial_autologin)
            self.enrolment_required = False
            self.web_auth = None
            self.internal_error = None
            self.challenge = None
            self.session_tokens = {}
            self.profile_tokens = {}
            self.certificate_days = DEFAULT_CERTIFICATE_DAYS
            self.config_filter = None
            self.requests = []
            self.issued_common_names = []
            self.issued_keys = []
            self.challenges_issued = []
            self.hostile = {}
            self.hostile_served = []
            self._pending.clear()
            self._generation += 1

    def issue_profile_token(self, kind: ProfileKind, username: str) -> str:
        """A one-use profile link for `username`, as the server's web page offers it."""
        token = secrets.token_urlsafe(24)
        with self._state_lock:
            self.profile_tokens[token] = (kind, username)
        return f"openvpn://import-profile/{self.base_url}rest/GetProfileViaToken?token={token}"

    def url(self, kind: ProfileKind) -> str:
        """The REST method's URL for `kind`, without a query."""
        method = "GetUserlogin" if kind == "userlogin" else "GetAutologin"
        return f"{self.base_url}rest/{method}"

    # --- request handling (called from the server's threads) ---

    def _record(self, request: AccessServerRequest, headers: dict[str, str]) -> None:
        """Log `request` in `requests`.

        The shared handler has already appended `(method, path, headers)` for
        this request, with the very `headers` dict handle() received; that
        entry is replaced, so `requests` holds AccessServerRequest only.
        """
        with self._state_lock:
            log: list[Any] = self.requests
            for index in range(len(log) - 1, -1, -1):
                entry = log[index]
                if isinstance(entry, tuple) and len(entry) == 3 and entry[2] is headers:
                    log[index] = request
                    return
            log.append(request)

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Reply:
        """Answer one request; returns the reply to send."""
        url = urlsplit(target)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        credentials = basic_credentials(headers.get("authorization", ""))
        username = credentials[0] if credentials is not None else None
        self._record(AccessServerRequest(method, url.path, params, username, headers), headers)
        if url.path == "/rest/GetProfileViaToken" and method == "GET":
            with self._state_lock:
                issued = self.profile_tokens.pop(params.get("token", ""), None)
            if issued is None:
                return _xml(401, "Authorization Required", "AUTH ERROR: token not found in DB")
            return self._profile(*issued)
        kind = METHODS.get(url.path)
        if kind is None:
            return _Reply(404, b"<html><body>404 Not Found</body></html>\n", "text/html")
        if method != "GET":
            return _xml(405, "Method Not Allowed", f"{method} is not allowed on {url.path}")
        with self._state_lock:
            web_auth = self.web_auth
        if web_auth is not None:
            return web_auth_required(web_auth)
        if credentials is None:
            return auth_failed()
        return self._authenticated(kind, credentials[0], credentials[1], headers)

    def _authenticated(
        self, kind: ProfileKind, username: str, password: str, headers: Mapping[str, str]
    ) -> _Reply:
        answer = _crv1_answer(password)
        with self._state_lock:
            if answer is not None:
                state_id, response = answer
                # Popped before any check: a state id is good for one answer.
                pending = self._pending.pop(state_id, None)
                if (
                    pending is None
                    or pending.username != username
                    or username not in self.users
                    or not secrets.compare_digest(
                        response.encode("utf-8"), pending.answer.encode("utf-8")
                    )
                ):
                    return auth_failed()
                challenged = True
            else:
                expected = self.users.get(username)
                if expected is None or not secrets.compare_digest(
                    password.encode("utf-8"), expected.encode("utf-8")
                ):
                    return auth_failed()
                challenged = False
            if self.enrolment_required:
                return not_enrolled()
            challenge = self.challenge
            if (
                challenge is not None
                and not challenged
                and not self._has_session(username, headers)
            ):
                state_id = secrets.token_urlsafe(24)
                self._pending[state_id] = _Pending(username, challenge.answer)
                self.challenges_issued.append(state_id)
                return crv1_challenge(challenge, state_id, username)
            if kind == "autologin" and username not in self.autologin_users:
                return need_autologin(username)
            if self.internal_error is not None:
                return internal_error(self.internal_error)
        return self._profile(kind, username)

    def _has_session(self, username: str, headers: Mapping[str, str]) -> bool:
        """Whether the request carries a session `session_tokens` holds for `username`
        (called with the state lock held)."""
        user = _b64_header(headers, "vpn-session-user")
        token = _b64_header(headers, "vpn-session-token")
        expected = self.session_tokens.get(username)
        return (
            user == username
            and token is not None
            and expected is not None
            and secrets.compare_digest(token.encode("utf-8"), expected.encode("utf-8"))
        )

    def _profile(self, kind: ProfileKind, username: str) -> _Reply:
        with self._state_lock:
            common_name = f"{username}-{len(self.issued_common_names):04d}-{secrets.token_hex(4)}"
            self.issued_common_names.append(common_name)
            days = self.certificate_days
            config_filter = self.config_filter
        cert_pem, key_pem = self.pki.issue_client(common_name, days=days)
        with self._state_lock:
            self.issued_keys.append(key_pem)
        if self.lab is not None:
            config = self.lab.client_config(cert_pem, key_pem)
        else:
            config = build_client_config(
                ca_pem=self.pki.ca_pem,
                cert_pem=cert_pem,
                key_pem=key_pem,
                tls_crypt_key=self.pki.tls_crypt_key,
                remotes=[Remote("127.0.0.1", 1194, "udp"), Remote("127.0.0.1", 1194, "tcp")],
            )
        if kind == "userlogin":
            # A userlogin profile asks for the user name and password when connecting.
            config = with_auth_user_pass(config)
        if config_filter is not None:
            config = config_filter(config)
        return _Reply(200, config.encode("utf-8"), OPENVPN_PROFILE)


def _crv1_answer(password: str) -> tuple[str, str] | None:
    """(state_id, response) of a `CRV1::<state_id>::<response>` password; None otherwise."""
    if not password.startswith("CRV1::"):
        return None
    state_id, separator, response = password[len("CRV1::") :].partition("::")
    return (state_id, response) if separator and state_id else None
