"""OAuth code flow with PKCE: authorization URL, callback, token replies."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpnd.errors import (
    AuthorizationFailed,
    AuthorizationRequired,
    ServerError,
    StorageFailed,
)
from vpnd.protocols.oauth import (
    CLIENT_ID,
    SCOPE,
    Tokens,
    authorization_url,
    code_grant,
    parse_callback,
    parse_token_response,
    refresh_grant,
    tokens_from_dict,
    tokens_to_dict,
)
from vpnd.protocols.pkce import challenge_s256, new_state, new_verifier

ENDPOINT = "https://vpn.example.org/vpn-user-portal/oauth/authorize"
REDIRECT = "http://127.0.0.1:43210/callback"
STATE = "c3RhdGUtZm9yLXRlc3RzLW9ubHktMzItYnl0ZXMtbG9uZw"
ACCESS = "at-SECRET-access-token-value"
REFRESH = "rt-SECRET-refresh-token-value"


def dumps(doc: object) -> bytes:
    return json.dumps(doc).encode()


# --- authorization URL --------------------------------------------------------


def test_authorization_url_carries_every_parameter() -> None:
    verifier = new_verifier()
    state = new_state()
    url = authorization_url(
        ENDPOINT,
        client_id=CLIENT_ID,
        redirect_uri=REDIRECT,
        state=state,
        code_challenge=challenge_s256(verifier),
    )
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == ENDPOINT
    assert parse_qs(parts.query, strict_parsing=True) == {
        "client_id": ["org.eduvpn.app.linux"],
        "redirect_uri": [REDIRECT],
        "response_type": ["code"],
        "scope": [SCOPE],
        "state": [state],
        "code_challenge_method": ["S256"],
        "code_challenge": [challenge_s256(verifier)],
    }


def test_authorization_url_keeps_an_existing_query() -> None:
    url = authorization_url(
        ENDPOINT + "?tenant=a b".replace(" ", "%20"),
        client_id="c",
        redirect_uri=REDIRECT,
        state="s",
        code_challenge="x",
    )
    query = parse_qs(urlsplit(url).query)
    assert query["tenant"] == ["a b"]
    assert query["client_id"] == ["c"]


def test_authorization_url_must_be_https() -> None:
    with pytest.raises(ServerError, match="https"):
        authorization_url(
            "http://vpn.example.org/authorize",
            client_id="c",
            redirect_uri=REDIRECT,
            state="s",
            code_challenge="x",
        )


# --- callback -----------------------------------------------------------------


def test_parse_callback_returns_code() -> None:
    query = urlencode({"code": "the-code", "state": STATE})
    assert parse_callback(query, STATE) == "the-code"
    assert parse_callback("?" + query, STATE) == "the-code"
    assert parse_callback(f"state={STATE}&code=a%2Fb+c", STATE) == "a/b c"


@pytest.mark.parametrize(
    "query",
    [
        "code=the-code",
        "code=the-code&state=",
        "code=the-code&state=other",
        f"code=the-code&state={STATE}x",
        f"code=the-code&state={STATE[:-1]}",
        "code=the-code&state=%C3%A9",
        "error=access_denied",
    ],
)
def test_parse_callback_state_mismatch(query: str) -> None:
    with pytest.raises(AuthorizationFailed, match="state mismatch") as caught:
        parse_callback(query, STATE)
    assert "the-code" not in caught.value.message
    assert STATE not in caught.value.message


def test_parse_callback_access_denied() -> None:
    query = urlencode({"error": "access_denied", "state": STATE})
    with pytest.raises(AuthorizationFailed, match="denied") as caught:
        parse_callback(query, STATE)
    assert "access_denied" in caught.value.message


def test_parse_callback_error_description_is_cleaned() -> None:
    query = urlencode(
        {
            "error": "server_error",
            "error_description": "boom\r\nFAKE\x1b[1m" + "x" * 500,
            "state": STATE,
        }
    )
    with pytest.raises(AuthorizationFailed) as caught:
        parse_callback(query, STATE)
    message = caught.value.message
    assert "server_error" in message and "boomFAKE" in message
    assert "\n" not in message and "\x1b" not in message
    assert len(message) < 300


def test_parse_callback_odd_error_code() -> None:
    query = urlencode({"error": "<script>", "state": STATE})
    with pytest.raises(AuthorizationFailed, match="unknown error") as caught:
        parse_callback(query, STATE)
    assert "<script>" not in caught.value.message


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        (f"state={STATE}", "no authorization code"),
        (f"state={STATE}&code=", "no authorization code"),
        (f"state={STATE}&code=a&code=b", "repeats"),
        (f"state={STATE}&state={STATE}&code=a", "repeats"),
        (f"state={STATE}&code=%0A", "malformed"),
        (f"state={STATE}&code=%C3%A9", "malformed"),
        (f"state={STATE}&code=" + "a" * 5000, "malformed"),
        (f"state={STATE}&code=a" + "&x=1" * 40, "too many"),
        (f"state={STATE}&code=" + "a" * 9000, "too long"),
    ],
)
def test_parse_callback_rejects(query: str, problem: str) -> None:
    with pytest.raises(AuthorizationFailed) as caught:
        parse_callback(query, STATE)
    assert problem in caught.value.message


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.sampled_from([STATE, "", "é", "x"]))
def test_parse_callback_only_raises_authorization_failed(query: str, state: str) -> None:
    try:
        code = parse_callback(query, state)
    except AuthorizationFailed:
        return
    assert code


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60))
def test_parse_callback_round_trips_any_printable_code(code: str) -> None:
    assert parse_callback(urlencode({"state": STATE, "code": code}), STATE) == code


# --- grants -------------------------------------------------------------------


def test_code_grant() -> None:
    assert code_grant("c", verifier="v", redirect_uri=REDIRECT, client_id=CLIENT_ID) == {
        "grant_type": "authorization_code",
        "code": "c",
        "redirect_uri": REDIRECT,
        "client_id": CLIENT_ID,
        "code_verifier": "v",
    }


def test_refresh_grant() -> None:
    assert refresh_grant("r", client_id=CLIENT_ID) == {
        "grant_type": "refresh_token",
        "refresh_token": "r",
        "client_id": CLIENT_ID,
    }


# --- token replies --------------------------------------------------------------


def test_parse_token_response_full() -> None:
    body = dumps(
        {
            "access_token": ACCESS,
            "refresh_token": REFRESH,
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": "config",
        }
    )
    assert parse_token_response(200, body, now=1000.0) == Tokens(ACCESS, REFRESH, 4600.0)


def test_parse_token_response_optional_fields() -> None:
    body = dumps({"access_token": ACCESS})
    assert parse_token_response(200, body, now=5.0, previous_refresh_token=REFRESH) == Tokens(
        ACCESS, REFRESH, 0.0
    )
    assert parse_token_response(200, body, now=5.0) == Tokens(ACCESS, "", 0.0)


def test_parse_token_response_new_refresh_token_replaces_old() -> None:
    body = dumps({"access_token": ACCESS, "refresh_token": "rt-new", "token_type": "bearer"})
    tokens = parse_token_response(200, body, now=0.0, previous_refresh_token=REFRESH)
    assert tokens.refresh_token == "rt-new"


@pytest.mark.parametrize("status", [400, 401])
def test_parse_token_response_refused_grant(status: int) -> None:
    body = dumps({"error": "invalid_grant", "error_description": f"token {REFRESH} revoked"})
    with pytest.raises(AuthorizationRequired, match="invalid_grant") as caught:
        parse_token_response(status, body, now=0.0)
    assert REFRESH not in caught.value.message
    assert "log in to the server again" in caught.value.message
    assert "vpnctl" not in caught.value.message


def test_parse_token_response_refused_without_json() -> None:
    with pytest.raises(AuthorizationRequired):
        parse_token_response(400, b"<html>", now=0.0)


@pytest.mark.parametrize("status", [200 - 1, 201, 302, 403, 500, 503])
def test_parse_token_response_other_status(status: int) -> None:
    with pytest.raises(ServerError, match=str(status)):
        parse_token_response(status, dumps({"access_token": ACCESS}), now=0.0)


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ([], "not a JSON object"),
        ({}, "access_token"),
        ({"access_token": ""}, "access_token"),
        ({"access_token": 5}, "access_token"),
        ({"access_token": "a\nb"}, "access_token"),
        ({"access_token": "x" * 20000}, "access_token"),
        ({"access_token": ACCESS, "token_type": "mac"}, "token type"),
        ({"access_token": ACCESS, "token_type": 1}, "token type"),
        ({"access_token": ACCESS, "expires_in": "3600"}, "expires_in"),
        ({"access_token": ACCESS, "expires_in": 3600.5}, "expires_in"),
        ({"access_token": ACCESS, "expires_in": True}, "expires_in"),
        ({"access_token": ACCESS, "expires_in": -1}, "expires_in"),
        ({"access_token": ACCESS, "expires_in": 10**30}, "expires_in"),
        ({"access_token": ACCESS, "refresh_token": 7}, "refresh_token"),
        ({"access_token": ACCESS, "refresh_token": ""}, "refresh_token"),
    ],
)
def test_parse_token_response_rejects(doc: object, problem: str) -> None:
    with pytest.raises(ServerError) as caught:
        parse_token_response(200, dumps(doc), now=0.0)
    assert problem in caught.value.message
    assert ACCESS not in caught.value.message


def test_parse_token_response_invalid_json() -> None:
    with pytest.raises(ServerError, match="invalid JSON"):
        parse_token_response(200, b'{"access_token": ', now=0.0)


def test_tokens_do_not_show_in_repr() -> None:
    text = repr(Tokens(ACCESS, REFRESH, 1.0))
    assert ACCESS not in text and REFRESH not in text


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([200, 400, 401, 500]),
    st.one_of(
        st.binary(max_size=100),
        st.fixed_dictionaries(
            {},
            optional={
                "access_token": st.one_of(st.text(max_size=20), st.integers()),
                "refresh_token": st.one_of(st.none(), st.text(max_size=20)),
                "token_type": st.one_of(
                    st.sampled_from(["bearer", "Bearer", "mac"]), st.integers()
                ),
                "expires_in": st.one_of(st.integers(), st.floats(allow_nan=False), st.text()),
            },
        ).map(dumps),
    ),
)
def test_parse_token_response_only_raises_documented_errors(status: int, body: bytes) -> None:
    try:
        tokens = parse_token_response(status, body, now=100.0, previous_refresh_token="old")
    except (AuthorizationRequired, ServerError):
        return
    assert status == 200
    assert tokens.access_token
    assert tokens.expires_at == 0 or tokens.expires_at >= 100.0


# --- storage form -------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1), st.text(), st.floats(allow_nan=False, allow_infinity=False))
def test_tokens_dict_round_trip(access: str, refresh: str, expires_at: float) -> None:
    tokens = Tokens(access, refresh, expires_at)
    assert tokens_from_dict(json.loads(json.dumps(tokens_to_dict(tokens)))) == tokens


def test_tokens_from_dict_accepts_integer_time() -> None:
    assert tokens_from_dict({"access_token": "a", "refresh_token": "", "expires_at": 5}) == Tokens(
        "a", "", 5.0
    )


@pytest.mark.parametrize(
    "record",
    [
        {},
        {"access_token": "a", "refresh_token": "r"},
        {"access_token": 1, "refresh_token": "r", "expires_at": 0},
        {"access_token": "a", "refresh_token": None, "expires_at": 0},
        {"access_token": "a", "refresh_token": "r", "expires_at": "0"},
        {"access_token": "a", "refresh_token": "r", "expires_at": True},
        {"access_token": "a", "refresh_token": "r", "expires_at": float("nan")},
        {"access_token": "a", "refresh_token": "r", "expires_at": float("inf")},
    ],
)
def test_tokens_from_dict_rejects(record: dict[str, object]) -> None:
    with pytest.raises(StorageFailed):
        tokens_from_dict(record)
