"""eduVPN API v1: info.json, create_config / create_certificate, the OAuth implicit grant."""

from __future__ import annotations

import contextlib
import json
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.certs import DAY, key_pem, make_pair, new_key
from vpnd.errors import (
    ApiCallFailed,
    AuthorizationDenied,
    AuthorizationFailed,
    CertificateRejected,
    InvalidArgument,
    ProfileUnavailable,
    ServerError,
    StateMismatch,
)
from vpnd.protocols import ovpnconfig
from vpnd.protocols.eduvpn_v1 import (
    CALLBACK_PAGE,
    V1Endpoints,
    authorization_url,
    callback_page,
    create_certificate_request,
    create_config_request,
    messages_request,
    parse_create_certificate,
    parse_create_config,
    parse_fragment,
    parse_info_json,
    parse_messages,
    parse_profile_list,
    parse_redirect,
    profile_list_request,
)
from vpnd.protocols.oauth import Tokens

DOC_URL = "https://vpn.example/info.json"
AUTHORIZE = "https://vpn.example/portal/_oauth/authorize"
CALLS = {
    "create_config": "https://vpn.example/portal/api/create_config",
    "profile_list": "https://vpn.example/portal/api/profile_list",
    "system_messages": "https://vpn.example/portal/api/system_messages",
    "user_messages": "https://vpn.example/portal/api/user_messages",
}
INFO = {"api": CALLS, "version": 1, "authorization_endpoint": AUTHORIZE}
STATE = "s7Wl8tq0nM3Zx5N2yJ1vKc9dP4fRgHbA6eQiUoTwXLE"


def dumps(doc: object) -> bytes:
    return json.dumps(doc).encode()


# --- info.json -------------------------------------------------------------------


def test_parse_info_json_spec_example() -> None:
    endpoints = parse_info_json(dumps(INFO), DOC_URL)
    assert endpoints.authorization_endpoint == AUTHORIZE
    assert dict(endpoints.calls) == CALLS
    assert endpoints.url("profile_list") == "https://vpn.example/portal/api/profile_list"


def test_parse_info_json_resolves_relative_urls_and_ignores_unknown_calls() -> None:
    doc = {
        "version": 1,
        "authorization_endpoint": "portal/_oauth/authorize",
        "api": {
            "create_config": "/portal/api/create_config",
            "profile_list": "portal/api/profile_list",
            "delete_everything": "https://elsewhere.example/x",
        },
    }
    endpoints = parse_info_json(dumps(doc), "https://vpn.example/sub/info.json")
    assert endpoints.authorization_endpoint == "https://vpn.example/sub/portal/_oauth/authorize"
    assert endpoints.calls == {
        "create_config": "https://vpn.example/portal/api/create_config",
        "profile_list": "https://vpn.example/sub/portal/api/profile_list",
    }
    with pytest.raises(ServerError, match="does not offer the user_messages call"):
        endpoints.url("user_messages")


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ([], "not a JSON object"),
        ({**INFO, "version": 3}, '"version": 1'),
        ({**INFO, "version": True}, '"version": 1'),
        ({**INFO, "version": "1"}, '"version": 1'),
        ({k: v for k, v in INFO.items() if k != "version"}, '"version": 1'),
        ({**INFO, "version": 2}, "without a token endpoint"),
        ({**INFO, "api": []}, '"api"'),
        ({**INFO, "api": {"profile_list": CALLS["profile_list"]}}, "create_config"),
        ({**INFO, "api": {**CALLS, "create_config": "http://vpn.example/c"}}, "create_config"),
        ({**INFO, "authorization_endpoint": None}, "authorization_endpoint"),
        ({**INFO, "authorization_endpoint": "http://vpn.example/a"}, "authorization_endpoint"),
    ],
)
def test_parse_info_json_rejects(doc: object, problem: str) -> None:
    with pytest.raises(ServerError) as caught:
        parse_info_json(dumps(doc), DOC_URL)
    assert problem in caught.value.message


# --- requests and replies ------------------------------------------------------------

ENDPOINTS = V1Endpoints(
    authorization_endpoint=AUTHORIZE,
    calls={**CALLS, "create_certificate": "https://vpn.example/portal/api/create_certificate"},
)


def test_requests() -> None:
    request = create_config_request(ENDPOINTS, "internet", "eduVPN for Linux")
    assert (request.call, request.method, request.url) == (
        "create_config",
        "POST",
        "https://vpn.example/portal/api/create_config",
    )
    assert dict(request.params) == {"display_name": "eduVPN for Linux", "profile_id": "internet"}
    certificate = create_certificate_request(ENDPOINTS)
    assert (certificate.method, dict(certificate.params)) == ("POST", {"display_name": "vpnd"})
    assert profile_list_request(ENDPOINTS).url == CALLS["profile_list"]
    assert messages_request(ENDPOINTS, "user_messages").method == "GET"
    with pytest.raises(InvalidArgument):
        create_config_request(ENDPOINTS, "no such/profile")
    with pytest.raises(ServerError, match="create_certificate"):
        create_certificate_request(V1Endpoints("https://vpn.example/a", {}))


def test_parse_profile_list_with_two_factor() -> None:
    body = dumps(
        {
            "profile_list": {
                "data": [
                    {
                        "display_name": "Internet Access",
                        "profile_id": "internet",
                        "two_factor": False,
                    },
                    {"display_name": "Office", "profile_id": "office", "two_factor": True},
                ],
                "ok": True,
            }
        }
    )
    internet, office = parse_profile_list(body)
    assert (internet.profile_id, internet.display_name, internet.two_factor) == (
        "internet",
        "Internet Access",
        False,
    )
    assert office.two_factor is True


def test_parse_messages() -> None:
    body = dumps(
        {
            "user_messages": {
                "data": [
                    {
                        "message": "Your account has been disabled. Please contact support.",
                        "date_time": "2016-12-02T10:43:10Z",
                        "type": "notification",
                    }
                ],
                "ok": True,
            }
        }
    )
    (message,) = parse_messages("user_messages", body)
    assert message.text.startswith("Your account has been disabled.")


CONFIG = """client
dev tun
remote vpn.example 1194 udp
<ca>
-----BEGIN CERTIFICATE-----
MIIB
-----END CERTIFICATE-----
</ca>
"""


def full_config(cert_pem: str, private_pem: str) -> bytes:
    return f"{CONFIG}<cert>\n{cert_pem}</cert>\n<key>\n{private_pem}</key>\n".encode()


def test_parse_create_config() -> None:
    now = time.time()
    cert_pem, private_pem, _ = make_pair("v1-client", not_after=now + 3 * DAY)
    config = parse_create_config(
        "application/x-openvpn-profile", full_config(cert_pem, private_pem), now=now
    )
    assert config.text.startswith(CONFIG)
    assert config.text.count("<cert>") == 1 and "<key>" not in config.text
    assert "PRIVATE KEY" not in config.text
    assert config.private_key.startswith("-----BEGIN PRIVATE KEY-----")
    assert config.certificate == cert_pem
    assert abs(config.expires_at - (now + 3 * DAY)) < 1
    sanitized = ovpnconfig.sanitize(config.text)
    assert ovpnconfig.inline_block(sanitized, "key") is None


def test_create_config_whose_certificate_does_not_match_its_key() -> None:
    cert_pem, _, _ = make_pair()
    with pytest.raises(CertificateRejected, match="does not belong"):
        parse_create_config(
            "application/x-openvpn-profile",
            full_config(cert_pem, key_pem(new_key())),
            now=time.time(),
        )


def test_create_config_with_an_expired_certificate() -> None:
    now = time.time()
    cert_pem, private_pem, _ = make_pair(not_before=now - 2 * DAY, not_after=now - DAY)
    with pytest.raises(CertificateRejected, match="already expired"):
        parse_create_config("text/plain", full_config(cert_pem, private_pem), now=now)


@pytest.mark.parametrize(
    "body",
    [
        CONFIG.encode(),
        CONFIG.encode() + b"<cert>\nx\n</cert>\n",
        CONFIG.encode() + b"<key>\nx\n</key>\n",
    ],
)
def test_create_config_without_its_pair(body: bytes) -> None:
    with pytest.raises(CertificateRejected, match="exactly one client certificate and key"):
        parse_create_config("application/x-openvpn-profile", body, now=time.time())


def test_create_config_failure_is_named() -> None:
    body = dumps({"create_config": {"ok": False, "error": "profile not available"}})
    with pytest.raises(ProfileUnavailable):
        parse_create_config("application/json", body, now=time.time())


def test_parse_create_certificate() -> None:
    now = time.time()
    cert_pem, private_pem, _ = make_pair("cc")
    data = {"certificate": cert_pem, "private_key": private_pem}
    body = dumps({"create_certificate": {"ok": True, "data": data}})
    assert parse_create_certificate(body, now=now).common_name == "cc"
    with pytest.raises(ServerError):
        # The reply must be for the call that was made.
        parse_create_certificate(dumps({"create_keypair": {"ok": True, "data": data}}), now=now)
    with pytest.raises(ApiCallFailed):
        parse_create_certificate(
            dumps({"create_certificate": {"ok": False, "error": "nope"}}), now=now
        )


# --- OAuth implicit grant --------------------------------------------------------------


def test_authorization_url() -> None:
    url = authorization_url(
        AUTHORIZE,
        client_id="org.eduvpn.app.linux",
        redirect_uri="http://127.0.0.1:8123/callback",
        state=STATE,
    )
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == AUTHORIZE
    assert parse_qs(parts.query) == {
        "client_id": ["org.eduvpn.app.linux"],
        "redirect_uri": ["http://127.0.0.1:8123/callback"],
        "response_type": ["token"],
        "scope": ["config"],
        "state": [STATE],
    }
    with_query = authorization_url(
        "https://vpn.example/authorize?tenant=a", client_id="c", redirect_uri="r", state="s"
    )
    assert with_query.startswith("https://vpn.example/authorize?tenant=a&client_id=c")
    with pytest.raises(ServerError, match="https"):
        authorization_url("http://vpn.example/a", client_id="c", redirect_uri="r", state="s")


def test_parse_fragment() -> None:
    fragment = f"access_token=abc.DEF-123&token_type=bearer&expires_in=3600&state={STATE}"
    assert parse_fragment(fragment, STATE, now=1000.0) == Tokens("abc.DEF-123", "", 4600.0)
    assert parse_fragment("#" + fragment, STATE, now=1000.0).access_token == "abc.DEF-123"
    no_expiry = parse_fragment(f"access_token=t&token_type=Bearer&state={STATE}", STATE, now=5.0)
    assert no_expiry.expires_at == 0.0
    assert "abc" not in repr(parse_fragment(fragment, STATE, now=0.0))


def test_parse_redirect() -> None:
    url = f"http://127.0.0.1:8123/callback#access_token=tok&token_type=bearer&state={STATE}"
    assert parse_redirect(url, STATE, now=0.0).access_token == "tok"
    with pytest.raises(AuthorizationDenied):
        parse_redirect(
            f"http://127.0.0.1:8123/callback?error=access_denied&state={STATE}", STATE, now=0.0
        )


@pytest.mark.parametrize(
    ("fragment", "kind", "problem"),
    [
        ("access_token=tok&token_type=bearer", StateMismatch, "state mismatch"),
        ("access_token=tok&token_type=bearer&state=other", StateMismatch, "state mismatch"),
        # The state is checked first: a foreign redirect's error is not ours to report.
        ("error=access_denied&state=other", StateMismatch, "state mismatch"),
        (f"state={STATE}", AuthorizationFailed, "no access token"),
        (f"access_token=&state={STATE}", AuthorizationFailed, "no access token"),
        (f"token_type=bearer&state={STATE}", AuthorizationFailed, "no access token"),
        (f"error=access_denied&state={STATE}", AuthorizationDenied, "denied"),
        (
            f"error=access_denied&error_description=User+said+no%0A&state={STATE}",
            AuthorizationDenied,
            "User said no",
        ),
        (f"error=server_error&state={STATE}", AuthorizationFailed, "server_error"),
        (f"error=%3Cscript%3E&state={STATE}", AuthorizationFailed, "unknown error"),
        # Found by the property test below: a server echoing the state as the error.
        (f"error={STATE}&state={STATE}", AuthorizationFailed, "unknown error"),
        (
            f"error=server_error&error_description=bad+{STATE}&state={STATE}",
            AuthorizationFailed,
            "bad (state)",
        ),
        (f"access_token=t%0Ab&state={STATE}", AuthorizationFailed, "malformed access token"),
        (f"access_token={'x' * 20000}&state={STATE}", AuthorizationFailed, "too long"),
        (f"access_token=t&token_type=mac&state={STATE}", AuthorizationFailed, "token type"),
        (f"access_token=t&expires_in=-5&state={STATE}", AuthorizationFailed, "expires_in"),
        (f"access_token=t&expires_in=1e3&state={STATE}", AuthorizationFailed, "expires_in"),
        (f"access_token=t&expires_in=99999999999&state={STATE}", AuthorizationFailed, "expires_in"),
        (f"access_token=a&access_token=b&state={STATE}", AuthorizationFailed, "repeats"),
        (f"state={STATE}&state={STATE}&access_token=t", AuthorizationFailed, "repeats"),
        ("&".join(f"k{i}=v" for i in range(40)), AuthorizationFailed, "too many fields"),
    ],
)
def test_parse_fragment_rejects(
    fragment: str, kind: type[AuthorizationFailed], problem: str
) -> None:
    with pytest.raises(kind) as caught:
        parse_fragment(fragment, STATE, now=0.0)
    assert problem in caught.value.message
    assert STATE not in caught.value.message and "vpnctl" not in caught.value.message


def test_redirect_without_token_or_fragment() -> None:
    with pytest.raises(StateMismatch):
        parse_redirect("http://127.0.0.1:8123/callback", STATE, now=0.0)
    with pytest.raises(AuthorizationFailed, match="no access token"):
        parse_redirect(f"http://127.0.0.1:8123/callback#state={STATE}", STATE, now=0.0)
    with pytest.raises(AuthorizationFailed, match="too long"):
        parse_redirect("http://127.0.0.1/#" + "x" * 9000, STATE, now=0.0)


def test_callback_page() -> None:
    assert callback_page() == CALLBACK_PAGE
    assert '"/callback"' in CALLBACK_PAGE
    assert "window.location.hash" in CALLBACK_PAGE
    assert 'method: "POST"' in CALLBACK_PAGE
    assert "application/x-www-form-urlencoded" in CALLBACK_PAGE
    assert "replaceState" in CALLBACK_PAGE
    assert 'content="no-referrer"' in CALLBACK_PAGE
    assert "<script src" not in CALLBACK_PAGE  # nothing loaded from elsewhere
    assert '"/done"' in callback_page("/done")
    for bad in ("", "callback", "/a b", '/x"', "//evil.example/x", "/" + "a" * 70):
        with pytest.raises(InvalidArgument):
            callback_page(bad)


# --- properties ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=200),
        st.lists(
            st.tuples(
                st.sampled_from(
                    ["access_token", "token_type", "expires_in", "state", "error", "x"]
                ),
                st.sampled_from([STATE, "bearer", "3600", "access_denied", "", "%00", "t"]),
            ),
            max_size=6,
        ).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs)),
    )
)
def test_parse_fragment_only_raises_authorization_failed(fragment: str) -> None:
    try:
        tokens = parse_fragment(fragment, STATE, now=100.0)
    except AuthorizationFailed as error:
        assert STATE not in error.message
        assert all(ch.isprintable() for ch in error.message)
        return
    assert f"state={STATE}" in fragment
    assert tokens.access_token and tokens.refresh_token == ""
    assert tokens.expires_at == 0 or tokens.expires_at >= 100.0


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(0, 3) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "api",
                    "version",
                    "authorization_endpoint",
                    "create_config",
                    "profile_list",
                    "user_messages",
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), JSONISH.map(dumps)))
def test_info_json_parser_only_raises_server_error(body: bytes) -> None:
    with contextlib.suppress(ServerError):
        endpoints = parse_info_json(body, DOC_URL)
        assert endpoints.authorization_endpoint.startswith("https://")
        assert all(url.startswith("https://") for url in endpoints.calls.values())
