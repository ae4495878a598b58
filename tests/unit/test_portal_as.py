"""The Access Server lab portal, driven over real TLS with vpnd's Access Server protocol module."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from tests.lab.pki import LabPKI
from tests.lab.portal_as import (
    DEFAULT_AUTOLOGIN_USERS,
    DEFAULT_USERS,
    AccessServerRequest,
    Challenge,
    TestAccessServer,
)
from vpnd.errors import (
    AccessServerFailure,
    AutologinNotPermitted,
    CredentialsRejected,
    ServerError,
    TwoFactorRequired,
    VpndError,
    WebAuthRequired,
)
from vpnd.protocols import ovpnconfig
from vpnd.protocols.access_server import (
    PROFILE_CONTENT_TYPE,
    ChallengeRequired,
    Credentials,
    DynamicChallenge,
    ProfileKind,
    SessionToken,
    parse_crv1,
    parse_profile_reply,
    profile_request,
)

DEVICE_ID = "lab-device-0001"
ALICE = Credentials("alice", "correct horse")

# The error documents exactly as the Access Server's REST API documentation shows them.
SPEC_AUTH_FAILED = """<?xml version="1.0" encoding="UTF-8"?>
<Error>
  <Type>Authorization Required</Type>
  <Synopsis>REST method failed</Synopsis>
  <Message>AUTH_FAILED: Server Agent XML method requires authentication (9007)</Message>
</Error>
"""
SPEC_NEED_AUTOLOGIN = """<?xml version="1.0" encoding="UTF-8"?>
<Error>
  <Type>Internal Server Error</Type>
  <Synopsis>REST method failed</Synopsis>
  <Message>NEED_AUTOLOGIN: User 'USERNAME' lacks autologin privilege (9000)</Message>
</Error>
"""
SPEC_NOT_ENROLLED = """<?xml version="1.0" encoding="UTF-8"?>
<Error>
  <Type>Access denied</Type>
  <Synopsis>REST method failed</Synopsis>
  <Message>You must enroll this user in Authenticator first before you are allowed to retrieve a connection profile. (9008)</Message>
</Error>
"""
SPEC_WEB_AUTH = """<Error>
  <Type>Authorization Required</Type>
  <Synopsis>REST method failed</Synopsis>
  <Message>Ovpn-WebAuth: providername,flags</Message>
</Error>
"""
SPEC_CHALLENGE = """<Error>
  <Type>Authorization Required</Type>
  <Synopsis>REST method failed</Synopsis>
  <Message>CRV1:R,E:{state}:dGVzdA==:Turing test: what is 1 x 3? (9007)</Message>
</Error>
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPKI:
    return LabPKI.create(Path(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def server(pki: LabPKI) -> Iterator[TestAccessServer]:
    with TestAccessServer(pki) as running:
        yield running


@pytest.fixture
def client(pki: LabPKI) -> Iterator[httpx.Client]:
    context = ssl.create_default_context(cafile=str(pki.ca_path))
    with httpx.Client(verify=context, timeout=10, trust_env=False) as http:
        yield http


def fetch(
    client: httpx.Client,
    server: TestAccessServer,
    kind: ProfileKind = "userlogin",
    credentials: Credentials = ALICE,
    session: SessionToken | None = None,
) -> httpx.Response:
    request = profile_request(
        server.base_url, kind, device_id=DEVICE_ID, credentials=credentials, session=session
    )
    return client.get(request.url, headers=dict(request.headers))


def read(reply: httpx.Response) -> str:
    """What vpnd makes of a reply: the profile, or the error raised."""
    return parse_profile_reply(reply.status_code, reply.headers.get("content-type"), reply.content)


def refused(reply: httpx.Response) -> VpndError:
    with pytest.raises(VpndError) as caught:
        read(reply)
    return caught.value


def inline(config: str, tag: str) -> str:
    return config.split(f"<{tag}>\n", 1)[1].split(f"</{tag}>", 1)[0]


def test_userlogin_profile_asks_for_the_password(
    server: TestAccessServer, client: httpx.Client, pki: LabPKI
) -> None:
    reply = fetch(client, server, "userlogin")
    assert reply.status_code == 200
    assert reply.headers["content-type"] == PROFILE_CONTENT_TYPE
    profile = read(reply)
    lines = profile.splitlines()
    assert "auth-user-pass" in lines
    assert lines.index("auth-user-pass") < lines.index("<ca>")

    sanitized = ovpnconfig.sanitize(profile)
    assert "auth-user-pass" in [d.name for d in sanitized.directives]
    assert sanitized.dropped == ()

    # A fresh certificate for the key handed out, issued by the lab CA.
    assert len(server.issued_common_names) == 1
    assert server.issued_keys == [inline(profile, "key").strip() + "\n"]
    cert = x509.load_pem_x509_certificate(inline(profile, "cert").encode())
    common_name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == server.issued_common_names[0]
    assert common_name.startswith("alice-")
    key = serialization.load_pem_private_key(server.issued_keys[0].encode(), password=None)
    assert cert.public_key() == key.public_key()
    assert inline(profile, "ca").strip() == pki.ca_pem.strip()

    assert server.requests == [
        AccessServerRequest(
            "GET",
            "/rest/GetUserlogin",
            {"tls-cryptv2": "1", "action": "import", "deviceID": DEVICE_ID},
            "alice",
            server.requests[0].headers,
        )
    ]
    assert server.requests[0].headers["authorization"] == ALICE.authorization()


def test_autologin_profile_needs_no_password(
    server: TestAccessServer, client: httpx.Client
) -> None:
    reply = fetch(client, server, "autologin")
    assert reply.headers["content-type"] == PROFILE_CONTENT_TYPE
    profile = read(reply)
    assert "auth-user-pass" not in profile
    ovpnconfig.sanitize(profile)
    assert inline(profile, "key").strip() + "\n" == server.issued_keys[0]
    assert [(r.path, r.username) for r in server.requests] == [("/rest/GetAutologin", "alice")]
    assert server.requests[0].params["deviceID"] == DEVICE_ID


def test_each_profile_has_its_own_key(server: TestAccessServer, client: httpx.Client) -> None:
    first, second = read(fetch(client, server)), read(fetch(client, server, "autologin"))
    assert inline(first, "key") != inline(second, "key")
    assert len(set(server.issued_common_names)) == 2
    assert len(server.issued_keys) == 2


@pytest.mark.parametrize(
    "credentials",
    [Credentials("alice", "wrong"), Credentials("mallory", "correct horse"), None],
    ids=["wrong password", "unknown user", "no credentials"],
)
def test_wrong_credentials_are_auth_failed(
    server: TestAccessServer, client: httpx.Client, credentials: Credentials | None
) -> None:
    if credentials is None:
        reply = client.get(server.url("userlogin"), params={"deviceID": DEVICE_ID})
    else:
        reply = fetch(client, server, credentials=credentials)
    assert reply.status_code == 401
    assert reply.headers["content-type"] == "text/xml"
    assert reply.text == SPEC_AUTH_FAILED
    assert isinstance(refused(reply), CredentialsRejected)
    assert server.issued_common_names == []
    expected_user = credentials.username if credentials is not None else None
    assert [r.username for r in server.requests] == [expected_user]


def test_unreadable_basic_credentials_are_auth_failed(
    server: TestAccessServer, client: httpx.Client
) -> None:
    reply = client.get(server.url("userlogin"), headers={"Authorization": "Basic !!!"})
    assert reply.text == SPEC_AUTH_FAILED
    assert server.requests[0].username is None


def test_autologin_not_permitted(server: TestAccessServer, client: httpx.Client) -> None:
    server.users["USERNAME"] = "pw"
    reply = fetch(client, server, "autologin", Credentials("USERNAME", "pw"))
    assert reply.text == SPEC_NEED_AUTOLOGIN
    assert isinstance(refused(reply), AutologinNotPermitted)
    # The same user may have a userlogin profile.
    assert "auth-user-pass" in read(
        fetch(client, server, "userlogin", Credentials("USERNAME", "pw"))
    )

    server.autologin_users.clear()
    error = refused(fetch(client, server, "autologin"))
    assert isinstance(error, AutologinNotPermitted)
    assert "'alice'" in str(error)
    assert len(server.issued_common_names) == 1


def test_two_factor_enrolment_required(server: TestAccessServer, client: httpx.Client) -> None:
    server.enrolment_required = True
    reply = fetch(client, server)
    assert reply.status_code == 403
    assert reply.text == SPEC_NOT_ENROLLED
    assert isinstance(refused(reply), TwoFactorRequired)
    # Only after the password: a wrong one is still AUTH_FAILED.
    assert fetch(client, server, credentials=Credentials("alice", "nope")).text == SPEC_AUTH_FAILED


def test_web_auth_required(server: TestAccessServer, client: httpx.Client) -> None:
    server.web_auth = "providername,flags"
    reply = fetch(client, server)
    assert reply.text == SPEC_WEB_AUTH
    error = refused(reply)
    assert isinstance(error, WebAuthRequired)
    assert (error.provider, error.flags) == ("providername", ("flags",))

    server.web_auth = "OpenVPN-SAML,external,hidden"
    error = refused(fetch(client, server, credentials=Credentials("nobody", "x")))
    assert isinstance(error, WebAuthRequired)
    assert (error.provider, error.flags) == ("OpenVPN-SAML", ("external", "hidden"))


def test_internal_error(server: TestAccessServer, client: httpx.Client) -> None:
    server.internal_error = "PROFILE_ERROR: could not generate the profile (9000)"
    reply = fetch(client, server, "autologin")
    assert reply.status_code == 500
    assert reply.text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n')
    assert "<Type>Internal Server Error</Type>" in reply.text
    error = refused(reply)
    assert isinstance(error, AccessServerFailure)
    assert "could not generate the profile" in str(error)
    assert server.issued_keys == []


def challenge_of(reply: httpx.Response) -> DynamicChallenge:
    with pytest.raises(ChallengeRequired) as caught:
        read(reply)
    return caught.value.challenge


def test_crv1_challenge_then_answer(server: TestAccessServer, client: httpx.Client) -> None:
    server.users["test"] = "mypass"
    server.challenge = Challenge()
    reply = fetch(client, server, credentials=Credentials("test", "mypass"))
    assert reply.status_code == 401
    [state_id] = server.challenges_issued
    assert reply.text == SPEC_CHALLENGE.format(state=state_id)
    challenge = challenge_of(reply)
    assert challenge.username == "test"
    assert challenge.text == "Turing test: what is 1 x 3? (9007)"
    assert challenge.echo and challenge.response_required
    assert challenge.state_id == state_id
    assert server.issued_keys == []

    answered = fetch(client, server, credentials=challenge.answer("3"))
    profile = read(answered)
    assert "auth-user-pass" in profile.splitlines()
    assert len(server.issued_keys) == 1
    assert server.requests[-1].username == "test"
    assert server.requests[-1].params["tls-cryptv2"] == "1"

    # A state id answers once.
    assert isinstance(
        refused(fetch(client, server, credentials=challenge.answer("3"))), CredentialsRejected
    )


def test_crv1_wrong_answer_or_wrong_password(
    server: TestAccessServer, client: httpx.Client
) -> None:
    server.challenge = Challenge(text="What is the colour of the sky?", answer="blue", echo=False)
    challenge = challenge_of(fetch(client, server, "autologin"))
    assert (challenge.echo, challenge.response_required) == (False, True)
    assert challenge.text == "What is the colour of the sky?"
    reply = fetch(client, server, "autologin", challenge.answer("green"))
    assert reply.text == SPEC_AUTH_FAILED
    assert isinstance(refused(reply), CredentialsRejected)
    # The wrong answer used the state up: the right one is too late.
    assert fetch(client, server, "autologin", challenge.answer("blue")).text == SPEC_AUTH_FAILED
    # A wrong password gets no challenge.
    assert fetch(client, server, credentials=Credentials("alice", "x")).text == SPEC_AUTH_FAILED
    # A state id does not move to another user.
    server.users["bob"] = "pw"
    fresh = challenge_of(fetch(client, server, "autologin"))
    stolen = Credentials("bob", fresh.answer("blue").password)
    assert fetch(client, server, "userlogin", stolen).text == SPEC_AUTH_FAILED
    assert len(server.challenges_issued) == 2
    assert server.issued_keys == []


def test_crv1_username_is_base64_utf8(server: TestAccessServer, client: httpx.Client) -> None:
    server.users["zoë"] = "wachtwoord"
    server.challenge = Challenge(text="Code: ", answer="", response_required=False, echo=False)
    reply = fetch(client, server, credentials=Credentials("zoë", "wachtwoord"))
    message = reply.text.split("<Message>", 1)[1].split("</Message>", 1)[0]
    flags, user_b64 = message.split(":")[1], message.split(":")[3]
    assert flags == ""
    assert base64.b64decode(user_b64).decode() == "zoë"
    challenge = parse_crv1(message)
    assert challenge.username == "zoë"
    assert not challenge.response_required
    read(fetch(client, server, credentials=challenge.answer("")))
    assert server.issued_common_names[0].startswith("zoë-")


def test_crv1_text_is_xml_escaped(server: TestAccessServer, client: httpx.Client) -> None:
    server.challenge = Challenge(text="Is 1 < 2 & 3 > 2?", answer="yes")
    reply = fetch(client, server)
    assert "Is 1 &lt; 2 &amp; 3 &gt; 2?" in reply.text
    assert challenge_of(reply).text == "Is 1 < 2 & 3 > 2?"


def test_session_token_skips_the_challenge(server: TestAccessServer, client: httpx.Client) -> None:
    server.challenge = Challenge()
    server.session_tokens["alice"] = "session-123"
    read(fetch(client, server, session=SessionToken("alice", "session-123")))
    assert server.challenges_issued == []
    headers = server.requests[0].headers
    assert base64.b64decode(headers["vpn-session-user"]) == b"alice"
    # A wrong or missing token: the challenge again.
    challenge_of(fetch(client, server, session=SessionToken("alice", "session-124")))
    challenge_of(fetch(client, server))
    assert len(server.challenges_issued) == 2


def test_unknown_path_and_method(server: TestAccessServer, client: httpx.Client) -> None:
    reply = client.get(f"{server.base_url}rest/GetSomething")
    assert reply.status_code == 404
    with pytest.raises(ServerError, match="HTTP 404"):
        read(reply)
    reply = client.post(server.url("userlogin"), auth=("alice", "correct horse"))
    assert reply.status_code == 405
    assert reply.headers["content-type"] == "text/xml"
    assert [r.method for r in server.requests] == ["GET", "POST"]
    assert all(isinstance(r, AccessServerRequest) for r in server.requests)


def test_config_filter(server: TestAccessServer, client: httpx.Client) -> None:
    server.config_filter = lambda config: config + "setenv FRIENDLY_NAME lab\n"
    assert read(fetch(client, server)).endswith("setenv FRIENDLY_NAME lab\n")


def knobs(server: TestAccessServer) -> dict[str, object]:
    names = (
        "users",
        "autologin_users",
        "enrolment_required",
        "web_auth",
        "internal_error",
        "challenge",
        "session_tokens",
        "certificate_days",
        "config_filter",
    )
    return {name: getattr(server, name) for name in names}


def test_reset_restores_knobs_and_records(server: TestAccessServer, client: httpx.Client) -> None:
    server.challenge = Challenge()
    challenge = challenge_of(fetch(client, server))
    server.users.clear()
    server.autologin_users.clear()
    server.enrolment_required = True
    server.web_auth = "x,y"
    server.internal_error = "boom"
    server.session_tokens["alice"] = "t"
    server.certificate_days = 1
    server.config_filter = str.upper
    server.reset()
    assert knobs(server) == {
        "users": dict(DEFAULT_USERS),
        "autologin_users": set(DEFAULT_AUTOLOGIN_USERS),
        "enrolment_required": False,
        "web_auth": None,
        "internal_error": None,
        "challenge": None,
        "session_tokens": {},
        "certificate_days": 365,
        "config_filter": None,
    }
    assert (server.requests, server.issued_common_names, server.issued_keys) == ([], [], [])
    assert server.challenges_issued == []
    # Unanswered challenges are forgotten.
    assert fetch(client, server, credentials=challenge.answer("3")).text == SPEC_AUTH_FAILED
    assert "auth-user-pass" not in read(fetch(client, server, "autologin"))


def test_constructor_sets_the_defaults(pki: LabPKI, client: httpx.Client) -> None:
    with TestAccessServer(pki, users={"carol": "pw"}, autologin_users=()) as server:
        assert server.base_url.startswith("https://127.0.0.1:")
        assert isinstance(refused(fetch(client, server)), CredentialsRejected)
        carol = Credentials("carol", "pw")
        assert isinstance(refused(fetch(client, server, "autologin", carol)), AutologinNotPermitted)
        read(fetch(client, server, "userlogin", carol))
        server.reset()
        assert server.users == {"carol": "pw"}
        assert server.autologin_users == set()
