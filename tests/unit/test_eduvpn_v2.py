"""eduVPN API v2: info.json, the reply envelope, every call's reply, key pairs, configs."""

from __future__ import annotations

import contextlib
import json
import time

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.certs import DAY, key_pem, make_pair, new_key
from vpnd.errors import (
    AccountDisabled,
    ApiCallFailed,
    AuthorizationRequired,
    CertificateRejected,
    ConfigRejected,
    InvalidArgument,
    NotFound,
    ProfileUnavailable,
    ServerError,
    TwoFactorRequired,
    VpndError,
)
from vpnd.protocols import ovpnconfig
from vpnd.protocols.eduvpn import API_V3, Endpoints, Profile
from vpnd.protocols.eduvpn_v2 import (
    API_V2,
    CLOCK_SKEW,
    MAX_MESSAGE_TEXT,
    MAX_MESSAGES,
    CertificateStatus,
    LegacyProfile,
    Message,
    UserInfo,
    api_error,
    certificate_common_name,
    certificate_expiry,
    check_can_connect,
    check_certificate_request,
    complete_config,
    create_keypair_request,
    failure_error,
    info_json_url,
    load_keypair,
    parse_check_certificate,
    parse_envelope,
    parse_info_json,
    parse_keypair,
    parse_messages,
    parse_profile_config,
    parse_profile_list,
    parse_user_info,
    profile_config_request,
    profile_list_request,
    system_messages_request,
    user_info_request,
    user_messages_request,
)

DOC_URL = "https://vpn.example.org/info.json"
API = "https://vpn.example.org/portal/api.php"
V2 = {
    "api_base_uri": API,
    "authorization_endpoint": "https://vpn.example.org/portal/_oauth/authorize",
    "token_endpoint": "https://vpn.example.org/portal/oauth.php/token",
}


def dumps(doc: object) -> bytes:
    return json.dumps(doc).encode()


def ok(call: str, data: object) -> bytes:
    return dumps({call: {"ok": True, "data": data}})


def failed(call: str, error: str) -> bytes:
    return dumps({call: {"ok": False, "error": error}})


# --- info.json ----------------------------------------------------------------


def test_info_json_url() -> None:
    assert info_json_url("https://vpn.example.org/") == "https://vpn.example.org/info.json"
    assert info_json_url("https://vpn.example.org/sub") == "https://vpn.example.org/sub/info.json"


def test_parse_info_json() -> None:
    endpoints = parse_info_json(dumps({"api": {API_V2: V2}}), DOC_URL)
    assert endpoints == Endpoints(
        api_endpoint=API,
        authorization_endpoint=V2["authorization_endpoint"],
        token_endpoint=V2["token_endpoint"],
    )


def test_parse_info_json_reads_v2_beside_v3() -> None:
    v3 = {"api_endpoint": "https://vpn.example.org/api/v3"}
    endpoints = parse_info_json(dumps({"api": {API_V3: v3, API_V2: V2}, "v": "2.4"}), DOC_URL)
    assert endpoints.api_endpoint == API
    assert endpoints.server_version == "2.4"


def test_parse_info_json_resolves_relative_urls_against_the_document() -> None:
    doc = {
        "api": {
            API_V2: {
                "api_base_uri": "/portal/api.php",
                "authorization_endpoint": "_oauth/authorize",
                "token_endpoint": "//auth.example.org/token",
            }
        }
    }
    endpoints = parse_info_json(dumps(doc), "https://vpn.example.org:8443/portal/info.json")
    assert endpoints.api_endpoint == "https://vpn.example.org:8443/portal/api.php"
    assert (
        endpoints.authorization_endpoint == "https://vpn.example.org:8443/portal/_oauth/authorize"
    )
    assert endpoints.token_endpoint == "https://auth.example.org/token"


def test_relative_urls_never_inherit_plain_http() -> None:
    doc = {"api": {API_V2: {**V2, "api_base_uri": "/portal/api.php"}}}
    with pytest.raises(ServerError, match="api_base_uri"):
        parse_info_json(dumps(doc), "http://vpn.example.org/info.json")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"<html>", "invalid JSON"),
        (b"", "invalid JSON"),
        (dumps([]), "not a JSON object"),
        (dumps({}), '"api"'),
        (dumps({"api": {}}), "does not offer eduVPN API v2"),
        (dumps({"api": {"create_config": "x"}, "version": 1}), "API v1"),
        (dumps({"api": {API_V2: []}}), "not a JSON object"),
        (dumps({"api": {API_V2: {**V2, "api_base_uri": "http://v.example/api"}}}), "api_base_uri"),
        (dumps({"api": {API_V2: {**V2, "token_endpoint": 7}}}), "token_endpoint"),
        (dumps({"api": {API_V2: {**V2, "token_endpoint": ""}}}), "token_endpoint"),
        (dumps({"api": {API_V2: {**V2, "token_endpoint": "ftp://x/"}}}), "token_endpoint"),
        (dumps({"api": {API_V2: {**V2, "token_endpoint": "https://[::1/"}}}), "token_endpoint"),
        (
            dumps({"api": {API_V2: {k: v for k, v in V2.items() if k != "token_endpoint"}}}),
            "token_endpoint",
        ),
    ],
)
def test_parse_info_json_rejects(body: bytes, problem: str) -> None:
    with pytest.raises(ServerError) as caught:
        parse_info_json(body, DOC_URL)
    assert problem in caught.value.message


# --- the envelope ---------------------------------------------------------------


def test_parse_envelope_returns_data() -> None:
    assert parse_envelope("profile_list", ok("profile_list", [1, 2])) == [1, 2]
    assert parse_envelope("user_info", ok("user_info", None)) is None


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ("something broke", ApiCallFailed),
        ("", ApiCallFailed),
        ("user is disabled", AccountDisabled),
        ("account has been disabled", AccountDisabled),
        ("profile not available", ProfileUnavailable),
        ("no such profile", ProfileUnavailable),
        ("invalid profile", ProfileUnavailable),
        ("two-factor authentication required", TwoFactorRequired),
        ("user has no TOTP secret", TwoFactorRequired),
    ],
)
def test_ok_false_becomes_a_named_error(error: str, kind: type[VpndError]) -> None:
    with pytest.raises(kind) as caught:
        parse_envelope("profile_config", failed("profile_config", error))
    assert type(caught.value) is kind
    if error:
        assert error in caught.value.message
    assert "vpnctl" not in caught.value.message


def test_ok_false_without_error_text() -> None:
    with pytest.raises(ApiCallFailed, match="without saying why"):
        parse_envelope("create_keypair", dumps({"create_keypair": {"ok": False}}))


def test_ok_false_text_is_cleaned_and_bounded() -> None:
    error = failure_error("profile_list", "bad\x1b[31m\nthing\u202e" + "x" * 1000)
    assert all(ch.isprintable() for ch in error.message)
    assert len(error.message) < 400


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{", "invalid JSON"),
        (b"\xff", "invalid JSON"),
        (dumps([]), "not a JSON object"),
        (dumps({}), 'no "profile_list" object'),
        (dumps({"other": {"ok": True, "data": []}}), 'no "profile_list" object'),
        (dumps({"profile_list": []}), 'no "profile_list" object'),
        (dumps({"profile_list": {"data": []}}), '"ok"'),
        (dumps({"profile_list": {"ok": "true", "data": []}}), '"ok"'),
        (dumps({"profile_list": {"ok": 1, "data": []}}), '"ok"'),
        (dumps({"profile_list": {"ok": True}}), '"data"'),
    ],
)
def test_parse_envelope_rejects(body: bytes, problem: str) -> None:
    with pytest.raises(ServerError) as caught:
        parse_envelope("profile_list", body)
    assert problem in caught.value.message
    assert not isinstance(caught.value, ApiCallFailed)


def test_api_error_401_asks_for_a_new_login_in_plain_words() -> None:
    error = api_error(401, "profile_list", dumps({"error": "invalid_token"}))
    assert isinstance(error, AuthorizationRequired)
    assert "log in" in error.message and "vpnctl" not in error.message


def test_api_error_reads_an_envelope_behind_any_status() -> None:
    error = api_error(400, "profile_config", failed("profile_config", "profile not available"))
    assert isinstance(error, ProfileUnavailable)


def test_api_error_names_the_status_otherwise() -> None:
    error = api_error(500, "profile_list", dumps({"error": "db down\n"}))
    assert type(error) is ServerError
    assert (
        error.message
        == "the server answered the profile_list request with HTTP status 500: db down"
    )
    assert type(api_error(502, "profile_list", b"<html>")) is ServerError
    assert type(api_error(500, "profile_list", ok("profile_list", []))) is ServerError


# --- profile_list -----------------------------------------------------------------


def test_parse_profile_list() -> None:
    body = ok(
        "profile_list",
        [
            {
                "profile_id": "internet",
                "display_name": {"nl": "Internettoegang", "en-US": "Internet Access"},
                "two_factor": True,
                "two_factor_method": ["totp", "yubi"],
                "default_gateway": True,
            },
            {"profile_id": "office"},
        ],
    )
    internet, office = parse_profile_list(body)
    assert internet == LegacyProfile(
        profile_id="internet",
        display_name={"nl": "Internettoegang", "en-US": "Internet Access"},
        two_factor=True,
        default_gateway=True,
        two_factor_method=("totp", "yubi"),
    )
    assert office == LegacyProfile(profile_id="office", display_name="office")
    assert internet.as_profile() == Profile(
        profile_id="internet",
        display_name={"nl": "Internettoegang", "en-US": "Internet Access"},
        vpn_proto_list=("openvpn",),
        default_gateway=True,
    )


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ("x", "not a list"),
        ([5], "not a JSON object"),
        ([{"display_name": "x"}], "profile_id"),
        ([{"profile_id": "a b"}], "profile_id"),
        ([{"profile_id": "p", "two_factor": "yes"}], '"two_factor"'),
        ([{"profile_id": "p", "default_gateway": 1}], '"default_gateway"'),
        ([{"profile_id": "p", "display_name": 5}], "display_name"),
        ([{"profile_id": "p", "two_factor_method": "totp"}], "two_factor_method"),
        ([{"profile_id": "p"}, {"profile_id": "p"}], "twice"),
        ([{"profile_id": f"p{i}"} for i in range(1001)], "more than 1000"),
    ],
)
def test_parse_profile_list_rejects(entries: object, problem: str) -> None:
    with pytest.raises(ServerError) as caught:
        parse_profile_list(ok("profile_list", entries))
    assert problem in caught.value.message


def test_profile_display_names_are_cleaned() -> None:
    (profile,) = parse_profile_list(
        ok("profile_list", [{"profile_id": "p", "display_name": "Evil\x1b[2J\nName"}])
    )
    assert profile.display_name == "Evil[2JName"


# --- user_info -------------------------------------------------------------------


def test_parse_user_info() -> None:
    body = ok(
        "user_info",
        {
            "user_id": "foo@example.org",
            "is_disabled": False,
            "two_factor_enrolled": True,
            "two_factor_enrolled_with": ["totp"],
        },
    )
    assert parse_user_info(body) == UserInfo(
        is_disabled=False,
        two_factor_enrolled=True,
        two_factor_enrolled_with=("totp",),
        user_id="foo@example.org",
    )
    assert parse_user_info(ok("user_info", {"is_disabled": True})) == UserInfo(is_disabled=True)


@pytest.mark.parametrize(
    "data",
    [
        [],
        {},
        {"is_disabled": "no"},
        {"is_disabled": False, "two_factor_enrolled": None},
        {"is_disabled": False, "two_factor_enrolled_with": [1]},
    ],
)
def test_parse_user_info_rejects(data: object) -> None:
    with pytest.raises(ServerError):
        parse_user_info(ok("user_info", data))


def test_check_can_connect() -> None:
    plain = LegacyProfile("office", "Office")
    guarded = LegacyProfile("internet", "Internet", two_factor=True)
    check_can_connect(plain, UserInfo(is_disabled=False))
    check_can_connect(guarded, UserInfo(is_disabled=False, two_factor_enrolled=True))
    with pytest.raises(AccountDisabled):
        check_can_connect(plain, UserInfo(is_disabled=True, two_factor_enrolled=True))
    with pytest.raises(TwoFactorRequired, match="enroll"):
        check_can_connect(guarded, UserInfo(is_disabled=False))


# --- check_certificate ------------------------------------------------------------


def test_parse_check_certificate_valid() -> None:
    status = parse_check_certificate(ok("check_certificate", {"is_valid": True}))
    assert status == CertificateStatus(is_valid=True)
    assert not status.renewable and status.problem == ""


@pytest.mark.parametrize(
    ("reason", "expected", "renewable"),
    [
        ("certificate_missing", "certificate_missing", True),
        ("certificate_expired", "certificate_expired", True),
        ("certificate_not_yet_valid", "certificate_not_yet_valid", True),
        ("user_disabled", "user_disabled", False),
        ("something_new", "unknown", True),
        (None, "unknown", True),
        (5, "unknown", True),
    ],
)
def test_parse_check_certificate_invalid(reason: object, expected: str, renewable: bool) -> None:
    data: dict[str, object] = {"is_valid": False}
    if reason is not None:
        data["reason"] = reason
    status = parse_check_certificate(ok("check_certificate", data))
    assert status.reason == expected
    assert status.renewable is renewable
    assert status.problem and "vpnctl" not in status.problem


@pytest.mark.parametrize("data", [{}, {"is_valid": "true"}, [], None])
def test_parse_check_certificate_rejects(data: object) -> None:
    with pytest.raises(ServerError):
        parse_check_certificate(ok("check_certificate", data))


# --- messages ----------------------------------------------------------------------


def test_parse_messages() -> None:
    body = ok(
        "system_messages",
        [
            {
                "type": "notification",
                "message": "Hello World!",
                "date_time": "2016-12-02T10:42:08Z",
            },
            {
                "type": "motd",
                "message": {"en-US": "Welcome", "nl": "Welkom"},
                "date_time": "2016-12-02T10:42:09+01:00",
            },
            {
                "type": "maintenance",
                "date_time": "2016-12-02T10:42:10Z",
                "begin": "2016-12-03T08:00:00Z",
                "end": "2016-12-03T09:00:00",
            },
            {"type": "banner", "message": "from the future", "date_time": "x"},
        ],
    )
    notification, motd, maintenance = parse_messages("system_messages", body, ["nl-NL", "nl"])
    assert notification == Message("notification", "Hello World!", 1480675328.0)
    assert motd == Message("motd", "Welkom", 1480675329.0 - 3600)
    assert maintenance == Message("maintenance", "", 1480675330.0, 1480752000.0, 1480755600.0)
    english = parse_messages("system_messages", body)
    assert english[1].text == "Welcome"


def test_user_messages_are_flattened_to_one_clean_line() -> None:
    body = ok(
        "user_messages",
        [
            {
                "type": "notification",
                "message": "Your account\nhas been\u2028disabled.\x1b[0m " + "x" * 5000,
                "date_time": "2016-12-02T10:43:10Z",
            },
            {"type": "notification", "message": " \n ", "date_time": "2016-12-02T10:43:10Z"},
        ],
    )
    (message,) = parse_messages("user_messages", body)
    assert message.text.startswith("Your account has been disabled.[0m xxx")
    assert len(message.text) == MAX_MESSAGE_TEXT
    assert message.text.isprintable()


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("x", "not a JSON object"),
        ({"type": "notification", "message": "m"}, "date_time"),
        ({"type": "notification", "message": "m", "date_time": "yesterday"}, "date_time"),
        ({"type": "notification", "message": 5, "date_time": "2016-12-02T10:43:10Z"}, "message"),
        (
            {"type": "notification", "message": {"x y": "m"}, "date_time": "2016-12-02T10:43:10Z"},
            "language",
        ),
        ({"type": "maintenance", "date_time": "2016-12-02T10:43:10Z"}, '"begin"'),
        (
            {
                "type": "maintenance",
                "date_time": "2016-12-02T10:43:10Z",
                "begin": "2016-12-03T10:00:00Z",
                "end": "2016-12-03T09:00:00Z",
            },
            "ends before it begins",
        ),
    ],
)
def test_parse_messages_rejects(entry: object, problem: str) -> None:
    with pytest.raises(ServerError) as caught:
        parse_messages("system_messages", ok("system_messages", [entry]))
    assert problem in caught.value.message


def test_parse_messages_is_bounded() -> None:
    entry = {"type": "notification", "message": "m", "date_time": "2016-12-02T10:43:10Z"}
    assert len(parse_messages("user_messages", ok("user_messages", [entry] * MAX_MESSAGES))) == 100
    with pytest.raises(ServerError, match="more than"):
        parse_messages("user_messages", ok("user_messages", [entry] * (MAX_MESSAGES + 1)))
    with pytest.raises(ServerError, match="not a list"):
        parse_messages("user_messages", ok("user_messages", {}))


# --- key pairs ----------------------------------------------------------------------


def keypair_body(certificate: object, private_key: object) -> bytes:
    return ok("create_keypair", {"certificate": certificate, "private_key": private_key})


@pytest.mark.parametrize("key_type", ["ec", "rsa", "ed25519"])
def test_parse_keypair(key_type: str) -> None:
    now = time.time()
    cert_pem, private_pem, _ = make_pair("abc123", not_after=now + 30 * DAY, key_type=key_type)  # type: ignore[arg-type]
    pair = parse_keypair(keypair_body(cert_pem, private_pem), now=now)
    assert pair.common_name == "abc123"
    assert pair.certificate == cert_pem
    assert pair.private_key.startswith("-----BEGIN PRIVATE KEY-----")
    assert abs(pair.not_after - (now + 30 * DAY)) < 1
    assert pair.not_before < now
    assert "PRIVATE" not in repr(pair)


def test_keypair_whose_certificate_does_not_match_its_key() -> None:
    cert_pem, _, _ = make_pair()
    other_key = key_pem(new_key())
    with pytest.raises(CertificateRejected, match="does not belong to its private key"):
        parse_keypair(keypair_body(cert_pem, other_key), now=time.time())


def test_keypair_with_a_key_of_another_type() -> None:
    cert_pem, _, _ = make_pair(key_type="ec")
    with pytest.raises(CertificateRejected, match="does not belong"):
        parse_keypair(keypair_body(cert_pem, key_pem(new_key("rsa"))), now=time.time())


def test_already_expired_certificate() -> None:
    now = time.time()
    cert_pem, private_pem, _ = make_pair(not_before=now - 10 * DAY, not_after=now - 1)
    with pytest.raises(CertificateRejected, match="already expired") as caught:
        parse_keypair(keypair_body(cert_pem, private_pem), now=now)
    assert "vpnctl" not in caught.value.message


def test_certificate_from_the_future() -> None:
    now = time.time()
    cert_pem, private_pem, _ = make_pair(not_before=now + 2 * CLOCK_SKEW)
    with pytest.raises(CertificateRejected, match="clock"):
        parse_keypair(keypair_body(cert_pem, private_pem), now=now)
    # A server clock a little ahead of ours is no reason to refuse.
    cert_pem, private_pem, _ = make_pair(not_before=now + CLOCK_SKEW / 2)
    assert parse_keypair(keypair_body(cert_pem, private_pem), now=now).not_before > now


def test_keypair_reencodes_so_nothing_around_the_pem_gets_through() -> None:
    cert_pem, private_pem, _ = make_pair()
    hostile_cert = "</cert>\nup /bin/sh\n<cert>\n" + cert_pem + "\nscript-security 2\n"
    hostile_key = "junk\n" + private_pem + "</key>\nplugin x\n"
    pair = parse_keypair(keypair_body(hostile_cert, hostile_key), now=time.time())
    assert pair.certificate == cert_pem
    assert "/bin/sh" not in pair.certificate and "plugin" not in pair.private_key


@pytest.mark.parametrize(
    ("certificate", "private_key", "problem"),
    [
        (None, "k", "not one PEM certificate"),
        ("garbage", "k", "not one PEM certificate"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "k", "cannot be read"),
        ("CERT", None, "missing"),
        ("CERT", "no key here", "not one PEM private key"),
        (
            "CERT",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "cannot be read",
        ),
        ("CERT", "ENCRYPTED", "encrypted"),
        ("CERT", "x" * 70000, "too long"),
        ("CHAIN", "KEY", "not one PEM certificate"),
    ],
)
def test_keypair_rejects(certificate: object, private_key: object, problem: str) -> None:
    cert_pem, private_pem, key = make_pair()
    replacements = {
        "CERT": cert_pem,
        "KEY": private_pem,
        "CHAIN": cert_pem + cert_pem,
        "ENCRYPTED": key_pem(key, b"secret"),
    }
    body = keypair_body(
        replacements.get(certificate, certificate) if isinstance(certificate, str) else certificate,
        replacements.get(private_key, private_key) if isinstance(private_key, str) else private_key,
    )
    with pytest.raises(CertificateRejected) as caught:
        parse_keypair(body, now=time.time())
    assert problem in caught.value.message


def test_keypair_replies_that_are_not_key_pairs() -> None:
    with pytest.raises(ServerError, match="not a JSON object"):
        parse_keypair(ok("create_keypair", ["x"]), now=time.time())
    with pytest.raises(ApiCallFailed):
        parse_keypair(failed("create_keypair", "cannot create"), now=time.time())
    with pytest.raises(AccountDisabled):
        parse_keypair(failed("create_keypair", "account is disabled"), now=time.time())


def test_certificate_without_a_single_common_name() -> None:
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "no cn")])
    cert_pem, private_pem, _ = make_pair(subject=subject)
    with pytest.raises(CertificateRejected, match="common name"):
        load_keypair(cert_pem, private_pem, now=time.time(), what="the test")
    with pytest.raises(CertificateRejected, match="common name"):
        certificate_common_name(cert_pem)


def test_certificate_common_name_and_expiry() -> None:
    now = time.time()
    cert_pem, _, _ = make_pair("fd2c32de", not_after=now + DAY)
    assert certificate_common_name(cert_pem) == "fd2c32de"
    assert abs(certificate_expiry(cert_pem) - (now + DAY)) < 1
    with pytest.raises(CertificateRejected):
        certificate_expiry("nothing")


# --- profile_config and the merged configuration ------------------------------------

CONFIG = """dev tun
client
nobind
remote vpn.example.org 1194 udp
remote vpn.example.org 1194 tcp
remote-cert-tls server
<ca>
-----BEGIN CERTIFICATE-----
MIIB
-----END CERTIFICATE-----
</ca>
"""


def test_parse_profile_config() -> None:
    assert parse_profile_config("application/x-openvpn-profile", CONFIG.encode()) == CONFIG
    assert parse_profile_config("text/plain; charset=utf-8", CONFIG.encode()) == CONFIG


def test_profile_config_failure_is_named() -> None:
    body = failed("profile_config", "profile not available")
    with pytest.raises(ProfileUnavailable):
        parse_profile_config("application/json", body)
    # Some servers label the JSON failure as a profile; it is still read as one.
    with pytest.raises(ProfileUnavailable):
        parse_profile_config("application/x-openvpn-profile", body)
    with pytest.raises(ServerError, match="JSON, not an OpenVPN configuration"):
        parse_profile_config("application/json", ok("profile_config", "dev tun"))
    with pytest.raises(ServerError, match="invalid JSON"):
        parse_profile_config("application/json", b"dev tun")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"dev tun\n\x00", "NUL"),
        (b"\xff\xfe", "UTF-8"),
        (b"#" * ((1 << 20) + 1), "1 MiB"),
    ],
)
def test_profile_config_rejects(body: bytes, problem: str) -> None:
    with pytest.raises(ConfigRejected, match=problem):
        parse_profile_config("application/x-openvpn-profile", body)


def test_complete_config() -> None:
    now = time.time()
    cert_pem, private_pem, _ = make_pair(not_after=now + 7 * DAY)
    pair = load_keypair(cert_pem, private_pem, now=now, what="the test")
    stale = CONFIG + "<cert>\nOLD CERT\n</cert>\n<key>\nOLD KEY\n</key>\n"
    merged = complete_config(stale.rstrip("\n"), pair)
    assert merged.text.count("<cert>") == 1 and "<key>" not in merged.text
    assert "OLD" not in merged.text
    assert merged.private_key == pair.private_key
    assert merged.certificate == cert_pem
    assert merged.expires_at == pair.not_after
    assert "PRIVATE" not in repr(merged)
    sanitized = ovpnconfig.sanitize(merged.text)
    assert (ovpnconfig.inline_block(sanitized, "cert") or "").strip() == cert_pem.strip()
    assert ovpnconfig.inline_block(sanitized, "key") is None


# --- requests ------------------------------------------------------------------------


def test_requests() -> None:
    assert profile_list_request(API).url == f"{API}/profile_list"
    assert profile_list_request(API + "/").method == "GET"
    assert user_info_request(API).url == f"{API}/user_info"
    assert system_messages_request(API).url == f"{API}/system_messages"
    assert user_messages_request(API).url == f"{API}/user_messages"
    config = profile_config_request(API, "internet")
    assert (config.method, config.url, dict(config.params)) == (
        "GET",
        f"{API}/profile_config",
        {"profile_id": "internet"},
    )
    check = check_certificate_request(API, "fd2c32de88c87d38df8547c54ac6c30e")
    assert check.url == f"{API}/check_certificate"
    assert dict(check.params) == {"common_name": "fd2c32de88c87d38df8547c54ac6c30e"}
    keypair = create_keypair_request(API)
    assert (keypair.method, dict(keypair.params)) == ("POST", {"display_name": "vpnd"})
    assert create_keypair_request(API, "My\nLaptop").params["display_name"] == "MyLaptop"


@pytest.mark.parametrize(
    "build",
    [
        lambda: profile_config_request(API, ""),
        lambda: profile_config_request(API, "a/b"),
        lambda: profile_config_request(API, "x" * 129),
        lambda: check_certificate_request(API, ""),
        lambda: check_certificate_request(API, "a\nb"),
        lambda: check_certificate_request(API, "x" * 65),
        lambda: create_keypair_request(API, "\x00"),
    ],
)
def test_requests_refuse_bad_arguments(build: object) -> None:
    with pytest.raises(InvalidArgument):
        build()  # type: ignore[operator]


# --- properties ------------------------------------------------------------------------

CALLS = ["profile_list", "user_info", "check_certificate", "system_messages", "create_keypair"]
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "api",
                    API_V2,
                    "api_base_uri",
                    "authorization_endpoint",
                    "token_endpoint",
                    "ok",
                    "data",
                    "error",
                    "profile_id",
                    "display_name",
                    "two_factor",
                    "is_valid",
                    "reason",
                    "is_disabled",
                    "type",
                    "message",
                    "date_time",
                    "begin",
                    "end",
                    "certificate",
                    "private_key",
                    *CALLS,
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    call = draw(st.sampled_from(CALLS))
    inner = draw(
        st.fixed_dictionaries(
            {"ok": st.one_of(st.booleans(), JSONISH)},
            optional={"data": JSONISH, "error": st.one_of(st.text(max_size=30), JSONISH)},
        )
    )
    return dumps({call: inner})


BODIES = st.one_of(st.binary(max_size=200), JSONISH.map(dumps), envelopes())
NAMED = (ServerError, NotFound)


@settings(max_examples=200, deadline=None)
@given(BODIES)
def test_info_json_parser_only_raises_server_error(body: bytes) -> None:
    with contextlib.suppress(ServerError):
        endpoints = parse_info_json(body, DOC_URL)
        for url in (endpoints.api_endpoint, endpoints.authorization_endpoint):
            assert url.startswith("https://") and len(url) <= 2048


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CALLS), BODIES)
def test_envelope_parser_only_raises_named_errors(call: str, body: bytes) -> None:
    try:
        parse_envelope(call, body)
    except NAMED as error:
        assert all(ch.isprintable() for ch in error.message)
        assert len(error.message) < 400


@settings(max_examples=300, deadline=None)
@given(BODIES)
def test_reply_parsers_only_raise_named_errors(body: bytes) -> None:
    parsers = [
        parse_profile_list,
        parse_user_info,
        parse_check_certificate,
        lambda b: parse_messages("system_messages", b, ["nl"]),
        lambda b: parse_keypair(b, now=time.time()),
        lambda b: parse_profile_config("application/json", b),
    ]
    for parse in parsers:
        with contextlib.suppress(*NAMED):
            parse(body)


@settings(max_examples=100, deadline=None)
@given(st.integers(100, 599), st.sampled_from(CALLS), BODIES)
def test_api_error_always_returns_a_named_error(status: int, call: str, body: bytes) -> None:
    error = api_error(status, call, body)
    assert isinstance(error, VpndError)
    assert all(ch.isprintable() for ch in error.message)
    assert "vpnctl" not in error.message
