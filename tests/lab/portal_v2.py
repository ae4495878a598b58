"""An eduVPN API v2 (and API v1) portal for tests, as vpn-user-portal 2.x and 1.x served them.

Real TLS on 127.0.0.1 and an ephemeral port, through the same server and
handler classes as the API v3 portal (tests.lab.portal); the OAuth
authorization page approves without an identity provider.

- `GET /info.json`: API v2's document (`api_version = 2`, the default) or
  API v1's (`api_version = 1`);
- OAuth at `/portal/_oauth/authorize`: the code flow with PKCE
  (`response_type=code`, v2) or the implicit grant (`response_type=token`,
  v1: the token comes back in the redirect's fragment); the token endpoint
  `/portal/oauth.php/token` (authorization_code, refresh_token);
- API v2 under `/portal/api.php/`: profile_list, user_info, system_messages,
  user_messages, create_keypair, profile_config, check_certificate;
- API v1 under `/portal/api/`: profile_list, create_config,
  create_certificate, system_messages, user_messages.

Knobs (plain attributes): `api_version`; `profiles`; `user_disabled`,
`two_factor_enrolled`; `keypair_days` (validity of issued certificates);
`certificate_reason` (None: check_certificate tells the truth about issued
certificates; a reason such as "certificate_expired": every check reports
that); `failures` (call -> error text: that call answers `ok: false`);
`system_messages`, `user_messages`. `expire_certificates()` makes every
issued certificate count as expired for check_certificate.

Records: `requests` (method, path, lower-cased headers), `issued_common_names`,
`issued_keys` (the private keys handed out, PEM),
`token_grants`, `calls` (each API call's name and parameters).
`reset()` restores knobs and records; tokens stay valid.
"""

from __future__ import annotations

import copy
import html
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from tests.lab.netns import OpenVPNLab, Remote, build_client_config
from tests.lab.pki import LabPKI
from tests.lab.portal import (
    CLIENT_IDS,
    CODE_SECONDS,
    DEFAULT_ACCESS_TOKEN_SECONDS,
    Hostile,
    HostileServed,
    ServedPortal,
    _error,
    _form_body,
    _json_reply,
    _parse_form,
    _redirect,
    _Reply,
    _s256,
    _with_query,
)

API_V2 = "http://eduvpn.org/api#2"
OPENVPN_PROFILE = "application/x-openvpn-profile"
DEFAULT_PROFILES: list[dict[str, Any]] = [
    {
        "profile_id": "internet",
        "display_name": {"en-US": "Internet Access", "nl": "Internettoegang"},
        "two_factor": False,
        "default_gateway": True,
    },
    {"profile_id": "office", "display_name": "Office", "two_factor": True},
]
DEFAULT_KEYPAIR_DAYS = 90
V2_CALLS = frozenset(
    {
        "profile_list",
        "user_info",
        "system_messages",
        "user_messages",
        "create_keypair",
        "profile_config",
        "check_certificate",
    }
)
V1_CALLS = frozenset(
    {"profile_list", "create_config", "create_certificate", "system_messages", "user_messages"}
)
_POST_CALLS = frozenset({"create_keypair", "create_config", "create_certificate"})
_REDIRECT_URI = re.compile(r"http://(?:127\.0\.0\.1|\[::1\]):([0-9]{1,5})/callback")
_KEY_MATERIAL = re.compile(r"<(cert|key)>\n.*?</\1>\n", re.DOTALL)


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    code_challenge: str
    expires_at: float


@dataclass
class _Issued:
    expires_at: float
    expired: bool = False


class TestPortalV2(ServedPortal):
    """An eduVPN API v2 / v1 portal for tests: real TLS on 127.0.0.1, an ephemeral port."""

    __test__ = False  # not a test class, whatever its name says
    _thread_name = "lab-portal-v2"

    profiles: list[dict[str, Any]]
    user_disabled: bool
    two_factor_enrolled: bool
    keypair_days: int
    certificate_reason: str | None
    failures: dict[str, str]
    system_messages: list[dict[str, Any]]
    user_messages: list[dict[str, Any]]
    requests: list[tuple[str, str, dict[str, str]]]
    issued_common_names: list[str]
    issued_keys: list[str]
    token_grants: list[str]
    calls: list[tuple[str, dict[str, str]]]
    # Read by the shared handler (tests.lab.portal); this portal serves no hostile replies.
    hostile: dict[str, Hostile]
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
        self._grants: dict[str, _Grant] = {}
        self._access_tokens: dict[str, float] = {}
        self._refresh_tokens: set[str] = set()
        self._certificates: dict[str, _Issued] = {}
        self.reset()

    def reset(self) -> None:
        """Put every knob back to its default and forget the records; tokens stay valid."""
        with self._state_lock:
            self.api_version = 2
            self.profiles = copy.deepcopy(self._initial_profiles)
            self.user_disabled = False
            self.two_factor_enrolled = False
            self.keypair_days = DEFAULT_KEYPAIR_DAYS
            self.certificate_reason = None
            self.failures = {}
            self.system_messages = []
            self.user_messages = []
            self.requests = []
            self.issued_common_names = []
            self.issued_keys = []
            self.token_grants = []
            self.calls = []
            self.hostile = {}
            self.hostile_served = []
            self._generation += 1

    def expire_certificates(self) -> None:
        """Make check_certificate report every certificate issued so far as expired."""
        with self._state_lock:
            for issued in self._certificates.values():
                issued.expired = True

    def revoke_all(self) -> None:
        """Invalidate every grant and token (API: 401, refresh: invalid_grant)."""
        with self._state_lock:
            self._grants.clear()
            self._access_tokens.clear()
            self._refresh_tokens.clear()

    @property
    def api_base_uri(self) -> str:
        """API v2's base, as info.json names it."""
        return f"{self.base_url}portal/api.php"

    # --- request handling (called from the server's threads) ---

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Reply:
        """Answer one request; returns the reply to send."""
        path = urlsplit(target).path
        params = (
            _parse_form(urlsplit(target).query.encode())
            if method == "GET"
            else _form_body(headers, body)
        )
        routes = {
            ("GET", "/info.json"): self._info_json,
            ("GET", "/portal/_oauth/authorize"): self._authorize_page,
            ("POST", "/portal/_oauth/authorize"): self._authorize_decision,
            ("POST", "/portal/oauth.php/token"): self._token,
        }
        handler = routes.get((method, path))
        if handler is not None:
            return handler(params, headers)
        for prefix, calls in (("/portal/api.php/", V2_CALLS), ("/portal/api/", V1_CALLS)):
            call = path.removeprefix(prefix)
            if path.startswith(prefix) and call in calls:
                if method != ("POST" if call in _POST_CALLS else "GET"):
                    raise _error(405, "method not allowed")
                return self._api(call, params, headers)
        raise _error(404, "not found")

    def _info_json(self, params: dict[str, str], headers: dict[str, str]) -> _Reply:
        authorize = f"{self.base_url}portal/_oauth/authorize"
        if self.api_version == 1:
            api = {call: f"{self.base_url}portal/api/{call}" for call in sorted(V1_CALLS)}
            return _json_reply(200, {"api": api, "version": 1, "authorization_endpoint": authorize})
        entry = {
            "api_base_uri": self.api_base_uri,
            "authorization_endpoint": authorize,
            "token_endpoint": f"{self.base_url}portal/oauth.php/token",
        }
        return _json_reply(200, {"api": {API_V2: entry}})

    # --- OAuth ---

    def _check_request(self, params: dict[str, str]) -> tuple[str, str, str]:
        """Validate an authorization request; returns (client_id, redirect_uri, response_type)."""
        client_id = params.get("client_id", "")
        redirect_uri = params.get("redirect_uri", "")
        if client_id not in CLIENT_IDS:
            raise _Reply(400, b"unknown client_id", "text/plain")
        match = _REDIRECT_URI.fullmatch(redirect_uri)
        if match is None or not 0 < int(match.group(1)) < 65536:
            raise _Reply(400, b"redirect_uri not allowed for this client", "text/plain")
        response_type = params.get("response_type", "")
        problem = None
        if response_type not in ("code", "token"):
            problem = "unsupported_response_type"
        elif params.get("scope") != "config":
            problem = "invalid_scope"
        elif response_type == "code" and (
            params.get("code_challenge_method") != "S256" or not params.get("code_challenge")
        ):
            problem = "invalid_request"
        if problem is not None:
            raise _redirect(_with_query(redirect_uri, error=problem, state=params.get("state")))
        return client_id, redirect_uri, response_type

    def _authorize_page(self, params: dict[str, str], headers: dict[str, str]) -> _Reply:
        client_id, _, _ = self._check_request(params)
        fields = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">\n'
            for k, v in params.items()
            if k != "approve"
        )
        page = (
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
            "<title>vpnd lab portal v2</title></head><body>\n"
            f"<p>The application <code>{html.escape(client_id)}</code> asks to download "
            "VPN configurations on your behalf.</p>\n"
            '<form method="post" action="/portal/_oauth/authorize">\n'
            f"{fields}"
            '<button type="submit" name="approve" value="yes">Approve</button>\n'
            '<button type="submit" name="approve" value="no">Deny</button>\n'
            "</form></body></html>\n"
        )
        return _Reply(200, page.encode(), "text/html; charset=utf-8")

    def _authorize_decision(self, params: dict[str, str], headers: dict[str, str]) -> _Reply:
        client_id, redirect_uri, response_type = self._check_request(params)
        state = params.get("state")
        implicit = response_type == "token"
        if params.get("approve") != "yes":
            fields = {"error": "access_denied", **({"state": state} if state else {})}
            if implicit:
                return _redirect(f"{redirect_uri}#{urlencode(fields)}")
            return _redirect(_with_query(redirect_uri, **fields))
        if implicit:
            # API v1: the token itself, in the fragment; there is no refresh token.
            token = self._new_access_token()
            fragment = {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": str(DEFAULT_ACCESS_TOKEN_SECONDS),
                **({"state": state} if state else {}),
            }
            return _redirect(f"{redirect_uri}#{urlencode(fragment)}")
        code = secrets.token_urlsafe(32)
        with self._state_lock:
            self._grants[code] = _Grant(
                client_id, redirect_uri, params["code_challenge"], time.monotonic() + CODE_SECONDS
            )
        return _redirect(_with_query(redirect_uri, code=code, state=state))

    def _new_access_token(self) -> str:
        token = secrets.token_urlsafe(32)
        with self._state_lock:
            self._access_tokens[token] = time.monotonic() + DEFAULT_ACCESS_TOKEN_SECONDS
        return token

    def _token(self, params: dict[str, str], headers: dict[str, str]) -> _Reply:
        grant_type = params.get("grant_type", "")
        with self._state_lock:
            self.token_grants.append(grant_type)
        if grant_type == "authorization_code":
            with self._state_lock:
                # Popped before any check: a code is good for one attempt only.
                grant = self._grants.pop(params.get("code", ""), None)
            if (
                grant is None
                or grant.expires_at < time.monotonic()
                or grant.client_id != params.get("client_id")
                or grant.redirect_uri != params.get("redirect_uri")
                or not secrets.compare_digest(
                    _s256(params.get("code_verifier", "")), grant.code_challenge
                )
            ):
                raise _error(400, "invalid_grant")
        elif grant_type == "refresh_token":
            with self._state_lock:
                known = params.get("refresh_token", "") in self._refresh_tokens
                self._refresh_tokens.discard(params.get("refresh_token", ""))
            if not known:
                raise _error(400, "invalid_grant")
        else:
            raise _error(400, "unsupported_grant_type")
        refresh_token = secrets.token_urlsafe(32)
        with self._state_lock:
            self._refresh_tokens.add(refresh_token)
        return _json_reply(
            200,
            {
                "access_token": self._new_access_token(),
                "token_type": "bearer",
                "expires_in": DEFAULT_ACCESS_TOKEN_SECONDS,
                "refresh_token": refresh_token,
            },
            {"Cache-Control": "no-store"},
        )

    def _bearer(self, headers: dict[str, str]) -> None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        with self._state_lock:
            expires_at = (
                self._access_tokens.get(token.strip()) if scheme.lower() == "bearer" else None
            )
        if expires_at is None or expires_at < time.monotonic():
            raise _error(401, "invalid_token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})

    # --- the API ---

    def _api(self, call: str, params: dict[str, str], headers: dict[str, str]) -> _Reply:
        self._bearer(headers)
        with self._state_lock:
            self.calls.append((call, dict(params)))
            failure = self.failures.get(call)
        if failure is not None:
            return _json_reply(200, {call: {"ok": False, "error": failure}})
        if call == "profile_list":
            data: object = self.profiles
        elif call == "user_info":
            data = {
                "user_id": "lab-user",
                "is_disabled": self.user_disabled,
                "two_factor_enrolled": self.two_factor_enrolled,
                "two_factor_enrolled_with": ["totp"] if self.two_factor_enrolled else [],
            }
        elif call in ("system_messages", "user_messages"):
            data = self.system_messages if call == "system_messages" else self.user_messages
        elif call in ("create_keypair", "create_certificate"):
            cert_pem, key_pem = self._issue()
            data = {"certificate": cert_pem, "private_key": key_pem}
        elif call == "check_certificate":
            data = self._check_certificate(params.get("common_name", ""))
        elif call == "profile_config":
            return self._profile_config(params.get("profile_id", ""), with_key_pair=False)
        else:  # create_config
            return self._profile_config(params.get("profile_id", ""), with_key_pair=True)
        return _json_reply(200, {call: {"ok": True, "data": data}})

    def _issue(self) -> tuple[str, str]:
        with self._state_lock:
            common_name = secrets.token_hex(16)
            self.issued_common_names.append(common_name)
            days = self.keypair_days
            self._certificates[common_name] = _Issued(time.time() + days * 86400)
        cert_pem, key_pem = self.pki.issue_client(common_name, days=days)
        with self._state_lock:
            self.issued_keys.append(key_pem)
        return cert_pem, key_pem

    def _check_certificate(self, common_name: str) -> dict[str, Any]:
        if not common_name:
            raise _json_reply(
                400, {"check_certificate": {"ok": False, "error": "missing common_name"}}
            )
        with self._state_lock:
            issued = self._certificates.get(common_name)
            forced = self.certificate_reason
        if forced is not None:
            return {"is_valid": False, "reason": forced}
        if self.user_disabled:
            return {"is_valid": False, "reason": "user_disabled"}
        if issued is None:
            return {"is_valid": False, "reason": "certificate_missing"}
        if issued.expired or issued.expires_at < time.time():
            return {"is_valid": False, "reason": "certificate_expired"}
        return {"is_valid": True}

    def _profile_config(self, profile_id: str, *, with_key_pair: bool) -> _Reply:
        call = "create_config" if with_key_pair else "profile_config"
        profile = next((p for p in self.profiles if p.get("profile_id") == profile_id), None)
        if profile is None:
            return _json_reply(200, {call: {"ok": False, "error": "profile not available"}})
        cert_pem, key_pem = self._issue() if with_key_pair else ("", "")
        if self.lab is not None:
            config = self.lab.client_config(cert_pem or "-", key_pem or "-")
        else:
            config = build_client_config(
                ca_pem=self.pki.ca_pem,
                cert_pem=cert_pem or "-",
                key_pem=key_pem or "-",
                tls_crypt_key=self.pki.tls_crypt_key,
                remotes=[Remote("127.0.0.1", 1194, "udp"), Remote("127.0.0.1", 1194, "tcp")],
            )
        if not with_key_pair:
            # API v2's profile_config leaves the key pair to the client.
            config = _KEY_MATERIAL.sub("", config)
        return _Reply(200, config.encode(), OPENVPN_PROFILE)
