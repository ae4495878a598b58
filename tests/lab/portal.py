"""An eduVPN API v3 portal for tests and the demo.

Real TLS on 127.0.0.1 and an ephemeral port; the OAuth authorization page
approves without an identity provider. Knobs (plain attributes) let a test
make the portal misbehave, and records let it check what a client did:

- `fault`: None or one of `FAULTS` (see `handle` and the endpoint methods);
- `config_filter`: a function applied to each profile /connect returns;
- `session_seconds`: the authorization's lifetime, announced in /connect's Expires;
- `access_token_seconds`: announced in expires_in and enforced;
- `profiles`: what /info lists;
- `hostile`: a map from a request path (e.g. "/api/v3/connect", no query) to
  a `Hostile` reply, which replaces the normal answer for that path at the
  HTTP level. Its `kind` is one of `HOSTILE_KINDS`:
  - "silent": read the request, never answer (until the client hangs up,
    a reset or a stop);
  - "drip": a 200 with a chunked body of one byte every `interval` seconds, forever;
  - "drip_headers": a status line, then one header line every `interval`
    seconds, forever;
  - "huge": a 200 of `size` bytes announced in Content-Length;
  - "huge_chunked": the same without Content-Length, as chunks;
  - "huge_unframed": the same without either, ended by closing the connection;
  - "gzip_bomb": a 200 marked Content-Encoding: gzip whose body inflates to
    `size` bytes (whole MiB), whatever the request's Accept-Encoding said;
  - "raw": after `delay` seconds, `head` (status line and headers, sent
    verbatim; None builds a 200 with Content-Length and `content_type`)
    followed by `body`;
- records: `connect_calls`, `disconnect_calls`, `issued_common_names`,
  `token_grants` (the grant_type of each token request), `requests`
  (method, path and lower-cased headers of every request), and
  `hostile_served` (one `HostileServed` per hostile reply, added when its
  handler is done: how many bytes went out and why it stopped).

`reset()` restores all of them (and ends hostile replies still running);
tokens stay valid across a reset.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import email.utils
import hashlib
import html
import json
import math
import re
import secrets
import select
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlencode, urlsplit

from tests.lab.netns import OpenVPNLab, Remote, build_client_config
from tests.lab.pki import LabPKI

API_V3 = "http://eduvpn.org/api#3"
OPENVPN_PROFILE = "application/x-openvpn-profile"
CLIENT_IDS = frozenset({"org.eduvpn.app.linux", "org.letsconnect-vpn.app.linux"})
FAULTS = frozenset(
    {
        "well_known_invalid_json",
        "well_known_missing_keys",
        "info_invalid_json",
        "info_missing_keys",
        "connect_500",
        "token_500",
        "slow",
        "connect_bad_config",
    }
)
HOSTILE_KINDS = frozenset(
    {
        "silent",
        "drip",
        "drip_headers",
        "huge",
        "huge_chunked",
        "huge_unframed",
        "gzip_bomb",
        "raw",
    }
)
DEFAULT_PROFILES: list[dict[str, Any]] = [
    {
        "profile_id": "employees",
        "display_name": {"en": "Employees", "nl": "Medewerkers"},
        "vpn_proto_list": ["openvpn"],
        "default_gateway": False,
    },
    {
        "profile_id": "guests",
        "display_name": "Guests",
        "vpn_proto_list": ["openvpn"],
        "default_gateway": False,
    },
]
DEFAULT_SESSION_SECONDS = 90 * 24 * 3600
DEFAULT_ACCESS_TOKEN_SECONDS = 3600
SLOW_SECONDS = 30.0
CODE_SECONDS = 60.0
PORTAL_VERSION = "3.7.0"

_REDIRECT_URI = re.compile(r"http://(?:127\.0\.0\.1|\[::1\]):([0-9]{1,5})/callback")
_CA_BLOCK = re.compile(r"<ca>.*?</ca>\n?", re.DOTALL)
_FORM = "application/x-www-form-urlencoded"


class _Reply(Exception):
    """Raised inside a handler to answer at once."""

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}


def _json_reply(status: int, document: object, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, json.dumps(document).encode(), "application/json", headers)


def _error(status: int, error: str, headers: dict[str, str] | None = None) -> _Reply:
    return _json_reply(status, {"error": error}, headers)


def _redirect(location: str) -> _Reply:
    return _Reply(302, b"", "text/plain", {"Location": location})


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Hostile:
    """A reply that misbehaves below the API: see the module notes for the kinds."""

    kind: str
    size: int = 50 << 20
    interval: float = 0.05
    head: bytes | None = None
    body: bytes = b""
    content_type: str = "application/json"
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in HOSTILE_KINDS:
            raise ValueError(f"unknown hostile reply kind {self.kind!r}")


@dataclass(frozen=True)
class HostileServed:
    """What one hostile reply did: `sent` bytes (head included), and why it
    stopped: "done", "client closed" or "reset"."""

    path: str
    kind: str
    sent: int
    ended: str


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    code_challenge: str
    expires_at: float


@dataclass
class _Authorization:
    client_id: str


@dataclass
class _Token:
    authorization: _Authorization
    expires_at: float


class ServedPortal:
    """What the lab's portals share: real TLS on 127.0.0.1 and an ephemeral port,
    served by `_PortalServer` from a daemon thread, as a context manager."""

    _thread_name = "lab-portal"

    def __init__(self, pki: LabPKI, lab: OpenVPNLab | None) -> None:
        """What every portal holds: the lab's PKI and network, a lock for its
        state (the server's threads read it), and no server until `start`."""
        self.pki = pki
        self.lab = lab
        self._state_lock = threading.Lock()
        self._server: _PortalServer | None = None
        self._thread: threading.Thread | None = None
        # Bumped by reset(): hostile replies of an older generation end.
        self._generation = 0
        self._stopping = False

    def _on_start(self) -> None:
        """Called before serving starts."""

    def _on_stop(self) -> None:
        """Called once stopping, before the server shuts down."""

    def start(self) -> None:
        """Listen on 127.0.0.1 on an ephemeral port and serve in a daemon thread."""
        if self._server is not None:
            return
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.pki.portal_cert_path, self.pki.portal_key_path)
        self._on_start()
        # TCP_NODELAY on accepted sockets, TLS handshakes in the connection's own thread.
        self._server = _PortalServer(self, context)  # type: ignore[arg-type]
        self._stopping = False
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=self._thread_name,
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close every open connection; safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        self._on_stop()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def host(self) -> str:
        """The address the portal listens on."""
        return "127.0.0.1"

    @property
    def port(self) -> int:
        """The TCP port the portal listens on."""
        if self._server is None:
            raise RuntimeError("the portal is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """The portal's base URL, with a trailing slash."""
        return f"https://{self.host}:{self.port}/"


class TestPortal(ServedPortal):
    """An eduVPN API v3 portal for tests and the demo: real TLS on 127.0.0.1, an ephemeral port, a test login that approves without an identity provider."""

    __test__ = False  # not a test class, whatever its name says

    fault: str | None
    config_filter: Callable[[str], str] | None
    session_seconds: int
    access_token_seconds: int
    profiles: list[dict[str, Any]]
    connect_calls: list[dict[str, str]]
    disconnect_calls: int
    issued_common_names: list[str]
    token_grants: list[str]
    shortcut_logins: list[str]  # the IdP of each login through the shortcut
    hostile: dict[str, Hostile]
    requests: list[tuple[str, str, dict[str, str]]]
    hostile_served: list[HostileServed]

    def __init__(
        self,
        pki: LabPKI,
        lab: OpenVPNLab | None = None,
        *,
        profiles: list[dict[str, Any]] | None = None,
    ) -> None:
        """Prepare a portal; it listens once `start` is called."""
        super().__init__(pki, lab)
        self._initial_profiles = copy.deepcopy(
            profiles if profiles is not None else DEFAULT_PROFILES
        )
        self._wake = threading.Event()
        self._codes: dict[str, _Code] = {}
        self._access_tokens: dict[str, _Token] = {}
        self._refresh_tokens: dict[str, _Authorization] = {}
        #: The portal whose access tokens this one accepts instead of its own
        #: (a secure-internet location trusts its federation's home server).
        self.token_authority: TestPortal | None = None
        self.reset()

    # --- knobs and records ---

    def reset(self) -> None:
        """Put every knob back to its default and forget the records; tokens stay valid."""
        with self._state_lock:
            self.fault = None
            self.config_filter = None
            self.session_seconds = DEFAULT_SESSION_SECONDS
            self.access_token_seconds = DEFAULT_ACCESS_TOKEN_SECONDS
            self.profiles = copy.deepcopy(self._initial_profiles)
            self.connect_calls = []
            self.disconnect_calls = 0
            self.issued_common_names = []
            self.token_grants = []
            self.shortcut_logins = []
            self.hostile = {}
            self.requests = []
            self.hostile_served = []
            self._generation += 1
        self._wake_sleepers()

    def revoke_all(self) -> None:
        """Invalidate every access and refresh token (API: 401, refresh: invalid_grant)."""
        with self._state_lock:
            self._codes.clear()
            self._access_tokens.clear()
            self._refresh_tokens.clear()

    def expire_access_tokens(self) -> None:
        """Make access tokens invalid (401) while refresh tokens keep working."""
        with self._state_lock:
            self._access_tokens.clear()

    # --- life cycle (ServedPortal's hooks) ---

    def _on_start(self) -> None:
        self._wake.clear()

    def _on_stop(self) -> None:
        self._wake_sleepers()

    @property
    def api_endpoint(self) -> str:
        """The API v3 endpoint the discovery document names."""
        return f"{self.base_url}api/v3"

    # --- request handling (called from the server's threads) ---

    def _wake_sleepers(self) -> None:
        # Event.set wakes every waiter even when cleared right after.
        self._wake.set()
        if self._server is not None:
            self._wake.clear()

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Reply:
        """Answer one request; returns the reply to send."""
        if self.fault is not None and self.fault not in FAULTS:
            raise _error(500, f"the test set an unknown fault {self.fault!r}")
        if self.fault == "slow":
            self._wake.wait(SLOW_SECONDS)
        url = urlsplit(target)
        routes = {
            ("GET", "/.well-known/vpn-user-portal"): self._well_known,
            # A server that moved: redirects to this portal's discovery document.
            ("GET", "/moved/.well-known/vpn-user-portal"): lambda _p, _h: _redirect(
                f"{self.base_url}.well-known/vpn-user-portal"
            ),
            # A hostile or broken server: redirects to plain http.
            ("GET", "/insecure/.well-known/vpn-user-portal"): lambda _p, _h: _redirect(
                f"http://{self.host}:{self.port}/.well-known/vpn-user-portal"
            ),
            ("GET", "/_saml/login"): self._shortcut,
            ("GET", "/oauth/authorize"): self._authorize_page,
            ("POST", "/oauth/authorize"): self._authorize_decision,
            ("POST", "/oauth/token"): self._token,
            ("GET", "/api/v3/info"): self._info,
            ("POST", "/api/v3/connect"): self._connect,
            ("POST", "/api/v3/disconnect"): self._disconnect,
        }
        handler = routes.get((method, url.path))
        if handler is None:
            if any(path == url.path for _, path in routes):
                raise _error(405, "method not allowed")
            raise _error(404, "not found")
        params = _parse_form(url.query.encode()) if method == "GET" else _form_body(headers, body)
        return handler(params, headers)

    def _shortcut(self, params: dict[str, str], headers: dict[str, str]) -> _Reply:
        """A login shortcut (a server list's authentication_url_template points here):
        the identity provider is chosen (`IdP`), then on to `ReturnTo` on this portal."""
        back = params.get("ReturnTo", "")
        if not back.startswith(f"{self.base_url}oauth/authorize?"):
            raise _error(400, "ReturnTo is not this portal's authorization page")
        with self._state_lock:
            self.shortcut_logins.append(params.get("IdP", ""))
        return _redirect(back)

    def _well_known(self, params: dict[str, str], headers: dict[str, str]) -> _Reply:
        if self.fault == "well_known_invalid_json":
            return _Reply(200, b'{"api": {"http://eduvpn.org/api#3": ', "application/json")
        endpoints = {
            "api_endpoint": self.api_endpoint,
            "authorization_endpoint": f"{self.base_url}oauth/authorize",
            "token_endpoint": f"{self.base_url}oauth/token",
        }
        if self.fault == "well_known_missing_keys":
            endpoints = {"api_endpoint": self.api_endpoint}
        return _json_reply(
            200, {"api": {API_V3: endpoints}, "v": PORTAL_VERSION}, {"Cache-Control": "no-store"}
        )

    def _check_client(self, params: dict[str, str]) -> tuple[str, str]:
        """Validate client_id and redirect_uri; a failure is shown, never redirected."""
        client_id = params.get("client_id", "")
        redirect_uri = params.get("redirect_uri", "")
        if client_id not in CLIENT_IDS:
            raise _Reply(400, b"unknown client_id", "text/plain")
        match = _REDIRECT_URI.fullmatch(redirect_uri)
        if match is None or not 0 < int(match.group(1)) < 65536:
            raise _Reply(400, b"redirect_uri not allowed for this client", "text/plain")
        return client_id, redirect_uri

    def _check_request(self, params: dict[str, str]) -> tuple[str, str]:
        """Validate an authorization request; returns (client_id, redirect_uri)."""
        client_id, redirect_uri = self._check_client(params)
        problem = None
        if params.get("response_type") != "code":
            problem = "unsupported_response_type"
        elif params.get("scope") != "config":
            problem = "invalid_scope"
        elif params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
            problem = "invalid_request"
        if problem is not None:
            raise _redirect(_with_query(redirect_uri, error=problem, state=params.get("state")))
        return client_id, redirect_uri

    def _authorize_page(self, params: dict[str, str], headers: dict[str, str]) -> _Reply:
        client_id, _ = self._check_request(params)
        fields = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">\n'
            for k, v in params.items()
            if k != "approve"
        )
        page = (
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
            "<title>vpnd lab portal</title></head><body>\n"
            "<h1>vpnd lab portal</h1>\n"
            f"<p>The application <code>{html.escape(client_id)}</code> asks to download "
            "VPN configurations on your behalf.</p>\n"
            '<form method="post" action="/oauth/authorize">\n'
            f"{fields}"
            '<button type="submit" name="approve" value="yes">Approve</button>\n'
            '<button type="submit" name="approve" value="no">Deny</button>\n'
            "</form></body></html>\n"
        )
        return _Reply(200, page.encode(), "text/html; charset=utf-8")

    def _authorize_decision(self, params: dict[str, str], headers: dict[str, str]) -> _Reply:
        client_id, redirect_uri = self._check_request(params)
        state = params.get("state")
        if params.get("approve") != "yes":
            return _redirect(_with_query(redirect_uri, error="access_denied", state=state))
        code = secrets.token_urlsafe(32)
        with self._state_lock:
            self._codes[code] = _Code(
                client_id=client_id,
                redirect_uri=redirect_uri,
                code_challenge=params["code_challenge"],
                expires_at=time.monotonic() + CODE_SECONDS,
            )
        return _redirect(_with_query(redirect_uri, code=code, state=state))

    def _token(self, params: dict[str, str], headers: dict[str, str]) -> _Reply:
        grant_type = params.get("grant_type", "")
        with self._state_lock:
            self.token_grants.append(grant_type)
        if self.fault == "token_500":
            raise _error(500, "server_error")
        if grant_type == "authorization_code":
            authorization = self._redeem_code(params)
        elif grant_type == "refresh_token":
            authorization = self._redeem_refresh_token(params)
        else:
            raise _error(400, "unsupported_grant_type")
        access_token = secrets.token_urlsafe(32)
        refresh_token = secrets.token_urlsafe(32)
        with self._state_lock:
            self._access_tokens[access_token] = _Token(
                authorization, time.monotonic() + self.access_token_seconds
            )
            self._refresh_tokens[refresh_token] = authorization
        return _json_reply(
            200,
            {
                "access_token": access_token,
                "token_type": "bearer",
                "expires_in": self.access_token_seconds,
                "refresh_token": refresh_token,
                "scope": "config",
            },
            {"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    def _redeem_code(self, params: dict[str, str]) -> _Authorization:
        for name in ("code", "redirect_uri", "client_id", "code_verifier"):
            if not params.get(name):
                raise _error(400, "invalid_request")
        with self._state_lock:
            # Popped before any check: a code is good for one attempt only.
            code = self._codes.pop(params["code"], None)
        if (
            code is None
            or code.expires_at < time.monotonic()
            or code.client_id != params["client_id"]
            or code.redirect_uri != params["redirect_uri"]
            or not secrets.compare_digest(_s256(params["code_verifier"]), code.code_challenge)
        ):
            raise _error(400, "invalid_grant")
        return _Authorization(client_id=code.client_id)

    def _redeem_refresh_token(self, params: dict[str, str]) -> _Authorization:
        if not params.get("refresh_token"):
            raise _error(400, "invalid_request")
        with self._state_lock:
            authorization = self._refresh_tokens.pop(params["refresh_token"], None)
        if authorization is None:
            raise _error(400, "invalid_grant")
        client_id = params.get("client_id")
        if client_id is not None and client_id != authorization.client_id:
            raise _error(400, "invalid_grant")
        return authorization

    def _bearer(self, headers: dict[str, str]) -> _Authorization:
        if self.token_authority is not None:
            # A secure-internet location: the home server's tokens are valid here.
            return self.token_authority._bearer(headers)
        scheme, _, token = headers.get("authorization", "").partition(" ")
        with self._state_lock:
            entry = self._access_tokens.get(token.strip()) if scheme.lower() == "bearer" else None
            if entry is not None and entry.expires_at < time.monotonic():
                del self._access_tokens[token.strip()]
                entry = None
        if entry is None:
            raise _error(401, "invalid_token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return entry.authorization

    def _info(self, params: dict[str, str], headers: dict[str, str]) -> _Reply:
        self._bearer(headers)
        if self.fault == "info_invalid_json":
            return _Reply(200, b'{"info": {"profile_list": [', "application/json")
        if self.fault == "info_missing_keys":
            return _json_reply(200, {"info": {}})
        return _json_reply(200, {"info": {"profile_list": self.profiles}})

    def _connect(self, params: dict[str, str], headers: dict[str, str]) -> _Reply:
        self._bearer(headers)
        if self.fault == "connect_500":
            raise _error(500, "internal server error")
        accepted = {
            part.split(";")[0].strip().lower() for part in headers.get("accept", "").split(",")
        }
        if OPENVPN_PROFILE not in accepted:
            raise _error(406, "no supported VPN protocol in the Accept header")
        profile_id = params.get("profile_id")
        if not profile_id:
            raise _error(400, "missing profile_id")
        prefer_tcp = params.get("prefer_tcp", "no")
        if prefer_tcp not in ("yes", "no"):
            raise _error(400, "prefer_tcp must be yes or no")
        profile = next((p for p in self.profiles if p.get("profile_id") == profile_id), None)
        if profile is None:
            raise _error(404, "no such profile")
        if "openvpn" not in profile.get("vpn_proto_list", []):
            raise _error(406, "the profile does not offer OpenVPN")
        with self._state_lock:
            self.connect_calls.append(dict(params))
            common_name = f"lab-{len(self.issued_common_names):04d}-{secrets.token_hex(4)}"
            self.issued_common_names.append(common_name)
            session_seconds = self.session_seconds
        days = max(1, math.ceil(session_seconds / 86400))
        cert_pem, key_pem = self.pki.issue_client(common_name, days=days)
        config = self._client_config(cert_pem, key_pem, prefer_tcp=prefer_tcp == "yes")
        if self.fault == "connect_bad_config":
            config = _CA_BLOCK.sub("", config)
        if self.config_filter is not None:
            config = self.config_filter(config)
        expires = email.utils.formatdate(time.time() + session_seconds, usegmt=True)
        return _Reply(200, config.encode(), OPENVPN_PROFILE, {"Expires": expires})

    def _client_config(self, cert_pem: str, key_pem: str, *, prefer_tcp: bool) -> str:
        if self.lab is not None:
            return self.lab.client_config(cert_pem, key_pem, prefer_tcp=prefer_tcp)
        udp, tcp = Remote("127.0.0.1", 1194, "udp"), Remote("127.0.0.1", 1194, "tcp")
        return build_client_config(
            ca_pem=self.pki.ca_pem,
            cert_pem=cert_pem,
            key_pem=key_pem,
            tls_crypt_key=self.pki.tls_crypt_key,
            remotes=[tcp, udp] if prefer_tcp else [udp, tcp],
        )

    def _disconnect(self, params: dict[str, str], headers: dict[str, str]) -> _Reply:
        self._bearer(headers)
        with self._state_lock:
            self.disconnect_calls += 1
        return _Reply(204)


def _with_query(uri: str, **params: str | None) -> str:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"{uri}{'&' if '?' in uri else '?'}{query}"


def _parse_form(raw: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise _error(400, "invalid_request") from None
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise _error(400, "invalid_request")  # RFC 6749 forbids repeated parameters
        params[key] = value
    return params


def _form_body(headers: dict[str, str], body: bytes) -> dict[str, str]:
    if not body:
        return {}
    if headers.get("content-type", "").split(";")[0].strip().lower() != _FORM:
        raise _error(400, "invalid_request")
    return _parse_form(body)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "vpnd-lab-portal"
    sys_version = ""
    # Idle keep-alive connections give their thread back after this long.
    timeout = 60
    server: _PortalServer

    def setup(self) -> None:
        self.request.settimeout(self.timeout)
        self.request.do_handshake()
        super().setup()

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or (length is not None and not length.isdigit()):
            self.close_connection = True
            self._send(_error(411, "send a Content-Length"))
            return
        body = self.rfile.read(int(length)) if length else b""
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            # Repeated field lines make one comma-separated list (RFC 9110,
            # 5.3): eduvpn-common sends one Accept line per VPN protocol.
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        portal = self.server.portal
        path = urlsplit(self.path).path
        with portal._state_lock:
            portal.requests.append((method, path, headers))
            hostile = portal.hostile.get(path)
            generation = portal._generation
        if hostile is not None:
            self.close_connection = True
            _HostileReply(self, portal, generation).serve(path, hostile)
            return
        try:
            reply = self.server.portal.handle(method, self.path, headers, body)
        except _Reply as raised:
            reply = raised
        except Exception as exc:  # the portal must answer, whatever broke
            reply = _error(500, f"portal bug: {exc!r}")
        self._send(reply)

    def _send(self, reply: _Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.status != 204:
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if reply.body:
            self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests read records, not logs."""


class _HostileReply:
    """Serves one `Hostile` reply on a handler's connection."""

    def __init__(self, handler: _Handler, portal: TestPortal, generation: int) -> None:
        self._handler = handler
        self._portal = portal
        self._generation = generation
        self._sent = 0

    def _over(self) -> bool:
        return self._portal._generation != self._generation or self._portal._stopping

    def _write(self, data: bytes) -> None:
        self._handler.wfile.write(data)
        self._sent += len(data)

    def _pause(self, seconds: float) -> None:
        """Wait, but notice a client that hung up (its socket turns readable at EOF)."""
        sock = self._handler.connection
        readable, _, _ = select.select([sock], [], [], seconds)
        if readable and not sock.recv(4096):
            raise ConnectionResetError("the client closed the connection")

    def _stream(self, total: int, chunked: bool) -> None:
        block = b" " * 65536
        left = total
        while left > 0 and not self._over():
            piece = block[: min(left, len(block))]
            self._write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            left -= len(piece)
        if chunked and not self._over():
            self._write(b"0\r\n\r\n")

    def serve(self, path: str, hostile: Hostile) -> None:
        ended = "done"
        try:
            self._serve(hostile)
            if self._over():
                ended = "reset"
        except (OSError, ssl.SSLError, ValueError):
            ended = "client closed"
        with self._portal._state_lock:
            self._portal.hostile_served.append(
                HostileServed(path=path, kind=hostile.kind, sent=self._sent, ended=ended)
            )

    def _serve(self, hostile: Hostile) -> None:
        kind = hostile.kind
        status = b"HTTP/1.1 200 OK\r\n"
        content_type = b"Content-Type: %s\r\n" % hostile.content_type.encode()
        if kind == "silent":
            while not self._over():
                self._pause(0.1)
        elif kind == "drip":
            self._write(status + content_type + b"Transfer-Encoding: chunked\r\n\r\n")
            while not self._over():
                self._write(b"1\r\n \r\n")
                self._pause(hostile.interval)
        elif kind == "drip_headers":
            self._write(status)
            count = 0
            while not self._over():
                self._write(b"X-Drip-%d: x\r\n" % count)
                count += 1
                self._pause(hostile.interval)
        elif kind == "huge":
            self._write(status + content_type + b"Content-Length: %d\r\n\r\n" % hostile.size)
            self._stream(hostile.size, chunked=False)
        elif kind == "huge_chunked":
            self._write(status + content_type + b"Transfer-Encoding: chunked\r\n\r\n")
            self._stream(hostile.size, chunked=True)
        elif kind == "huge_unframed":
            self._write(status + content_type + b"Connection: close\r\n\r\n")
            self._stream(hostile.size, chunked=False)
        elif kind == "gzip_bomb":
            self._write(
                status + content_type + b"Content-Encoding: gzip\r\nConnection: close\r\n\r\n"
            )
            # A gzip stream may be a run of members: one MiB of spaces,
            # compressed once, repeated.
            packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            member = packer.compress(b" " * (1 << 20)) + packer.flush()
            for _ in range(max(1, hostile.size >> 20)):
                if self._over():
                    break
                self._write(member)
        else:  # raw
            end = time.monotonic() + hostile.delay
            while not self._over() and time.monotonic() < end:
                self._pause(min(0.05, max(0.0, end - time.monotonic())))
            head = hostile.head
            if head is None:
                head = status + content_type + b"Content-Length: %d\r\n\r\n" % len(hostile.body)
            self._write(head + hostile.body)


class _PortalServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, portal: TestPortal, context: ssl.SSLContext) -> None:
        self.portal = portal
        self._context = context
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        # Without it, head and body (two writes) wait out the client's delayed
        # ACK: 40 ms on every keep-alive request.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The handshake runs in the connection's own thread (see _Handler.setup),
        # so one slow client cannot stall the accept loop.
        tls = self._context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self._connections_lock:
            self._connections.add(tls)
        return tls, address

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                # The plain socket's shutdown: it wakes a thread blocked in a TLS read.
                socket.socket.shutdown(connection, socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Broken connections are the clients' business; keep stderr clean."""
