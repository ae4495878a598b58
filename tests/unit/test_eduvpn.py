"""eduVPN API v3 documents: base URLs, discovery, /info, /connect, errors."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpnd.errors import (
    AuthorizationRequired,
    ConfigRejected,
    InvalidArgument,
    NotFound,
    ServerError,
    VpndError,
)
from vpnd.protocols.eduvpn import (
    API_V2,
    API_V3,
    MAX_DISPLAY_NAME,
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_LANGUAGES,
    MAX_LIST_ITEMS,
    MAX_PROFILES,
    OPENVPN_PROFILE,
    WIREGUARD_PROFILE,
    Endpoints,
    NotApiV3,
    Profile,
    api_call_url,
    api_error,
    clean_text,
    load_json,
    normalize_base_url,
    parse_connect,
    parse_info,
    parse_well_known,
    well_known_url,
)


def dumps(doc: object) -> bytes:
    return json.dumps(doc).encode()


# --- base URLs ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_url", "expected"),
    [
        ("https://vpn.example.org", "https://vpn.example.org/"),
        ("https://vpn.example.org/", "https://vpn.example.org/"),
        ("HTTPS://VPN.Example.ORG/Portal", "https://vpn.example.org/Portal/"),
        ("vpn.example.org", "https://vpn.example.org/"),
        ("vpn.example.org:8443/vpn", "https://vpn.example.org:8443/vpn/"),
        ("https://vpn.example.org:443/", "https://vpn.example.org/"),
        ("https://vpn.example.org:8443", "https://vpn.example.org:8443/"),
        ("https://192.0.2.1/", "https://192.0.2.1/"),
        ("https://[2001:DB8:0::1]:444/", "https://[2001:db8::1]:444/"),
        ("https://bücher.example/", "https://xn--bcher-kva.example/"),
        ("https://vpn.example.org/a b".replace(" ", "%20"), "https://vpn.example.org/a%20b/"),
        ("https://vpn.example.org/ü", "https://vpn.example.org/%C3%BC/"),
    ],
)
def test_normalize_base_url(given_url: str, expected: str) -> None:
    assert normalize_base_url(given_url) == expected
    assert normalize_base_url(expected) == expected


@pytest.mark.parametrize(
    ("given_url", "problem"),
    [
        ("", "empty"),
        ("http://vpn.example.org/", "http://"),
        ("HTTP://vpn.example.org/", "http://"),
        ("ftp://vpn.example.org/", "https://"),
        ("mailto:admin@example.org", "https://"),
        ("javascript:alert(1)", "https://"),
        ("https://", "host"),
        ("https:///path", "host"),
        ("https://user:pw@vpn.example.org/", "user name"),
        ("https://user@vpn.example.org/", "user name"),
        ("https://vpn.example.org/?a=b", "query"),
        ("https://vpn.example.org/#frag", "fragment"),
        ("https://vpn.example.org/?", "query"),
        ("https://vpn.example.org/ x", "spaces"),
        ("https://vpn.example.org/\tx", "spaces"),
        (" https://vpn.example.org/", "spaces"),
        ("https://vpn.example.org/\x00", "control"),
        ("https://vpn.example.org/\u202e", "control"),
        ("https://vpn.example.org:0/", "port"),
        ("https://vpn.example.org:99999/", "port"),
        ("https://vpn.example.org:x/", "port"),
        ("https://[::1/", "valid URL"),
        ("https://[fe80::1%25eth0]/", "host name"),
        ("https://-bad-.example/", "host name"),
        ("https://under score$.example/".replace(" ", ""), "host name"),
        ("https://" + "a" * 64 + ".example/", "host name"),
        ("https://vpn.example.org/" + "a" * 2048, "2048"),
    ],
)
def test_normalize_base_url_rejects(given_url: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        normalize_base_url(given_url)
    assert problem in caught.value.message


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=80),
        st.builds(
            lambda host, path: f"https://{host}/{path}",
            st.from_regex(r"[A-Za-z0-9.-]{1,30}", fullmatch=True),
            st.text(max_size=20),
        ),
    )
)
def test_normalize_base_url_is_idempotent_and_only_raises_invalid_argument(url: str) -> None:
    try:
        normalized = normalize_base_url(url)
    except InvalidArgument:
        return
    assert normalized.startswith("https://")
    assert normalized.endswith("/")
    assert normalize_base_url(normalized) == normalized


def test_well_known_url() -> None:
    assert (
        well_known_url("https://vpn.example.org/")
        == "https://vpn.example.org/.well-known/vpn-user-portal"
    )
    assert (
        well_known_url("https://vpn.example.org/sub")
        == "https://vpn.example.org/sub/.well-known/vpn-user-portal"
    )


def test_api_call_url() -> None:
    assert api_call_url("https://v.example/vpn-user-portal/api/v3", "info") == (
        "https://v.example/vpn-user-portal/api/v3/info"
    )
    assert api_call_url("https://v.example/api/v3/", "connect") == (
        "https://v.example/api/v3/connect"
    )


# --- discovery ----------------------------------------------------------------

V3 = {
    "api_endpoint": "https://vpn.example.org/vpn-user-portal/api/v3",
    "authorization_endpoint": "https://vpn.example.org/vpn-user-portal/oauth/authorize",
    "token_endpoint": "https://vpn.example.org/vpn-user-portal/oauth/token",
}
V2 = {
    "api_base_uri": "https://vpn.example.org/portal/api.php",
    "authorization_endpoint": "https://vpn.example.org/portal/_oauth/authorize",
    "token_endpoint": "https://vpn.example.org/portal/oauth.php/token",
}


def test_parse_well_known_v3() -> None:
    endpoints = parse_well_known(dumps({"api": {API_V3: V3}, "v": "3.5.1-1.deb12"}))
    assert endpoints == Endpoints(**V3, server_version="3.5.1-1.deb12")


def test_parse_well_known_prefers_v3_when_both() -> None:
    endpoints = parse_well_known(dumps({"api": {API_V2: V2, API_V3: V3}}))
    assert endpoints.api_endpoint == V3["api_endpoint"]
    assert endpoints.server_version == ""


def test_parse_well_known_only_v2() -> None:
    # Not a plain ServerError: the provider then lets the next generation try.
    with pytest.raises(NotApiV3, match="offers eduVPN API v2 only"):
        parse_well_known(dumps({"api": {API_V2: V2}}))


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ([], "not a JSON object"),
        ({}, '"api"'),
        ({"api": []}, '"api"'),
        ({"api": {}}, "does not offer eduVPN API v3"),
        ({"api": {API_V3: "x"}}, "not a JSON object"),
        ({"api": {API_V3: {**V3, "api_endpoint": "http://vpn.example.org/api"}}}, "api_endpoint"),
        ({"api": {API_V3: {**V3, "token_endpoint": 5}}}, "token_endpoint"),
        ({"api": {API_V3: {**V3, "token_endpoint": "https:///x"}}}, "token_endpoint"),
        ({"api": {API_V3: {**V3, "token_endpoint": "https://u@h/x"}}}, "token_endpoint"),
        ({"api": {API_V3: {**V3, "token_endpoint": "https://h:99999/"}}}, "token_endpoint"),
        (
            {"api": {API_V3: {k: v for k, v in V3.items() if k != "authorization_endpoint"}}},
            "authorization_endpoint",
        ),
    ],
)
def test_parse_well_known_rejects(doc: object, problem: str) -> None:
    with pytest.raises(ServerError) as caught:
        parse_well_known(dumps(doc))
    assert problem in caught.value.message


def test_parse_well_known_scheme_is_case_insensitive() -> None:
    # Found by benchmarks/fuzz.py: "HTTPS://" is https (RFC 3986), and the
    # HTTP client, which checks the scheme the same way, accepts it too.
    doc = {"api": {API_V3: {**V3, "token_endpoint": "HTTPS://vpn.example.org/token"}}}
    assert parse_well_known(dumps(doc)).token_endpoint == "HTTPS://vpn.example.org/token"
    doc = {"api": {API_V3: {**V3, "token_endpoint": "HTTP://vpn.example.org/token"}}}
    with pytest.raises(ServerError, match="token_endpoint"):
        parse_well_known(dumps(doc))


def test_parse_well_known_cleans_version() -> None:
    endpoints = parse_well_known(dumps({"api": {API_V3: V3}, "v": "3.0\x1b[31m" + "9" * 100}))
    assert "\x1b" not in endpoints.server_version
    assert len(endpoints.server_version) <= 64


# --- bounded JSON -------------------------------------------------------------


def test_load_json_depth_limit() -> None:
    assert load_json(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH) is not None
    with pytest.raises(ServerError, match="invalid JSON from the server"):
        load_json(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))


def test_load_json_brackets_in_strings_do_not_count() -> None:
    doc = {"a": "[" * 100 + '\\"{' * 50}
    assert load_json(dumps(doc)) == doc


def test_load_json_deep_garbage_is_refused_without_recursion() -> None:
    with pytest.raises(ServerError):
        load_json(b"[" * 500_000)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 10_000 + b"]" * 10_000,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        b'{"info": {"profile_list": ' + b"[" * 10_000 + b"]" * 10_000 + b"}}",
    ],
)
def test_json_nested_ten_thousand_deep_is_refused_by_name(body: bytes) -> None:
    with pytest.raises(ServerError, match="nested too deeply"):
        load_json(body)
    with pytest.raises(ServerError, match="nested too deeply"):
        parse_info(body)


def test_load_json_size_limit() -> None:
    body = dumps({"a": "x" * MAX_JSON_BYTES})
    with pytest.raises(ServerError, match="1 MiB"):
        load_json(body)


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"\xff\xfe", b"NaN", b'{"a": Infinity}', b"[1,]", b'"\\ud800', b"1" * 5000],
)
def test_load_json_invalid(body: bytes) -> None:
    with pytest.raises(ServerError, match="invalid JSON from the server"):
        load_json(body)


def test_load_json_unterminated_strings_stay_linear() -> None:
    # Each unmatched quote must not restart a scan to the end of the input.
    with pytest.raises(ServerError):
        load_json(b'"\\' * 400_000)


# --- /info --------------------------------------------------------------------


def test_parse_info_full() -> None:
    body = dumps(
        {
            "info": {
                "profile_list": [
                    {
                        "profile_id": "internet",
                        "display_name": {"en-US": "Internet", "nl-NL": "Internet"},
                        "vpn_proto_list": ["openvpn", "wireguard"],
                        "vpn_proto_transport_list": ["openvpn+udp", "wireguard+udp"],
                        "default_gateway": True,
                        "dns_search_domain_list": ["example.org"],
                        "future_key": {"x": 1},
                    },
                    {"profile_id": "office.v2_b-1", "display_name": "Office"},
                ],
                "other": 1,
            }
        }
    )
    assert parse_info(body) == [
        Profile(
            profile_id="internet",
            display_name={"en-US": "Internet", "nl-NL": "Internet"},
            vpn_proto_list=("openvpn", "wireguard"),
            default_gateway=True,
            vpn_proto_transport_list=("openvpn+udp", "wireguard+udp"),
            dns_search_domain_list=("example.org",),
        ),
        Profile(profile_id="office.v2_b-1", display_name="Office"),
    ]


def test_parse_info_missing_display_name_uses_id() -> None:
    assert parse_info(dumps({"info": {"profile_list": [{"profile_id": "p"}]}})) == [
        Profile(profile_id="p", display_name="p")
    ]


def test_parse_info_empty_list() -> None:
    assert parse_info(dumps({"info": {"profile_list": []}})) == []


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ({}, "profile_list"),
        ({"info": []}, "profile_list"),
        ({"info": {"profile_list": {}}}, "profile_list"),
        ({"info": {"profile_list": ["x"]}}, "not a JSON object"),
        ({"info": {"profile_list": [{}]}}, "profile_id"),
        ({"info": {"profile_list": [{"profile_id": ""}]}}, "profile_id"),
        ({"info": {"profile_list": [{"profile_id": 5}]}}, "profile_id"),
        ({"info": {"profile_list": [{"profile_id": "../etc"}]}}, "profile_id"),
        ({"info": {"profile_list": [{"profile_id": "a b"}]}}, "profile_id"),
        ({"info": {"profile_list": [{"profile_id": "é"}]}}, "profile_id"),
        ({"info": {"profile_list": [{"profile_id": "x" * 129}]}}, "profile_id"),
        ({"info": {"profile_list": [{"profile_id": "p", "display_name": 3}]}}, "display_name"),
        (
            {"info": {"profile_list": [{"profile_id": "p", "display_name": {"en": 3}}]}},
            "display_name",
        ),
        (
            {"info": {"profile_list": [{"profile_id": "p", "vpn_proto_list": "openvpn"}]}},
            "vpn_proto_list",
        ),
        (
            {"info": {"profile_list": [{"profile_id": "p", "vpn_proto_list": [1]}]}},
            "vpn_proto_list",
        ),
        (
            {"info": {"profile_list": [{"profile_id": "p", "default_gateway": "yes"}]}},
            "default_gateway",
        ),
        (
            {"info": {"profile_list": [{"profile_id": "p", "dns_search_domain_list": [None]}]}},
            "dns_search_domain_list",
        ),
        ({"info": {"profile_list": [{"profile_id": "p"}, {"profile_id": "p"}]}}, "twice"),
    ],
)
def test_parse_info_rejects(doc: object, problem: str) -> None:
    with pytest.raises(ServerError) as caught:
        parse_info(dumps(doc))
    assert problem in caught.value.message


def info(**profile: object) -> bytes:
    return dumps({"info": {"profile_list": [{"profile_id": "p", **profile}]}})


@pytest.mark.parametrize(
    "hostile",
    [
        "Office\x1b[2J\x1b[31mPAY HERE",
        "Office\nPROFILE  NAME  FAKE ROW",
        "Office\x00NUL",
        "Office\u202eevil",
        "Office\ud800",
        "Office\u2028line",
        "Office\r",
    ],
)
def test_display_names_are_cleaned(hostile: str) -> None:
    [profile] = parse_info(info(display_name=hostile))
    assert isinstance(profile.display_name, str)
    assert profile.display_name.startswith("Office")
    assert profile.display_name.isprintable()
    [profile] = parse_info(info(display_name={"en": hostile, "nl": "Kantoor"}))
    assert isinstance(profile.display_name, dict)
    assert profile.display_name["en"].startswith("Office")
    assert all(v.isprintable() for v in profile.display_name.values())


def test_display_names_are_bounded() -> None:
    [profile] = parse_info(info(display_name="x" * 100_000))
    assert profile.display_name == "x" * MAX_DISPLAY_NAME
    [profile] = parse_info(info(display_name="\x1b\x07"))
    assert profile.display_name == "p"


@pytest.mark.parametrize(
    "display_name",
    [
        {f"l{i}": "x" for i in range(MAX_LANGUAGES + 1)},
        {"en\nUS": "x"},
        {"": "x"},
        {"x" * 100: "x"},
    ],
)
def test_odd_language_maps_are_refused(display_name: dict[str, str]) -> None:
    with pytest.raises(ServerError, match="display_name"):
        parse_info(info(display_name=display_name))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("vpn_proto_list", ["openvpn"] * (MAX_LIST_ITEMS + 1)),
        ("vpn_proto_list", ["open\x1bvpn"]),
        ("vpn_proto_list", [""]),
        ("vpn_proto_transport_list", ["x" * 254]),
        ("dns_search_domain_list", ["example.org\x00"]),
        ("dns_search_domain_list", ["a\nb"]),
    ],
)
def test_profile_string_lists_are_bounded(key: str, value: list[str]) -> None:
    with pytest.raises(ServerError, match=key):
        parse_info(info(**{key: value}))


def test_profile_count_is_bounded() -> None:
    profiles = [{"profile_id": f"p{i}"} for i in range(MAX_PROFILES)]
    assert len(parse_info(dumps({"info": {"profile_list": profiles}}))) == MAX_PROFILES
    profiles.append({"profile_id": "one-more"})
    with pytest.raises(ServerError, match=f"more than {MAX_PROFILES}"):
        parse_info(dumps({"info": {"profile_list": profiles}}))


# --- /connect -----------------------------------------------------------------


def test_parse_connect_openvpn() -> None:
    issued = parse_connect(
        "application/x-openvpn-profile; charset=utf-8",
        "Fri, 01 Aug 2025 12:00:00 GMT",
        b"client\nremote vpn.example.org\n",
    )
    assert issued.protocol == "openvpn"
    assert issued.text == "client\nremote vpn.example.org\n"
    assert issued.expires_at == 1754049600.0


def test_parse_connect_wireguard_case_insensitive() -> None:
    issued = parse_connect("Application/X-WireGuard-Profile", None, b"[Interface]\n")
    assert issued.protocol == "wireguard"
    assert issued.expires_at == 0


@pytest.mark.parametrize(
    "expires",
    [
        None,
        "",
        "tomorrow",
        "Fri, 99 Aug 2025 12:00:00 GMT",
        "Thu, 01 Jan 1960 00:00:00 GMT",
        "x" * 500,
    ],
)
def test_parse_connect_bad_or_missing_expires_is_zero(expires: str | None) -> None:
    assert parse_connect(OPENVPN_PROFILE, expires, b"x").expires_at == 0


def test_parse_connect_expires_without_zone_is_utc() -> None:
    issued = parse_connect(WIREGUARD_PROFILE, "Fri, 01 Aug 2025 12:00:00 -0000", b"x")
    assert issued.expires_at == 1754049600.0


@pytest.mark.parametrize(
    ("content_type", "body", "problem"),
    [
        ("application/json", b"{}", "unknown type"),
        ("", b"x", "unknown type"),
        ("text/plain; x=application/x-openvpn-profile", b"x", "unknown type"),
        ("application/x-openvpn-profile\x1b[2J", b"x", "unknown type"),
    ],
)
def test_parse_connect_rejects_unknown_types(content_type: str, body: bytes, problem: str) -> None:
    with pytest.raises(ServerError) as caught:
        parse_connect(content_type, None, body)
    assert problem in caught.value.message
    assert caught.value.message.isprintable()


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"client\xff\n", "UTF-8"),
        (b"client\x00\n", "NUL"),
        (b"x" * (MAX_JSON_BYTES + 1), "1 MiB"),
    ],
)
def test_parse_connect_rejects_unusable_configs(body: bytes, problem: str) -> None:
    with pytest.raises(ConfigRejected) as caught:
        parse_connect(OPENVPN_PROFILE, None, body)
    assert problem in caught.value.message


# --- errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, AuthorizationRequired),
        (404, NotFound),
        (400, ServerError),
        (406, ServerError),
        (500, ServerError),
        (503, ServerError),
        (403, ServerError),
    ],
)
def test_api_error_by_status(status: int, kind: type[VpndError]) -> None:
    error = api_error(status, dumps({"error": "profile not available"}))
    assert type(error) is kind


def test_api_error_includes_server_message_for_400_and_406() -> None:
    assert "invalid value for profile_id" in str(
        api_error(400, dumps({"error": "invalid value for profile_id"}))
    )
    assert "no common protocol" in str(api_error(406, dumps({"error": "no common protocol"})))


def test_api_error_decides_by_status_not_text() -> None:
    assert isinstance(api_error(400, dumps({"error": "invalid_token"})), ServerError)
    assert isinstance(api_error(401, b"not json"), AuthorizationRequired)


def test_api_error_sanitizes_and_bounds_message() -> None:
    error = api_error(400, dumps({"error": "bad\x1b[2J\r\nFAKE LINE\u202e" + "x" * 1000}))
    message = str(error)
    assert "\x1b" not in message and "\n" not in message and "\u202e" not in message
    assert "badFAKE LINE" in message.replace("[2J", "")
    assert len(message) < 300


@pytest.mark.parametrize("body", [b"", b"<html>", b"[]", dumps({"error": 5}), b"{" * 100])
def test_api_error_without_usable_message(body: bytes) -> None:
    error = api_error(400, body)
    assert isinstance(error, ServerError)
    assert str(error) == "the server rejected the request"


def test_clean_text() -> None:
    assert clean_text(" a\x00b\u200bc\x7f ", 10) == "abc"
    assert clean_text("é" * 300) == "é" * 200


# --- properties -----------------------------------------------------------------

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "api",
                    API_V3,
                    API_V2,
                    "info",
                    "profile_list",
                    "profile_id",
                    "display_name",
                    "vpn_proto_list",
                    "error",
                    "api_endpoint",
                    "v",
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)
BODIES = st.one_of(st.binary(max_size=200), JSONISH.map(dumps))


@settings(max_examples=100, deadline=None)
@given(BODIES)
def test_document_parsers_only_raise_server_error(body: bytes) -> None:
    with contextlib.suppress(ServerError):
        endpoints = parse_well_known(body)
        for url in (endpoints.api_endpoint, endpoints.token_endpoint):
            assert url.startswith("https://") and len(url) <= 2048
        assert len(endpoints.server_version) <= 64
    with contextlib.suppress(ServerError):
        profiles = parse_info(body)
        assert len(profiles) <= MAX_PROFILES
        for profile in profiles:
            names = (
                [profile.display_name]
                if isinstance(profile.display_name, str)
                else list(profile.display_name.values())
            )
            assert all(0 < len(n) <= MAX_DISPLAY_NAME and n.isprintable() for n in names)


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.text(max_size=20) | st.booleans() | st.none(),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(
                st.sampled_from(["profile_id", "display_name", "vpn_proto_list", "en", "nl-NL"])
                | st.text(max_size=5),
                children,
                max_size=4,
            )
        ),
        max_leaves=12,
    ),
    st.sampled_from(["p", "office-1"]),
)
def test_parse_info_keeps_only_clean_profiles(entry: object, profile_id: str) -> None:
    if isinstance(entry, dict):
        entry = {**entry, "profile_id": profile_id}
    with contextlib.suppress(ServerError):
        for profile in parse_info(dumps({"info": {"profile_list": [entry]}})):
            names = (
                [profile.display_name]
                if isinstance(profile.display_name, str)
                else list(profile.display_name.values())
            )
            assert all(n.isprintable() and len(n) <= MAX_DISPLAY_NAME for n in names)
            assert all(item.isprintable() for item in profile.vpn_proto_list)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(st.sampled_from([OPENVPN_PROFILE, WIREGUARD_PROFILE]), st.text(max_size=60)),
    st.one_of(st.none(), st.text(max_size=40)),
    st.binary(max_size=50),
)
def test_parse_connect_only_raises_documented_errors(
    content_type: str, expires: str | None, body: bytes
) -> None:
    try:
        issued = parse_connect(content_type, expires, body)
    except (ServerError, ConfigRejected):
        return
    assert issued.protocol in ("openvpn", "wireguard")
    assert issued.expires_at >= 0
    assert "\0" not in issued.text and len(issued.text) <= len(body)


@settings(max_examples=100, deadline=None)
@given(st.integers(100, 599), BODIES)
def test_api_error_always_returns_a_vpnd_error(status: int, body: bytes) -> None:
    error = api_error(status, body)
    assert isinstance(error, VpndError)
    assert len(error.message) < 400
    assert all(ch.isprintable() for ch in error.message)
