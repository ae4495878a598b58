"""Signed discovery: minisign and legacy signatures, the list documents, the
rollback rule, the settings, and the shell that fetches, keeps and searches."""

from __future__ import annotations

import asyncio
import base64
import json
import string
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.lab.discovery import (
    LabSigner,
    instance_list,
    organization_list,
    server_list,
)
from vpnd import config
from vpnd.discovery import (
    DISCOVERY_FIELDS,
    Discovery,
    DiscoveryDisabled,
    DiscoveryResult,
    discovery_records,
)
from vpnd.errors import InvalidArgument, ServerError, ServerUnreachable
from vpnd.http import Response
from vpnd.protocols import discovery as d
from vpnd.protocols.discovery import (
    BadSignature,
    ListRejected,
    ListRollback,
    ListTooLarge,
    MalformedList,
    MalformedSignature,
    SignedForOtherFile,
    UnsignedList,
    UntrustedKey,
)

SIGNER = LabSigner(key_id=bytes.fromhex("0102030405060708"))
OTHER = LabSigner(key_id=bytes.fromhex("1112131415161718"))
KEYS = (d.parse_public_key(SIGNER.public_key),)

SERVERS: list[dict[str, Any]] = [
    {
        "server_type": "institute_access",
        "base_url": "https://VPN.Example.ORG/portal",
        "display_name": {"en": "Example University", "nl": "Voorbeeld Universiteit"},
        "keyword_list": "EU campus",
        "support_contact": ["mailto:help@example.org", "javascript:alert(1)"],
    },
    {
        "server_type": "secure_internet",
        "base_url": "https://nl.eduvpn.example/",
        "country_code": "nl",
        "authentication_url_template": "https://wayf.example/?return=@RETURN_TO@&idp=@ORG_ID@",
    },
]
ORGANIZATIONS: list[dict[str, Any]] = [
    {
        "org_id": "https://idp.unige.example",
        "display_name": {"fr": "Université de Genève", "en": "University of Geneva"},
        "secure_internet_home": "https://nl.eduvpn.example",
        "keyword_list": {"fr": "UNIGE Genève"},
    },
    {
        "org_id": "https://idp.uva.example",
        "display_name": "Universiteit van Amsterdam",
        "secure_internet_home": "https://nl.eduvpn.example/",
    },
]


def dumps(doc: object) -> bytes:
    return json.dumps(doc).encode()


# --- keys ---------------------------------------------------------------------------


def test_the_default_keys_are_minisign_keys_with_their_published_ids() -> None:
    ids = [d.parse_public_key(key).key_id_hex for key in config.DISCOVERY_KEYS]
    assert ids == ["19725C6AF525056D", "AD7B4477AFDAAA0A"]
    assert len(d.parse_legacy_key(config.INSTANCE_DISCOVERY_KEY)) == 32


def test_a_public_key_file_with_its_comment_is_read() -> None:
    text = f"untrusted comment: minisign public key\n{SIGNER.public_key}\n"
    assert d.parse_public_key(text) == KEYS[0]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "RWQ",
        SIGNER.public_key[:-4],
        base64.b64encode(b"Xx" + bytes(40)).decode(),  # not "Ed"
        SIGNER.public_key + "\n" + SIGNER.public_key,
        "RW\u00e9" + SIGNER.public_key[3:],
    ],
)
def test_what_is_not_a_public_key_is_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        d.parse_public_key(text)


@given(st.text(max_size=120))
def test_public_key_parsing_raises_only_invalid_argument(text: str) -> None:
    try:
        key = d.parse_public_key(text)
    except InvalidArgument:
        return
    assert len(key.key_id) == 8 and len(key.public_key) == 32


# --- minisign signatures ------------------------------------------------------------


@pytest.mark.parametrize("prehashed", [True, False])
def test_both_signature_forms_verify(prehashed: bool) -> None:
    body = server_list(3, SERVERS)
    signature = SIGNER.sign(body, d.SERVER_LIST, prehashed=prehashed, timestamp=1700000000)
    info = d.verify_minisig(body, signature, KEYS, d.SERVER_LIST)
    assert info.prehashed is prehashed
    assert info.key_id == "0807060504030201"
    assert info.timestamp == 1700000000


def test_the_key_id_selects_among_several_trusted_keys() -> None:
    body = b'{"v": 1}'
    keys = (d.parse_public_key(OTHER.public_key), *KEYS)
    assert d.verify_minisig(body, SIGNER.sign(body, "x.json"), keys, "x.json").key_id
    assert d.verify_minisig(body, OTHER.sign(body, "x.json"), keys, "x.json").key_id


def test_the_untrusted_comment_is_ignored_and_crlf_is_read() -> None:
    body = b"list"
    signature = SIGNER.sign(body, "a.json").replace(
        b"signature from the vpnd lab", b"anything at all \xc3\xa9"
    )
    d.verify_minisig(body, signature, KEYS, "a.json")
    d.verify_minisig(body, signature.replace(b"\n", b"\r\n"), KEYS, "a.json")


@settings(max_examples=60)
@given(st.data())
def test_any_change_to_the_list_is_caught(data: st.DataObject) -> None:
    body = server_list(3, SERVERS)
    prehashed = data.draw(st.booleans())
    signature = SIGNER.sign(body, d.SERVER_LIST, prehashed=prehashed)
    position = data.draw(st.integers(0, len(body) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = body[:position] + bytes([body[position] ^ flip]) + body[position + 1 :]
    with pytest.raises(BadSignature):
        d.verify_minisig(tampered, signature, KEYS, d.SERVER_LIST)
    with pytest.raises(BadSignature):
        d.verify_minisig(body + b" ", signature, KEYS, d.SERVER_LIST)


def test_a_changed_trusted_comment_is_caught_by_the_global_signature() -> None:
    body = b"list"
    signature = SIGNER.sign(body, "a.json")
    forged = signature.replace(b"file:a.json", b"file:b.json")
    assert forged != signature
    with pytest.raises(BadSignature):
        d.verify_minisig(body, forged, KEYS, "b.json")


def test_a_signature_by_another_key_claiming_a_trusted_id_is_forged() -> None:
    body = b"list"
    forged = OTHER.sign(body, "a.json", key_id=SIGNER.key_id)
    with pytest.raises(BadSignature):
        d.verify_minisig(body, forged, KEYS, "a.json")


def test_an_untrusted_key_id_is_named() -> None:
    body = b"list"
    with pytest.raises(UntrustedKey, match="1817161514131211"):
        d.verify_minisig(body, OTHER.sign(body, "a.json"), KEYS, "a.json")


@pytest.mark.parametrize(
    "comment",
    [
        "timestamp:1\tfile:organization_list.json",
        "timestamp:1",
        "timestamp:1\tfile:server_list.json\tfile:server_list.json",
        "file:server_list.json.bak",
        "file: server_list.json",
    ],
)
def test_a_signature_for_another_file_is_refused(comment: str) -> None:
    body = server_list(3, SERVERS)
    signature = SIGNER.sign(body, d.SERVER_LIST, trusted_comment=comment)
    with pytest.raises(SignedForOtherFile):
        d.verify_minisig(body, signature, KEYS, d.SERVER_LIST)


def test_the_signature_of_one_list_does_not_pass_for_the_other() -> None:
    servers = server_list(3, SERVERS)
    signature = SIGNER.sign(servers, d.SERVER_LIST)
    with pytest.raises(SignedForOtherFile):
        d.verify_minisig(servers, signature, KEYS, d.ORGANIZATION_LIST)


def _lines(signature: bytes) -> list[bytes]:
    return signature.split(b"\n")


@pytest.mark.parametrize(
    "damage",
    [
        lambda lines: lines[1:],  # no untrusted comment
        lambda lines: [lines[0], lines[1], b"comment: x", lines[3]],
        lambda lines: [lines[0], lines[1][:-4], lines[2], lines[3]],
        lambda lines: [lines[0], lines[1], lines[2], lines[3][:-8]],
        lambda lines: [lines[0], b"!!" + lines[1][2:], lines[2], lines[3]],
        lambda lines: [
            lines[0],
            base64.b64encode(b"EX" + base64.b64decode(lines[1])[2:]),
            lines[2],
            lines[3],
        ],
        lambda lines: [*lines[:4], b"extra"],
        lambda lines: [lines[0], lines[1], b"trusted comment: " + b"x" * 9000, lines[3]],
    ],
)
def test_a_malformed_signature_file_is_named(damage: Callable[[list[bytes]], list[bytes]]) -> None:
    body = b"list"
    signature = b"\n".join(damage(_lines(SIGNER.sign(body, "a.json"))))
    with pytest.raises(MalformedSignature):
        d.verify_minisig(body, signature, KEYS, "a.json")


def test_an_oversized_signature_file_is_refused() -> None:
    with pytest.raises(ListTooLarge):
        d.verify_minisig(b"x", b"u" * (d.MAX_SIGNATURE_BYTES + 1), KEYS, "a.json")


@given(st.binary(max_size=400))
def test_any_signature_file_is_verified_or_refused_by_name(signature: bytes) -> None:
    try:
        d.verify_minisig(b"list", signature, KEYS, "a.json")
    except ListRejected:
        return
    raise AssertionError("random bytes passed as a signature")


@given(st.lists(st.text(max_size=80), min_size=0, max_size=6))
def test_any_text_lines_are_verified_or_refused_by_name(lines: list[str]) -> None:
    with pytest.raises(ListRejected):
        d.verify_minisig(b"list", "\n".join(lines).encode(), KEYS, "a.json")


# --- legacy signatures --------------------------------------------------------------


def test_a_legacy_signature_verifies_and_a_change_is_caught() -> None:
    key = d.parse_legacy_key(SIGNER.legacy_public_key)
    body = instance_list(4, "local", [])
    d.verify_legacy(body, SIGNER.sign_legacy(body), key, d.INSTITUTE_ACCESS_LIST)
    with pytest.raises(BadSignature):
        d.verify_legacy(body + b" ", SIGNER.sign_legacy(body), key, d.INSTITUTE_ACCESS_LIST)
    with pytest.raises(BadSignature):
        d.verify_legacy(body, OTHER.sign_legacy(body), key, d.INSTITUTE_ACCESS_LIST)


@given(st.binary(max_size=200))
def test_any_legacy_signature_file_is_verified_or_refused_by_name(signature: bytes) -> None:
    key = d.parse_legacy_key(SIGNER.legacy_public_key)
    with pytest.raises(ListRejected):
        d.verify_legacy(b"list", signature, key, d.INSTITUTE_ACCESS_LIST)


@pytest.mark.parametrize("text", ["", "abc", base64.b64encode(bytes(31)).decode(), "é" * 44])
def test_what_is_not_a_legacy_key_is_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        d.parse_legacy_key(text)


# --- versions -----------------------------------------------------------------------


@given(st.integers(0, d.MAX_VERSION), st.integers(0, d.MAX_VERSION))
def test_the_rollback_rule(version: int, cached: int) -> None:
    if version < cached:
        with pytest.raises(ListRollback, match=f"version {version}"):
            d.is_newer(version, cached, d.SERVER_LIST)
    else:
        assert d.is_newer(version, cached, d.SERVER_LIST) is (version > cached)
    assert d.is_newer(version, None, d.SERVER_LIST) is True


# --- the server list ------------------------------------------------------------------


def test_a_server_list_is_read_into_typed_entries() -> None:
    parsed = d.parse_server_list(server_list(42, SERVERS))
    assert parsed.version == 42
    institute, secure = parsed.servers
    assert institute == d.DiscoveredServer(
        server_type="institute_access",
        base_url="https://vpn.example.org/portal/",
        display_name={"en": "Example University", "nl": "Voorbeeld Universiteit"},
        keyword_list="EU campus",
        support_contact=("mailto:help@example.org",),
    )
    assert secure.country_code == "NL"
    assert secure.display_name == ""
    assert secure.authentication_url_template.startswith("https://wayf.example/")


def test_unknown_server_types_are_left_out_and_counted() -> None:
    parsed = d.parse_server_list(
        server_list(1, [*SERVERS, {"server_type": "wireguard_only", "base_url": 3}])
    )
    assert len(parsed.servers) == 2 and parsed.skipped == 1


def _server(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "server_type": "institute_access",
        "base_url": "https://vpn.example.org/",
        "display_name": "Example",
    }
    entry.update(changes)
    return {key: value for key, value in entry.items() if value is not None}


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        (_server(base_url="http://vpn.example.org/"), "https URL"),
        (_server(base_url="vpn.example.org"), "https URL"),
        (_server(base_url="https://user@vpn.example.org/"), "https URL"),
        (_server(base_url=None), "base_url"),
        (_server(display_name=None), "display_name"),
        (_server(display_name=""), "display_name"),
        (_server(display_name=["Example"]), "neither a string nor a language map"),
        (_server(display_name={"not a tag!": "x"}), "language tag"),
        (_server(display_name={"en": 3}), "not a string"),
        (_server(server_type=None), "server_type"),
        (_server(server_type="secure_internet"), "country_code"),
        (_server(server_type="secure_internet", country_code="NLD"), "country_code"),
        (_server(support_contact="mailto:x@example.org"), "support_contact"),
        (_server(authentication_url_template="http://wayf.example/"), "template"),
        (_server(keyword_list=7), "keyword_list"),
    ],
)
def test_a_malformed_server_entry_rejects_the_list(entry: dict[str, Any], words: str) -> None:
    with pytest.raises(MalformedList, match=words):
        d.parse_server_list(server_list(1, [entry]))


def test_a_server_listed_twice_rejects_the_list() -> None:
    with pytest.raises(MalformedList, match="second time"):
        d.parse_server_list(
            server_list(1, [_server(), _server(base_url="https://VPN.example.org")])
        )


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b'{"v": 1}',
        b'{"v": 1, "server_list": {}}',
        b'{"server_list": []}',
        b'{"v": true, "server_list": []}',
        b'{"v": -1, "server_list": []}',
        b'{"v": 1.5, "server_list": []}',
        b'{"v": 1, "server_list": [3]}',
        b'{"v": NaN, "server_list": []}',
        b"\xff\xfe",
        b"[" * 100_000,
    ],
)
def test_a_list_of_the_wrong_shape_is_named(body: bytes) -> None:
    with pytest.raises(MalformedList):
        d.parse_server_list(body)


def test_an_oversized_list_is_refused() -> None:
    body = b'{"v": 1, "server_list": [], "padding": "' + b" " * d.MAX_LIST_BYTES + b'"}'
    with pytest.raises(ListTooLarge):
        d.parse_server_list(body)
    too_many = [
        {"org_id": f"o{n}", "display_name": "x", "secure_internet_home": "https://h.example/"}
        for n in range(d.MAX_ORGANIZATIONS + 1)
    ]
    with pytest.raises(ListTooLarge, match="entries"):
        d.parse_organization_list(organization_list(1, too_many))


def test_long_texts_are_cut_and_control_characters_dropped() -> None:
    parsed = d.parse_server_list(
        server_list(
            1, [_server(display_name="A\x1b[2Jb\u202e" + "x" * 500, keyword_list="k" * 5000)]
        )
    )
    (server,) = parsed.servers
    assert isinstance(server.display_name, str)
    assert server.display_name.startswith("A[2Jb") and len(server.display_name) == 200
    assert isinstance(server.keyword_list, str) and len(server.keyword_list) == d.MAX_KEYWORDS


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
entry_values = st.fixed_dictionaries(
    {},
    optional={
        "server_type": st.sampled_from(["institute_access", "secure_internet", "x"]) | json_values,
        "base_url": st.sampled_from(["https://a.example/", "http://a.example/"]) | json_values,
        "display_name": json_values,
        "country_code": st.sampled_from(["NL", "nl", "N"]) | json_values,
        "org_id": json_values,
        "secure_internet_home": st.just("https://a.example/") | json_values,
        "keyword_list": json_values,
        "support_contact": json_values,
    },
)


@settings(max_examples=200)
@given(st.integers(-2, 3) | json_values, st.lists(entry_values, max_size=4))
def test_any_document_is_read_or_refused_as_malformed(
    version: object, entries: list[object]
) -> None:
    for parse, key in (
        (d.parse_server_list, "server_list"),
        (d.parse_organization_list, "organization_list"),
    ):
        try:
            parsed = parse(dumps({"v": version, key: entries}))
        except MalformedList:
            continue
        assert isinstance(version, int) and version >= 0
        assert parsed.version == version


# --- the organization list -------------------------------------------------------------


def test_an_organization_list_is_read() -> None:
    parsed = d.parse_organization_list(organization_list(9, ORGANIZATIONS))
    assert parsed.version == 9
    geneva, amsterdam = parsed.organizations
    assert geneva.secure_internet_home == "https://nl.eduvpn.example/"
    assert geneva.keyword_list == {"fr": "UNIGE Genève"}
    assert amsterdam.display_name == "Universiteit van Amsterdam"


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"org_id": ""}, "org_id"),
        ({"org_id": "with space"}, "org_id"),
        ({"org_id": "x" * 600}, "org_id"),
        ({"org_id": None}, "org_id"),
        ({"secure_internet_home": "http://h.example/"}, "https URL"),
        ({"display_name": {}}, "display_name"),
    ],
)
def test_a_malformed_organization_rejects_the_list(changes: dict[str, Any], words: str) -> None:
    entry = {**ORGANIZATIONS[1], **changes}
    with pytest.raises(MalformedList, match=words):
        d.parse_organization_list(organization_list(1, [entry]))


def test_an_org_id_listed_twice_rejects_the_list() -> None:
    with pytest.raises(MalformedList, match="org_id"):
        d.parse_organization_list(organization_list(1, [ORGANIZATIONS[1], ORGANIZATIONS[1]]))


names = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")),
    min_size=1,
    max_size=40,
).filter(lambda text: text.isprintable() and text.strip() == text and text.strip())


@given(
    st.lists(
        st.tuples(
            st.text(string.ascii_letters + string.digits + ":/._-", min_size=1, max_size=30),
            st.dictionaries(st.sampled_from(["en", "nl", "de-DE", "fr_CA"]), names, min_size=1)
            | names,
        ),
        max_size=8,
        unique_by=lambda pair: pair[0],
    ),
    st.integers(0, d.MAX_VERSION),
)
def test_valid_organizations_come_back_as_they_were(
    entries: list[tuple[str, Any]], version: int
) -> None:
    orgs = [
        {"org_id": org_id, "display_name": name, "secure_internet_home": "https://h.example"}
        for org_id, name in entries
    ]
    parsed = d.parse_organization_list(organization_list(version, orgs))
    assert parsed.version == version
    assert [(o.org_id, o.display_name) for o in parsed.organizations] == entries
    assert {o.secure_internet_home for o in parsed.organizations} <= {"https://h.example/"}


_messy_texts = st.sampled_from(["", " ", "Zürich", " Genève ", "a\tb", "x" * 1100, "東京大学"])
_messy_maps = st.dictionaries(
    st.sampled_from(["en", "nl", "de-DE", "not a tag", "fr_CA"]), _messy_texts | json_values
)
_messy_organizations = st.lists(
    st.fixed_dictionaries(
        {
            "org_id": st.sampled_from(["a", "b", "https://c.example/", "with space", ""])
            | json_values,
            "display_name": _messy_texts | _messy_maps | json_values,
            "secure_internet_home": st.sampled_from(
                ["https://h.example", "https://h.example/", "http://h.example/", "h.example"]
            )
            | json_values,
        },
        optional={"keyword_list": _messy_texts | _messy_maps | json_values},
    ),
    max_size=5,
)


@settings(max_examples=300)
@given(_messy_organizations)
def test_reading_a_list_at_once_gives_what_reading_each_entry_gives(
    entries: list[dict[str, Any]],
) -> None:
    # The list as JSON gives it (the reading at once keeps its maps).
    raw = json.loads(json.dumps(entries))
    at_once = d._organizations_at_once(raw, d._Reader(d.ORGANIZATION_LIST))
    try:
        each: tuple[d.Organization, ...] | None = d._organizations_each(
            json.loads(json.dumps(entries)), d._Reader(d.ORGANIZATION_LIST)
        )
    except MalformedList:
        each = None
    if at_once is not None:
        # What it reads at once, it reads as each entry would be read; what
        # it does not, is left to the reading of each entry.
        assert at_once == each
    if each is not None:
        assert d.parse_organization_list(organization_list(1, entries)).organizations == each


def test_a_list_that_needs_cleaning_is_read_entry_by_entry() -> None:
    entry = {**ORGANIZATIONS[1], "display_name": " Universiteit van Amsterdam "}
    assert d._organizations_at_once([entry], d._Reader(d.ORGANIZATION_LIST)) is None
    parsed = d.parse_organization_list(organization_list(1, [entry]))
    assert parsed.organizations[0].display_name == "Universiteit van Amsterdam"


# --- legacy instance lists --------------------------------------------------------------


def test_legacy_lists_carry_seq_and_authorization_type() -> None:
    instances = [{"base_uri": "https://demo.example", "display_name": {"en": "Demo"}, "logo": "x"}]
    institute = d.parse_instance_list(instance_list(5, "local", instances), d.INSTITUTE_ACCESS_LIST)
    secure = d.parse_instance_list(
        instance_list(6, "distributed", instances), d.SECURE_INTERNET_LIST
    )
    assert (institute.version, institute.authorization_type) == (5, "local")
    assert (secure.version, secure.authorization_type) == (6, "distributed")
    assert institute.servers[0].server_type == "institute_access"
    assert secure.servers[0].server_type == "secure_internet"
    assert secure.servers[0].base_url == "https://demo.example/"


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"authorization_type": "local", "instances": []}, "seq"),
        ({"seq": 1, "authorization_type": "shared", "instances": []}, "authorization_type"),
        ({"seq": 1, "authorization_type": "local"}, "instances"),
        (
            {"seq": 1, "authorization_type": "local", "instances": [{"display_name": "x"}]},
            "base_uri",
        ),
    ],
)
def test_a_malformed_legacy_list_is_named(doc: dict[str, Any], words: str) -> None:
    with pytest.raises(MalformedList, match=words):
        d.parse_instance_list(dumps(doc), d.INSTITUTE_ACCESS_LIST)


# --- settings -----------------------------------------------------------------------------


def test_discovery_settings_default_to_eduvpn() -> None:
    settings = config.Settings()
    assert settings.discovery_url == "https://disco.eduvpn.org/v2/"
    assert settings.discovery_keys == config.DISCOVERY_KEYS
    assert settings.instance_discovery_url == ""


def test_discovery_settings_are_read_and_normalised() -> None:
    values = config.parse(
        'discovery_url = "https://Disco.Example/v2"\n'
        f'discovery_keys = ["{SIGNER.public_key}"]\n'
        'instance_discovery_url = ""\n'
        f'instance_discovery_key = "{SIGNER.legacy_public_key}"\n'
    )
    assert values == {
        "discovery_url": "https://disco.example/v2/",
        "discovery_keys": (SIGNER.public_key,),
        "instance_discovery_url": "",
        "instance_discovery_key": SIGNER.legacy_public_key,
    }


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('discovery_url = "http://disco.example/"', "https://"),
        ("discovery_url = 3", "https URL"),
        ('instance_discovery_url = "ftp://x/"', "https://"),
        ("discovery_keys = []", "list of 1 to"),
        ('discovery_keys = "RWQ"', "list of 1 to"),
        ('discovery_keys = ["RWQ"]', "not a minisign public key"),
        ('instance_discovery_key = "RWQ"', "Ed25519"),
    ],
)
def test_bad_discovery_settings_are_named(text: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        config.parse(text)


# --- the shell: fetching, keeping, searching ------------------------------------------------


class FakeHttp:
    """Serves files from a dict with ETag validators, or fails as told."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.down = False

    def publish(self, name: str, body: bytes, signer: LabSigner = SIGNER) -> None:
        self.files[name] = body
        self.files[name + ".minisig"] = signer.sign(body, name)

    async def get(
        self, url: str, *, headers: dict[str, str] | None = None, follow_redirects: bool = False
    ) -> Response:
        self.requests.append((url, dict(headers or {})))
        if self.down:
            raise ServerUnreachable("cannot connect to disco.example: refused")
        name = url.rsplit("/", 1)[1]
        body = self.files.get(name)
        if body is None:
            return Response(404, {}, b"", url)
        etag = f'"{hash(body)}"'
        if (headers or {}).get("If-None-Match") == etag:
            return Response(304, {"etag": etag}, b"", url)
        return Response(200, {"etag": etag}, body, url)

    def asked(self, name: str) -> list[dict[str, str]]:
        return [headers for url, headers in self.requests if url.endswith("/" + name)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def shell_settings(tmp_path: Path) -> config.Settings:
    return replace(
        config.Settings(),
        state_dir=tmp_path,
        discovery_url="https://disco.example/v2/",
        discovery_keys=(SIGNER.public_key,),
    )


@pytest.fixture
def http() -> FakeHttp:
    fake = FakeHttp()
    fake.publish(d.SERVER_LIST, server_list(10, SERVERS))
    fake.publish(d.ORGANIZATION_LIST, organization_list(20, ORGANIZATIONS))
    return fake


def make(shell_settings: config.Settings, http: FakeHttp, clock: Clock) -> Discovery:
    return Discovery(shell_settings, http, monotonic=clock)


async def test_a_search_finds_organizations_and_servers_and_says_their_kind(
    shell_settings: config.Settings, http: FakeHttp
) -> None:
    discovery = make(shell_settings, http, Clock())
    try:
        result = await discovery.search("universite geneve")
        assert [hit.entry.ident for hit in result.hits] == ["https://idp.unige.example"]
        records = discovery_records(await discovery.search("example"), "nl_NL.UTF-8")
        assert records[0]["kind"] == "institute-access"
        assert records[0]["display_name"] == "Voorbeeld Universiteit"
        assert records[0]["base_url"] == "https://vpn.example.org/portal/"
        assert records[0]["support_contact"] == ["mailto:help@example.org"]
        nl = discovery_records(await discovery.search("NL", kinds={"secure-internet"}), "")
        assert nl[0]["kind"] == "secure-internet" and nl[0]["country_code"] == "NL"
    finally:
        await discovery.aclose()


async def test_the_organization_list_is_fetched_only_for_organizations(
    shell_settings: config.Settings, http: FakeHttp
) -> None:
    discovery = make(shell_settings, http, Clock())
    try:
        await discovery.search("example", kinds={"institute-access"})
        assert http.asked(d.ORGANIZATION_LIST) == []
        await discovery.search("amsterdam", kinds={"organization"})
        assert len(http.asked(d.ORGANIZATION_LIST)) == 1
    finally:
        await discovery.aclose()


async def test_lists_are_fetched_at_most_hourly_and_conditionally(
    shell_settings: config.Settings, http: FakeHttp
) -> None:
    clock = Clock()
    discovery = make(shell_settings, http, clock)
    try:
        await discovery.search("amsterdam")
        await discovery.search("geneva")
        assert len(http.asked(d.ORGANIZATION_LIST)) == 1
        clock.now += 3601
        result = await discovery.search("amsterdam")
        assert result.hits
        second = http.asked(d.ORGANIZATION_LIST)[-1]
        assert second["If-None-Match"]
        # Unchanged: one small round trip, no signature fetched again.
        assert len(http.asked(d.ORGANIZATION_LIST + ".minisig")) == 1
    finally:
        await discovery.aclose()


async def test_a_failed_fetch_uses_the_kept_copy_and_says_so(
    shell_settings: config.Settings, http: FakeHttp
) -> None:
    clock = Clock()
    discovery = make(shell_settings, http, clock)
    try:
        await discovery.search("amsterdam")
        http.down = True
        clock.now += 3601
        result = await discovery.search("amsterdam")
        assert [hit.entry.ident for hit in result.hits] == ["https://idp.uva.example"]
        assert "refused" in result.lists[d.ORGANIZATION_LIST].error
        assert "refused" in discovery_records(result, "")[0]["list_error"]
    finally:
        await discovery.aclose()


async def test_a_restart_reads_the_kept_copy_back(
    shell_settings: config.Settings, http: FakeHttp
) -> None:
    first = make(shell_settings, http, Clock())
    await first.search("amsterdam")
    await first.aclose()
    kept = (shell_settings.state_dir / "discovery" / "organization_list.json.cache").read_bytes()
    http.down = True
    second = make(shell_settings, http, Clock())
    try:
        result = await second.search("amsterdam")
        assert result.hits and result.lists[d.ORGANIZATION_LIST].version == 20
        assert result.lists[d.ORGANIZATION_LIST].error
    finally:
        await second.aclose()
    assert (
        shell_settings.state_dir / "discovery" / "organization_list.json.cache"
    ).read_bytes() == kept


@pytest.mark.parametrize(
    ("publish", "error"),
    [
        (
            lambda http: http.files.update(
                {d.ORGANIZATION_LIST: organization_list(30, ORGANIZATIONS[:1])}
            ),
            BadSignature,
        ),
        (lambda http: http.publish(d.ORGANIZATION_LIST, organization_list(5, [])), ListRollback),
        (
            lambda http: http.publish(d.ORGANIZATION_LIST, organization_list(30, []), OTHER),
            UntrustedKey,
        ),
        (
            lambda http: (
                http.files.update({d.ORGANIZATION_LIST: organization_list(30, [])}),
                http.files.pop(d.ORGANIZATION_LIST + ".minisig"),
            ),
            UnsignedList,
        ),
        (lambda http: http.publish(d.ORGANIZATION_LIST, b'{"v": 31}'), MalformedList),
        (
            # A genuine signature, of the other list.
            lambda http: http.files.update(
                {
                    d.ORGANIZATION_LIST: organization_list(30, []),
                    d.ORGANIZATION_LIST + ".minisig": SIGNER.sign(
                        organization_list(30, []), d.SERVER_LIST
                    ),
                }
            ),
            SignedForOtherFile,
        ),
        (
            lambda http: http.publish(
                d.ORGANIZATION_LIST,
                organization_list(30, []).replace(b"]}", b'], "x": "' + b"x" * (4 << 20) + b'"}'),
            ),
            ListTooLarge,
        ),
    ],
)
async def test_a_bad_list_leaves_the_kept_copy_in_use(
    shell_settings: config.Settings,
    http: FakeHttp,
    publish: Callable[[FakeHttp], object],
    error: type[ListRejected],
) -> None:
    clock = Clock()
    discovery = make(shell_settings, http, clock)
    try:
        await discovery.search("amsterdam")
        cache = shell_settings.state_dir / "discovery" / "organization_list.json.cache"
        kept = cache.read_bytes()
        publish(http)
        clock.now += 3601
        result = await discovery.search("amsterdam")
        status = result.lists[d.ORGANIZATION_LIST]
        assert status.version == 20 and status.error
        assert [hit.entry.ident for hit in result.hits] == ["https://idp.uva.example"]
        assert cache.read_bytes() == kept
        assert discovery._lists[d.ORGANIZATION_LIST].error.__class__ is error
    finally:
        await discovery.aclose()


async def test_a_newer_list_replaces_the_kept_copy(
    shell_settings: config.Settings, http: FakeHttp
) -> None:
    clock = Clock()
    discovery = make(shell_settings, http, clock)
    try:
        await discovery.search("amsterdam")
        http.publish(d.ORGANIZATION_LIST, organization_list(21, ORGANIZATIONS[:1]))
        clock.now += 3601
        result = await discovery.search("amsterdam")
        assert result.hits == [] and result.lists[d.ORGANIZATION_LIST].version == 21
    finally:
        await discovery.aclose()


async def test_with_no_copy_the_fetch_error_is_the_answer(
    shell_settings: config.Settings, http: FakeHttp
) -> None:
    http.files[d.ORGANIZATION_LIST] = b"tampered"
    discovery = make(shell_settings, http, Clock())
    try:
        with pytest.raises(BadSignature):
            await discovery.search("amsterdam", kinds={"organization"})
        http.down = True
        with pytest.raises(ServerUnreachable):
            await discovery.search("amsterdam", kinds={"organization"})
    finally:
        await discovery.aclose()


async def test_a_kept_copy_from_another_address_or_key_is_not_used(
    shell_settings: config.Settings, http: FakeHttp
) -> None:
    first = make(shell_settings, http, Clock())
    await first.search("amsterdam")
    await first.aclose()
    http.down = True
    for changed in (
        replace(shell_settings, discovery_url="https://elsewhere.example/"),
        replace(shell_settings, discovery_keys=(OTHER.public_key,)),
    ):
        discovery = make(changed, http, Clock())
        try:
            with pytest.raises(ServerUnreachable):
                await discovery.search("amsterdam", kinds={"organization"})
        finally:
            await discovery.aclose()


def legacy_lists_only(tmp_path: Path) -> tuple[config.Settings, FakeHttp]:
    """Settings with only the legacy lists set, and a server of both, signed."""
    settings = replace(
        config.Settings(),
        state_dir=tmp_path,
        discovery_url="",
        instance_discovery_url="https://static.example/disco/",
        instance_discovery_key=SIGNER.legacy_public_key,
    )
    fake = FakeHttp()
    institute = instance_list(
        3, "local", [{"base_uri": "https://demo.example/", "display_name": "Demo Institute"}]
    )
    secure = instance_list(
        4, "distributed", [{"base_uri": "https://nl.example/", "display_name": "Nederland"}]
    )
    for name, body in ((d.INSTITUTE_ACCESS_LIST, institute), (d.SECURE_INTERNET_LIST, secure)):
        fake.files[name] = body
        fake.files[name + ".sig"] = SIGNER.sign_legacy(body)
    return settings, fake


async def test_legacy_lists_are_searched_when_only_they_are_set(tmp_path: Path) -> None:
    settings, fake = legacy_lists_only(tmp_path)
    discovery = Discovery(settings, fake)
    try:
        assert discovery.mode == "legacy"
        result = await discovery.search("nederlnd")
        assert [(hit.entry.kind, hit.match) for hit in result.hits] == [
            ("secure-internet", "fuzzy")
        ]
        demo = await discovery.search("demo", kinds={"institute-access"})
        assert demo.hits[0].entry.ident == "https://demo.example/"
        fake.files[d.INSTITUTE_ACCESS_LIST] = instance_list(2, "local", [])
        fake.files[d.INSTITUTE_ACCESS_LIST + ".sig"] = SIGNER.sign_legacy(
            fake.files[d.INSTITUTE_ACCESS_LIST]
        )
        discovery._lists[d.INSTITUTE_ACCESS_LIST].checked_at = -1e9
        rolled_back = await discovery.search("demo", kinds={"institute-access"})
        assert rolled_back.hits and "older" in rolled_back.lists[d.INSTITUTE_ACCESS_LIST].error
    finally:
        await discovery.aclose()


async def test_legacy_lists_are_fetched_on_demand_secure_internet_at_most_weekly(
    tmp_path: Path,
) -> None:
    settings, fake = legacy_lists_only(tmp_path)
    clock = Clock()
    discovery = Discovery(settings, fake, monotonic=clock)
    try:
        discovery.start()
        await asyncio.sleep(0.05)
        assert fake.requests == []  # neither list is fetched before someone searches
        await discovery.search("nederland", kinds={"secure-internet"})
        assert len(fake.asked(d.SECURE_INTERNET_LIST)) == 1
        assert fake.asked(d.INSTITUTE_ACCESS_LIST) == []
        await discovery.search("demo", kinds={"institute-access"})
        assert len(fake.asked(d.INSTITUTE_ACCESS_LIST)) == 1
        clock.now += 2 * 3600
        await discovery.search("nederland")
        assert len(fake.asked(d.SECURE_INTERNET_LIST)) == 1  # within the week: kept copy
        assert len(fake.asked(d.INSTITUTE_ACCESS_LIST)) == 2
        clock.now += 7 * 24 * 3600
        await discovery.search("nederland", kinds={"secure-internet"})
        assert len(fake.asked(d.SECURE_INTERNET_LIST)) == 2
    finally:
        await discovery.aclose()


async def test_with_both_urls_empty_discovery_is_off(tmp_path: Path) -> None:
    settings = replace(config.Settings(), state_dir=tmp_path, discovery_url="")
    discovery = Discovery(settings, FakeHttp())
    assert not discovery.enabled
    with pytest.raises(DiscoveryDisabled, match="discovery_url"):
        await discovery.search("anything")
    await discovery.aclose()


async def test_the_server_list_is_fetched_at_start(
    shell_settings: config.Settings, http: FakeHttp
) -> None:
    discovery = make(shell_settings, http, Clock())
    try:
        discovery.start()
        for _ in range(200):
            if discovery._lists[d.SERVER_LIST].copy is not None:
                break
            await asyncio.sleep(0.01)
        assert discovery._lists[d.SERVER_LIST].copy is not None
        assert http.asked(d.ORGANIZATION_LIST) == []
    finally:
        await discovery.aclose()


def test_a_discovery_error_is_a_server_error_on_the_bus() -> None:
    for error in (BadSignature, ListRollback, MalformedList, UntrustedKey, SignedForOtherFile):
        assert issubclass(error, ServerError)
        assert error("x").dbus_name == "org.vpnd.Error.ServerError"


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=30)
@given(st.integers(0, 100), st.integers(0, 100))
def test_the_kept_version_never_goes_down(first: int, second: int) -> None:
    assume(first != second)
    cached: int | None = None
    for version in (first, second):
        try:
            if d.is_newer(version, cached, d.SERVER_LIST):
                cached = version
        except ListRollback:
            pass
    assert cached == max(first, second) if second > first else cached == first


# --- vpnctl -------------------------------------------------------------------------------


class FakeBus:
    """Answers Discover with canned results and keeps what it was asked."""

    def __init__(self, results: list[dict[str, Any]]) -> None:
        self.results = results
        self.calls: list[tuple[Any, ...]] = []

    def call(self, *args: Any) -> tuple[Any, ...]:
        self.calls.append(args)
        return (self.results,)


RESULTS: list[dict[str, Any]] = [
    {"kind": "organization", "display_name": "Université de Genève", "org_id": "https://idp"},
    {
        "kind": "secure-internet",
        "display_name": "NL",
        "country_code": "NL",
        "base_url": "https://nl/",
    },
    {
        "kind": "institute-access",
        "display_name": "Campus Lab",
        "base_url": "https://lab/",
        "list_error": "cannot connect to disco.example: refused",
    },
]


def test_vpnctl_shows_the_kinds_apart_and_says_when_a_kept_copy_answered() -> None:
    import io

    from vpnctl import cli

    bus = FakeBus(RESULTS)
    out = io.StringIO()
    args = cli.build_parser().parse_args(["discover", "geneve"])
    assert cli.run(bus, args, out) == 0  # type: ignore[arg-type]
    text = out.getvalue()
    assert text.index("Institute access:") < text.index("Organizations:")
    assert text.index("Organizations:") < text.index("Secure internet:")
    assert "Université de Genève" in text and "https://lab/" in text
    (_path, _interface, method, signature, query, options) = bus.calls[0]
    assert (method, signature, query) == ("Discover", "sa{sv}", "geneve")
    assert options["kinds"] == ("as", ["institute-access", "organization", "secure-internet"])
    assert options["limit"] == ("u", 50)


def test_vpnctl_without_a_query_lists_the_servers_and_prints_json() -> None:
    import io

    from vpnctl import cli

    bus = FakeBus(RESULTS)
    out = io.StringIO()
    assert cli.run(bus, cli.build_parser().parse_args(["discover", "--json"]), out) == 0  # type: ignore[arg-type]
    options = bus.calls[0][-1]
    assert options["kinds"] == ("as", ["institute-access", "secure-internet"])
    assert options["limit"] == ("u", 0)
    records = json.loads(out.getvalue())
    assert records[2]["list_error"].startswith("cannot connect")
    assert set(records[0]) == set(DISCOVERY_FIELDS)


def test_the_bus_fields_are_what_vpnctl_reads() -> None:
    result = DiscoveryResult(hits=[])
    assert discovery_records(result, "") == []
    assert set(DISCOVERY_FIELDS) == {
        "kind",
        "display_name",
        "base_url",
        "org_id",
        "secure_internet_home",
        "country_code",
        "support_contact",
        "score",
        "match",
        "list_error",
    }
