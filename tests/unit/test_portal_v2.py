"""The API v2 / v1 lab portal, driven over real TLS with the v1/v2 protocol modules."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.lab.pki import LabPKI
from tests.lab.portal_v2 import TestPortalV2
from vpnd.errors import AccountDisabled, AuthorizationRequired, ProfileUnavailable
from vpnd.protocols import eduvpn_v1, eduvpn_v2, oauth, ovpnconfig, pkce
from vpnd.protocols.eduvpn_v2 import ApiRequest

CLIENT_ID = "org.eduvpn.app.linux"
REDIRECT_URI = "http://127.0.0.1:8123/callback"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPKI:
    return LabPKI.create(Path(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def portal(pki: LabPKI) -> Iterator[TestPortalV2]:
    with TestPortalV2(pki) as running:
        yield running


@pytest.fixture
def client(pki: LabPKI) -> Iterator[httpx.Client]:
    context = ssl.create_default_context(cafile=str(pki.ca_path))
    with httpx.Client(verify=context, timeout=10) as http:
        yield http


def approve(client: httpx.Client, authorization_url: str) -> str:
    """What the user's browser does: approve on the portal's page; returns the redirect."""
    fields = parse_qs(urlsplit(authorization_url).query)
    form = {key: values[0] for key, values in fields.items()} | {"approve": "yes"}
    endpoint = authorization_url.split("?", 1)[0]
    reply = client.post(endpoint, data=form)
    assert reply.status_code == 302
    return reply.headers["location"]


def call(client: httpx.Client, request: ApiRequest, token: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if request.method == "GET":
        return client.get(request.url, params=dict(request.params), headers=headers)
    return client.post(request.url, data=dict(request.params), headers=headers)


def test_api_v2_login_keypair_check_and_config(portal: TestPortalV2, client: httpx.Client) -> None:
    url = eduvpn_v2.info_json_url(portal.base_url)
    endpoints = eduvpn_v2.parse_info_json(client.get(url).content, url)
    assert endpoints.api_endpoint == portal.api_base_uri

    verifier, state = pkce.new_verifier(), pkce.new_state()
    location = approve(
        client,
        oauth.authorization_url(
            endpoints.authorization_endpoint,
            client_id=CLIENT_ID,
            redirect_uri=REDIRECT_URI,
            state=state,
            code_challenge=pkce.challenge_s256(verifier),
        ),
    )
    code = oauth.parse_callback(urlsplit(location).query, state)
    grant = oauth.code_grant(
        code, verifier=verifier, redirect_uri=REDIRECT_URI, client_id=CLIENT_ID
    )
    reply = client.post(endpoints.token_endpoint, data=grant)
    tokens = oauth.parse_token_response(reply.status_code, reply.content, now=time.time())
    token = tokens.access_token

    api = endpoints.api_endpoint
    profiles = eduvpn_v2.parse_profile_list(
        call(client, eduvpn_v2.profile_list_request(api), token).content
    )
    assert [p.profile_id for p in profiles] == ["internet", "office"]
    user = eduvpn_v2.parse_user_info(call(client, eduvpn_v2.user_info_request(api), token).content)
    eduvpn_v2.check_can_connect(profiles[0], user)

    pair = eduvpn_v2.parse_keypair(
        call(client, eduvpn_v2.create_keypair_request(api), token).content, now=time.time()
    )
    assert portal.issued_common_names == [pair.common_name]
    check = eduvpn_v2.check_certificate_request(api, pair.common_name)
    assert eduvpn_v2.parse_check_certificate(call(client, check, token).content).is_valid
    portal.expire_certificates()
    status = eduvpn_v2.parse_check_certificate(call(client, check, token).content)
    assert (status.is_valid, status.reason, status.renewable) == (
        False,
        "certificate_expired",
        True,
    )

    reply = call(client, eduvpn_v2.profile_config_request(api, "internet"), token)
    text = eduvpn_v2.parse_profile_config(reply.headers["content-type"], reply.content)
    config = eduvpn_v2.complete_config(text, pair)
    sanitized = ovpnconfig.sanitize(config.text)
    assert ovpnconfig.inline_block(sanitized, "key") is None
    assert config.expires_at == pair.not_after

    reply = call(client, eduvpn_v2.profile_config_request(api, "gone"), token)
    with pytest.raises(ProfileUnavailable):
        eduvpn_v2.parse_profile_config(reply.headers["content-type"], reply.content)


def test_api_v1_implicit_grant_and_create_config(
    portal: TestPortalV2, client: httpx.Client
) -> None:
    portal.api_version = 1
    url = eduvpn_v2.info_json_url(portal.base_url)
    endpoints = eduvpn_v1.parse_info_json(client.get(url).content, url)
    state = pkce.new_state()
    location = approve(
        client,
        eduvpn_v1.authorization_url(
            endpoints.authorization_endpoint,
            client_id=CLIENT_ID,
            redirect_uri=REDIRECT_URI,
            state=state,
        ),
    )
    assert "#" in location and "?" not in location
    tokens = eduvpn_v1.parse_redirect(location, state, now=time.time())
    assert tokens.refresh_token == "" and tokens.expires_at > time.time()

    reply = call(client, eduvpn_v1.create_config_request(endpoints, "office"), tokens.access_token)
    config = eduvpn_v1.parse_create_config(
        reply.headers["content-type"], reply.content, now=time.time()
    )
    assert "<key>" not in config.text
    assert config.private_key.startswith("-----BEGIN PRIVATE KEY-----")
    ovpnconfig.sanitize(config.text)


def test_api_calls_need_a_token(portal: TestPortalV2, client: httpx.Client) -> None:
    reply = call(client, eduvpn_v2.profile_list_request(portal.api_base_uri), "nope")
    assert reply.status_code == 401
    error = eduvpn_v2.api_error(reply.status_code, "profile_list", reply.content)
    assert isinstance(error, AuthorizationRequired)


def test_knobs_make_the_portal_refuse(portal: TestPortalV2, client: httpx.Client) -> None:
    state = pkce.new_state()
    authorize = f"{portal.base_url}portal/_oauth/authorize"
    location = approve(
        client,
        eduvpn_v1.authorization_url(
            authorize, client_id=CLIENT_ID, redirect_uri=REDIRECT_URI, state=state
        ),
    )
    token = eduvpn_v1.parse_redirect(location, state, now=time.time()).access_token
    api = portal.api_base_uri
    portal.failures["create_keypair"] = "user account is disabled"
    with pytest.raises(AccountDisabled):
        eduvpn_v2.parse_keypair(
            call(client, eduvpn_v2.create_keypair_request(api), token).content, now=time.time()
        )
    portal.certificate_reason = "user_disabled"
    check = eduvpn_v2.check_certificate_request(api, "anything")
    status = eduvpn_v2.parse_check_certificate(call(client, check, token).content)
    assert (status.reason, status.renewable) == ("user_disabled", False)
    assert [name for name, _ in portal.calls] == ["create_keypair", "check_certificate"]
