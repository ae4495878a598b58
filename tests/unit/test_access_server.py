"""OpenVPN Access Server REST profile API: requests, replies and challenges, without HTTP."""

from __future__ import annotations

import base64
import re
from xml.sax.saxutils import escape

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vpnd.errors import (
    AccessServerFailure,
    AuthorizationFailed,
    AuthorizationRequired,
    AutologinNotPermitted,
    ConfigRejected,
    CredentialsRejected,
    InvalidArgument,
    RestCallFailed,
    ServerError,
    TwoFactorRequired,
    VpndError,
    WebAuthRequired,
)
from vpnd.protocols.access_server import (
    MAX_CHALLENGE_TEXT,
    MAX_DEVICE_ID,
    MAX_ERROR_XML,
    PROFILE_CONTENT_TYPE,
    ChallengeRequired,
    Credentials,
    DynamicChallenge,
    SessionToken,
    basic_authorization,
    checked_device_id,
    crv1_message,
    crv1_password,
    error_for,
    parse_crv1,
    parse_crv1_password,
    parse_error_reply,
    parse_profile_reply,
    profile_request,
    profile_url,
    scrv1_password,
    token_profile_url,
)

BASE = "https://vpn.example.org/"
DEVICE = "4f1c2a9e8b7d4c3a9e1f0b2c3d4e5f60"
PROFILE = b"client\ndev tun\nremote vpn.example.org 1194 udp\nauth-user-pass\n<ca>\nx\n</ca>\n"

# The spec's examples, byte for byte where it gives them.
SPEC_CHALLENGE = (
    "CRV1:R,E:miwN39AlF4k40Fd8X8r9j74FuOoaJKJM:dGVzdA==:Turing test: what is 1 x 3? (9007)"
)


def error_xml(error_type: str, message: str, *, declaration: bool = True) -> bytes:
    head = '<?xml version="1.0" encoding="UTF-8"?>\n' if declaration else ""
    return (
        f"{head}<Error>\n  <Type>{escape(error_type)}</Type>\n"
        f"  <Synopsis>REST method failed</Synopsis>\n  <Message>{escape(message)}</Message>\n"
        "</Error>\n"
    ).encode()


def reply_error(body: bytes, content_type: str | None = "text/xml", status: int = 401) -> VpndError:
    with pytest.raises(VpndError) as caught:
        parse_profile_reply(status, content_type, body)
    return caught.value


# --- requests -----------------------------------------------------------------


def test_profile_urls_ask_for_tls_crypt_v2_an_import_and_name_the_device() -> None:
    assert profile_url(BASE, "userlogin", DEVICE) == (
        f"https://vpn.example.org/rest/GetUserlogin?tls-cryptv2=1&action=import&deviceID={DEVICE}"
    )
    assert profile_url("vpn.example.org:943", "autologin", "pc-1").startswith(
        "https://vpn.example.org:943/rest/GetAutologin?"
    )
    assert profile_url("https://Example.org/as", "userlogin", "pc").startswith(
        "https://example.org/as/rest/GetUserlogin?"
    )


def test_a_device_id_is_percent_encoded_in_the_query() -> None:
    url = profile_url(BASE, "userlogin", "lab/pc#1&x=ü")
    assert url.endswith("deviceID=lab%2Fpc%231%26x%3D%C3%BC")


@pytest.mark.parametrize("url", ["http://vpn.example.org/", "ftp://vpn.example.org", ""])
def test_only_https_base_urls_are_taken(url: str) -> None:
    with pytest.raises(InvalidArgument, match=r"https|empty"):
        profile_url(url, "userlogin", DEVICE)


@pytest.mark.parametrize("device_id", ["", " ", "a b", "a\tb", "a\x00", "x\u200e", "x" * 129])
def test_malformed_device_ids_are_refused(device_id: str) -> None:
    with pytest.raises(InvalidArgument, match="device id"):
        checked_device_id(device_id)
    with pytest.raises(InvalidArgument):
        profile_url(BASE, "userlogin", device_id)


def test_device_id_bound_is_inclusive() -> None:
    assert checked_device_id("d" * MAX_DEVICE_ID) == "d" * MAX_DEVICE_ID


def test_basic_authorization_follows_rfc_7617() -> None:
    # RFC 7617 section 2 and 2.1 (UTF-8) examples.
    assert basic_authorization("Aladdin", "open sesame") == "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    assert basic_authorization("test", "123\u00a3") == "Basic dGVzdDoxMjPCow=="
    # Only the user name must not hold a colon; the password may.
    assert basic_authorization("u", "a:b") == "Basic " + base64.b64encode(b"u:a:b").decode()
    assert basic_authorization("u", "") == "Basic " + base64.b64encode(b"u:").decode()


@pytest.mark.parametrize(
    ("username", "password", "match"),
    [
        ("a:b", "pw", "':'"),
        ("", "pw", "empty"),
        ("a\nb", "pw", "control"),
        ("a\x7f", "pw", "control"),
        ("ok", "p\rw", "control"),
        ("ok", "p\x00", "control"),
        ("u" * 257, "pw", "longer"),
        ("ok", "p" * 4097, "longer"),
    ],
)
def test_credentials_basic_cannot_carry_are_refused(
    username: str, password: str, match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        basic_authorization(username, password)


def test_profile_request_carries_credentials_and_hides_them_from_repr() -> None:
    request = profile_request(
        BASE, "userlogin", device_id=DEVICE, credentials=Credentials("test", "mypass")
    )
    assert request.kind == "userlogin"
    assert request.url.startswith("https://vpn.example.org/rest/GetUserlogin?")
    assert request.headers == {"Authorization": "Basic dGVzdDpteXBhc3M="}
    assert "mypass" not in repr(request) and "dGVzdDpteXBhc3M" not in repr(request)
    assert "mypass" not in repr(Credentials("test", "mypass"))


def test_profile_request_sends_a_session_back_in_base64() -> None:
    request = profile_request(
        BASE,
        "autologin",
        device_id=DEVICE,
        credentials=Credentials("test", "mypass"),
        session=SessionToken("test", "s3cr3t"),
    )
    assert request.headers["VPN-Session-User"] == "dGVzdA=="
    assert request.headers["VPN-Session-Token"] == base64.b64encode(b"s3cr3t").decode()
    assert "s3cr3t" not in repr(SessionToken("test", "s3cr3t"))
    with pytest.raises(InvalidArgument):
        profile_request(
            BASE,
            "autologin",
            device_id=DEVICE,
            credentials=Credentials("test", "mypass"),
            session=SessionToken("test", "a\nb"),
        )


# --- successful replies -------------------------------------------------------


def test_a_profile_reply_is_the_profile_text() -> None:
    assert parse_profile_reply(200, PROFILE_CONTENT_TYPE, PROFILE) == PROFILE.decode()
    typed = "Application/X-OpenVPN-Profile; charset=utf-8"
    assert parse_profile_reply(200, typed, PROFILE) == PROFILE.decode()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"#" * ((1 << 20) + 1), "larger"),
        (b"client\n\xff\xfe", "UTF-8"),
        (b"client\0\n", "NUL"),
    ],
)
def test_unusable_profiles_are_rejected(body: bytes, match: str) -> None:
    with pytest.raises(ConfigRejected, match=match):
        parse_profile_reply(200, PROFILE_CONTENT_TYPE, body)


def test_a_reply_of_another_type_is_not_taken_for_a_profile() -> None:
    with pytest.raises(ServerError, match=r"not an OpenVPN profile \(it is text/html") as caught:
        parse_profile_reply(200, "text/html", b"<html>captive portal</html>")
    assert type(caught.value) is ServerError
    with pytest.raises(ServerError, match="of no stated type"):
        parse_profile_reply(200, None, PROFILE)


@pytest.mark.parametrize(
    ("status", "kind", "match"),
    [
        (401, CredentialsRejected, "user name or password"),
        (404, ServerError, "HTTP 404.*REST API"),
        (502, ServerError, "HTTP status 502"),
    ],
)
def test_statuses_without_an_error_document(status: int, kind: type[VpndError], match: str) -> None:
    error = reply_error(b"Bad Gateway", "text/plain", status)
    assert type(error) is kind
    assert re.search(match, error.message)


# --- error documents ----------------------------------------------------------


def test_wrong_credentials() -> None:
    body = error_xml(
        "Authorization Required",
        "AUTH_FAILED: Server Agent XML method requires authentication (9007)",
    )
    error = reply_error(body)
    assert type(error) is CredentialsRejected
    assert error.dbus_name == AuthorizationFailed.dbus_name
    assert error.message.startswith("the server refused the user name or password")
    assert "(9007)" in error.message


def test_autologin_not_permitted() -> None:
    body = error_xml(
        "Internal Server Error", "NEED_AUTOLOGIN: User 'USERNAME' lacks autologin privilege (9000)"
    )
    error = reply_error(body, status=500)
    assert type(error) is AutologinNotPermitted
    assert error.dbus_name == ServerError.dbus_name
    assert "autologin permission" in error.message


def test_two_factor_enrolment_required() -> None:
    body = error_xml(
        "Access denied",
        "You must enroll this user in Authenticator first before you are allowed to "
        "retrieve a connection profile. (9008)",
    )
    error = reply_error(body, status=403)
    assert type(error) is TwoFactorRequired
    assert "enroll" in error.message


def test_web_auth_required_carries_provider_and_flags() -> None:
    body = b"<Error>\n  <Type>Authorization Required</Type>\n  <Synopsis>REST method failed</Synopsis>\n  <Message>Ovpn-WebAuth: providername,flags</Message>\n</Error>"
    error = reply_error(body)
    assert isinstance(error, WebAuthRequired)
    # A name of its own, so that a client offers the web login, not a password.
    assert isinstance(error, AuthorizationRequired)
    assert error.dbus_name == "org.vpnd.Error.WebLoginRequired"
    assert error.provider == "providername"
    assert error.flags == ("flags",)
    assert "web page" in error.message and "profile link" in error.message


def test_web_auth_without_flags_and_with_many() -> None:
    error = error_for("Authorization Required", "Ovpn-WebAuth:SAML")
    assert isinstance(error, WebAuthRequired)
    assert (error.provider, error.flags) == ("SAML", ())
    error = error_for("Authorization Required", "Ovpn-WebAuth: p," + ",".join(["f"] * 100))
    assert isinstance(error, WebAuthRequired)
    assert error.flags == ("f",) * 16
    error = error_for("", "Ovpn-WebAuth: p\x1b[31m,a\u202e,,b")
    assert isinstance(error, WebAuthRequired)
    assert (error.provider, error.flags) == ("p[31m", ("a", "b"))


def test_the_specs_challenge_becomes_a_question() -> None:
    body = error_xml("Authorization Required", SPEC_CHALLENGE, declaration=False)
    error = reply_error(body)
    assert isinstance(error, ChallengeRequired)
    assert error.dbus_name == AuthorizationRequired.dbus_name
    assert "Turing test: what is 1 x 3? (9007)" in error.message
    challenge = error.challenge
    assert challenge.username == "test"
    assert challenge.text == "Turing test: what is 1 x 3? (9007)"
    assert challenge.echo and challenge.response_required
    # The spec's resubmission: curl -u "test:CRV1::miwN39AlF4k40Fd8X8r9j74FuOoaJKJM::3"
    answer = challenge.answer("3")
    assert (answer.username, answer.password) == (
        "test",
        "CRV1::miwN39AlF4k40Fd8X8r9j74FuOoaJKJM::3",
    )
    assert (
        answer.authorization()
        == "Basic " + base64.b64encode(b"test:CRV1::miwN39AlF4k40Fd8X8r9j74FuOoaJKJM::3").decode()
    )
    assert "miwN39" not in repr(challenge)


def test_a_malformed_challenge_in_an_error_document_is_a_server_error() -> None:
    error = reply_error(error_xml("Authorization Required", "CRV1:R:state:!!!:question"))
    assert type(error) is ServerError
    assert "challenge" in error.message


@pytest.mark.parametrize(
    ("error_type", "kind"),
    [
        ("Authorization Required", CredentialsRejected),
        ("authorization required", CredentialsRejected),
        ("Internal Server Error", AccessServerFailure),
        ("Teapot", RestCallFailed),
        ("", RestCallFailed),
    ],
)
def test_unknown_messages_fall_back_on_the_type(error_type: str, kind: type[VpndError]) -> None:
    error = reply_error(error_xml(error_type, "SOMETHING_NEW: it broke (9999)"))
    assert type(error) is kind
    assert "SOMETHING_NEW: it broke (9999)" in error.message


def test_unknown_errors_carry_the_cleaned_message() -> None:
    error = reply_error(error_xml("Weird", "line one\nline\u202etwo\u2028three\t" + "x" * 500))
    assert type(error) is RestCallFailed
    assert error.dbus_name == ServerError.dbus_name
    assert "line onelinetwothree" in error.message
    assert error.message.isprintable()
    assert len(error.message) < 400


def test_an_error_without_message_says_so() -> None:
    error = reply_error(b"<Error><Type>Weird</Type></Error>")
    assert type(error) is RestCallFailed
    assert "without saying why" in error.message
    assert type(reply_error(b"<Error/>")) is RestCallFailed


def test_xml_is_recognised_by_its_first_bytes_too() -> None:
    body = error_xml("Authorization Required", "AUTH_FAILED: no (9007)")
    assert type(reply_error(body, "text/plain", 200)) is CredentialsRejected
    assert type(reply_error(body, None, 401)) is CredentialsRejected
    assert type(reply_error(b"\xef\xbb\xbf" + body, "application/xml", 401)) is CredentialsRejected


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"<Error><Type>x</Type>", "not well-formed"),
        (b"", "not well-formed"),
        (b"<Error><Type>x</Type></Error><Error/>", "not well-formed"),
        (b"<html><body>oops</body></html>", "not an Access Server error"),
        (b'<e:Error xmlns:e="urn:x"><Message>AUTH_FAILED</Message></e:Error>', "not an Access"),
        (b"<Error>\xff</Error>", "not UTF-8"),
        (b"<Error><Message>" + b"x" * MAX_ERROR_XML + b"</Message></Error>", "larger than 64 KiB"),
    ],
)
def test_malformed_error_documents(body: bytes, match: str) -> None:
    error = reply_error(body)
    assert type(error) is ServerError
    assert match in error.message


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE Error [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<Error><Type>x</Type><Message>&lol9;</Message></Error>"""


@pytest.mark.parametrize(
    "body",
    [
        BILLION_LAUGHS,
        b'<!DOCTYPE Error SYSTEM "file:///etc/shadow"><Error><Message>x</Message></Error>',
        b"<!doctype Error><Error/>",
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        b"<Error><Message>&e;</Message></Error>",
        # An encoding declaration must not smuggle a DTD past the check.
        b'<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE Error><Error/>',
    ],
)
def test_document_type_declarations_are_refused_before_parsing(body: bytes) -> None:
    error = reply_error(body)
    assert type(error) is ServerError
    assert "document type declaration" in error.message


def test_a_misleading_encoding_declaration_is_read_as_utf8() -> None:
    body = (
        b'<?xml version="1.0" encoding="UTF-16"?><Error><Message>AUTH_FAILED: x</Message></Error>'
    )
    assert type(parse_error_reply(body)) is CredentialsRejected


# --- CRV1 ---------------------------------------------------------------------


def test_crv1_flags() -> None:
    assert not parse_crv1("CRV1::s:dGVzdA==:q").echo
    assert not parse_crv1("CRV1::s:dGVzdA==:q").response_required
    challenge = parse_crv1("CRV1:E:s:dGVzdA==:q")
    assert challenge.echo and not challenge.response_required
    challenge = parse_crv1("CRV1: R , X,,:s:dGVzdA==:q")  # the spec writes "CRV1: <flags>"
    assert challenge.response_required and not challenge.echo


def test_crv1_question_keeps_colons_and_is_cleaned_and_cut() -> None:
    assert parse_crv1("CRV1:R:s:dGVzdA==:a:b::c").text == "a:b::c"
    assert parse_crv1("CRV1:R:s:dGVzdA==:a\x1b[2Jb\r\nc").text == "a[2Jbc"
    assert len(parse_crv1("CRV1:R:s:dGVzdA==:" + "q" * 3000).text) == MAX_CHALLENGE_TEXT
    assert parse_crv1("CRV1:R:s:dGVzdA==:").text == ""


def test_crv1_username_padding_is_optional_and_utf8_is_decoded() -> None:
    assert parse_crv1("CRV1:R:s:dGVzdA:q").username == "test"
    name = base64.b64encode("jöns".encode()).decode()
    assert parse_crv1(f"CRV1:R:s:{name}:q").username == "jöns"


@pytest.mark.parametrize(
    "message",
    [
        "",
        "CRV1",
        "CRV1:R",
        "CRV1:R:state",
        "CRV1:R:state:dGVzdA==",  # no question
        "CRV2:R:state:dGVzdA==:q",
        "crv1:R:state:dGVzdA==:q",
        "CRV1:R::dGVzdA==:q",  # empty state
        "CRV1:R:st ate:dGVzdA==:q",
        "CRV1:R:st\x00ate:dGVzdA==:q",
        "CRV1:R:" + "s" * 257 + ":dGVzdA==:q",
        "CRV1:R:state::q",  # empty user
        "CRV1:R:state:!!!!:q",
        "CRV1:R:state:dGVzdA===:q",
        "CRV1:R:state:d:q",
        "CRV1:R:state:dGVz dA==:q",
        "CRV1:R:state:8J+Y:q",  # truncated UTF-8
        "CRV1:R:state:/w==:q",  # not UTF-8
        "CRV1:R:state:dGUKc3Q=:q",  # "te\nst"
        "CRV1:R:state:w6k=:q" + "x" * 5000,
        "CRV1:R:state:" + "QUFB" * 200 + ":q",
    ],
)
def test_malformed_crv1_is_a_server_error(message: str) -> None:
    with pytest.raises(ServerError, match="challenge vpnd cannot read") as caught:
        parse_crv1(message)
    assert type(caught.value) is ServerError


def test_answers() -> None:
    optional = parse_crv1("CRV1:E:st-1:dGVzdA==:anything to add?")
    assert optional.answer("").password == "CRV1::st-1::"
    required = parse_crv1("CRV1:R:st-1:dGVzdA==:code?")
    with pytest.raises(InvalidArgument, match="requires an answer"):
        required.answer("")
    assert required.answer("a b:c").password == "CRV1::st-1::a b:c"
    with pytest.raises(InvalidArgument, match="control"):
        required.answer("12\n34")
    with pytest.raises(InvalidArgument, match="longer"):
        required.answer("1" * 1025)
    with pytest.raises(InvalidArgument, match="state"):
        crv1_password("a::b", "1")


def test_a_username_with_a_colon_can_be_read_but_not_answered_over_basic() -> None:
    name = base64.b64encode(b"do:main").decode()
    challenge = parse_crv1(f"CRV1:R:s:{name}:q")
    assert challenge.username == "do:main"
    with pytest.raises(InvalidArgument, match="':'"):
        challenge.answer("1").authorization()


def test_crv1_password_reading() -> None:
    assert parse_crv1_password("CRV1::st::3") == ("st", "3")
    assert parse_crv1_password("CRV1::st::a::b") == ("st", "a::b")
    assert parse_crv1_password("CRV1::st::") == ("st", "")
    assert parse_crv1_password("hunter2") is None
    assert parse_crv1_password("CRV1::st") is None
    assert parse_crv1_password("CRV1::::x") is None


def test_scrv1_matches_openvpns_documentation() -> None:
    # management-notes.txt: password "bar", response "8675309".
    assert scrv1_password("bar", "8675309") == "SCRV1:YmFy:ODY3NTMwOQ=="
    assert scrv1_password("", "") == "SCRV1::"
    assert scrv1_password("p:w", "ü") == "SCRV1:cDp3:w7w="
    with pytest.raises(InvalidArgument, match="control"):
        scrv1_password("bar", "12\n")
    with pytest.raises(InvalidArgument, match="control"):
        scrv1_password("b\x00ar", "1")


# --- properties ---------------------------------------------------------------

TEXT = st.text(max_size=80)
MESSAGES = st.one_of(
    TEXT,
    st.sampled_from(
        ["AUTH_FAILED: ", "NEED_AUTOLOGIN: ", "Ovpn-WebAuth:", "CRV1:", "enroll "]
    ).flatmap(lambda prefix: TEXT.map(lambda rest: prefix + rest)),
    st.builds(
        lambda flags, state, user, text: f"CRV1:{flags}:{state}:{user}:{text}",
        st.text("RE, x", max_size=6),
        st.text(max_size=20),
        st.one_of(
            st.text(max_size=12), st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode())
        ),
        TEXT,
    ),
)
TYPES = st.one_of(
    TEXT, st.sampled_from(["Authorization Required", "Internal Server Error", "Access denied"])
)


def _xml_safe(text: str) -> str:
    # Characters XML 1.0 cannot carry at all, so the document stays well-formed.
    return "".join(
        ch
        for ch in text
        if ch in "\t\n\r"
        or (ch >= " " and not 0xD800 <= ord(ch) <= 0xDFFF and ch not in "\ufffe\uffff")
    )


DOCUMENTS = st.builds(lambda t, m: error_xml(_xml_safe(t), _xml_safe(m)), TYPES, MESSAGES)
BODIES = st.one_of(st.binary(max_size=300), DOCUMENTS, TEXT.map(str.encode))


def assert_presentable(error: VpndError, server_text: bytes) -> None:
    assert error.message.isprintable()
    assert 0 < len(error.message) < 1000
    # The daemon's own words never name a client; the server's, quoted, may.
    if b"vpnctl" not in server_text:
        assert "vpnctl" not in error.message


@settings(max_examples=400, deadline=None)
@given(BODIES)
@example(BILLION_LAUGHS)
def test_error_parser_always_returns_a_presentable_named_error(body: bytes) -> None:
    error = parse_error_reply(body)
    assert isinstance(error, VpndError)
    assert_presentable(error, body)
    if isinstance(error, WebAuthRequired):
        assert error.provider.isprintable() and len(error.provider) <= 100
        assert all(flag.isprintable() and 0 < len(flag) <= 32 for flag in error.flags)
        assert len(error.flags) <= 16


@settings(max_examples=300, deadline=None)
@given(
    st.integers(100, 599),
    st.sampled_from([None, "text/xml", PROFILE_CONTENT_TYPE, "text/html"]),
    BODIES,
)
def test_reply_parser_returns_a_profile_or_raises_a_named_error(
    status: int, content_type: str | None, body: bytes
) -> None:
    try:
        text = parse_profile_reply(status, content_type, body)
    except (ServerError, ConfigRejected, AuthorizationRequired, AuthorizationFailed) as error:
        assert_presentable(error, body)
    else:
        assert 200 <= status < 300 and content_type == PROFILE_CONTENT_TYPE
        assert not body.lstrip().startswith((b"<?xml", b"<Error"))
        assert "\0" not in text


@settings(max_examples=400, deadline=None)
@given(MESSAGES)
@example("CRV1:R:s:dGVzdA==:" + "\u2028" * 10)
def test_crv1_parser_raises_only_server_error_and_bounds_what_it_returns(message: str) -> None:
    try:
        challenge = parse_crv1(message)
    except ServerError as error:
        assert type(error) is ServerError
        assert_presentable(error, message.encode())
        return
    assert challenge.text.isprintable() and len(challenge.text) <= MAX_CHALLENGE_TEXT
    assert challenge.username.isprintable() and 0 < len(challenge.username) <= 256
    assert 0 < len(challenge.state_id) <= 256 and ":" not in challenge.state_id


STATE_IDS = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters=":"),
    min_size=1,
    max_size=256,
)
PRINTABLE = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Cf", "Co", "Cn", "Zs")),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.booleans(), STATE_IDS, PRINTABLE.filter(bool), PRINTABLE)
def test_crv1_round_trip(
    echo: bool, required: bool, state_id: str, username: str, text: str
) -> None:
    challenge = DynamicChallenge(state_id, username, text, echo=echo, response_required=required)
    assert parse_crv1(crv1_message(challenge)) == challenge


@settings(max_examples=300, deadline=None)
@given(STATE_IDS, st.text(max_size=100).filter(str.isprintable))
def test_crv1_answer_round_trip(state_id: str, response: str) -> None:
    assert parse_crv1_password(crv1_password(state_id, response)) == (state_id, response)


@settings(max_examples=200, deadline=None)
@given(
    st.text(min_size=1, max_size=50).filter(lambda u: u.isprintable() and ":" not in u),
    st.text(max_size=50).filter(str.isprintable),
)
def test_basic_authorization_round_trip(username: str, password: str) -> None:
    value = basic_authorization(username, password)
    assert value.startswith("Basic ")
    decoded = base64.b64decode(value.removeprefix("Basic "), validate=True).decode()
    assert decoded == f"{username}:{password}"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=50), st.text(max_size=50))
def test_scrv1_round_trip_or_invalid_argument(password: str, response: str) -> None:
    try:
        value = scrv1_password(password, response)
    except InvalidArgument as error:
        assert_presentable(error, b"")
        return
    tag, p64, r64 = value.split(":")
    assert tag == "SCRV1"
    assert base64.b64decode(p64).decode() == password
    assert base64.b64decode(r64).decode() == response


def test_an_error_document_labelled_as_a_profile_is_still_an_error() -> None:
    body = error_xml("Authorization Required", "AUTH_FAILED: no (9007)")
    assert type(reply_error(body, PROFILE_CONTENT_TYPE, 200)) is CredentialsRejected


# --- profile links of a web login (SAML) ------------------------------------------


@pytest.mark.parametrize(
    "link",
    [
        "openvpn://import-profile/https://vpn.example.org/rest/GetProfileViaToken?token=abcDEF12_-",
        "openvpn://import/https://vpn.example.org/rest/GetProfileViaToken?token=abcDEF12_-",
        "https://VPN.example.org:443/rest/GetProfileViaToken?token=abcDEF12_-",
        "  https://vpn.example.org/rest/GetProfileViaToken?token=abcDEF12_-\n",
    ],
)
def test_a_profile_link_of_the_same_server_is_followed(link: str) -> None:
    assert token_profile_url(BASE, link) == (
        "https://vpn.example.org/rest/GetProfileViaToken?token=abcDEF12_-"
    )


@pytest.mark.parametrize(
    "link",
    [
        "https://evil.example/rest/GetProfileViaToken?token=abcDEF12_-",
        "http://vpn.example.org/rest/GetProfileViaToken?token=abcDEF12_-",
        "https://vpn.example.org:8443/rest/GetProfileViaToken?token=abcDEF12_-",
        "https://vpn.example.org@evil.example/rest/GetProfileViaToken?token=abcDEF12_-",
        "https://vpn.example.org/rest/GetUserlogin?token=abcDEF12_-",
        "https://vpn.example.org/rest/GetProfileViaToken?token=short",
        "https://vpn.example.org/rest/GetProfileViaToken?token=abcDEF12_-&token=again123",
        "https://vpn.example.org/rest/GetProfileViaToken?token=abc%0Adef12",
        "openvpn://import-profile/file:///etc/passwd",
        "https://[vpn.example.org/",
        "",
    ],
)
def test_a_profile_link_elsewhere_or_of_another_kind_is_refused(link: str) -> None:
    with pytest.raises(InvalidArgument):
        token_profile_url(BASE, link)


@given(st.text(max_size=300))
def test_any_profile_link_is_refused_or_names_this_server(link: str) -> None:
    try:
        url = token_profile_url(BASE, link)
    except InvalidArgument:
        return
    assert url.startswith("https://vpn.example.org/rest/GetProfileViaToken?token=")
