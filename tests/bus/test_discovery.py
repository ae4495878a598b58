"""Signed discovery through the real daemon: `vpnctl discover` against lists the
lab signs and serves over TLS, a list server that goes away, and lists that
must be refused.

The lab's discovery server (tests/lab/discovery.py) serves minisign-signed
lists with ETag and Last-Modified; vpnd is pointed at it, and trusts the
lab's key, through its vpnd.toml.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.daemon import VpndProcess, failed, ok, vpnctl
from tests.lab.dbus import PrivateSystemBus
from tests.lab.discovery import (
    DiscoveryDaemon,
    DiscoveryServer,
    LabSigner,
    organization_list,
    server_list,
)
from tests.lab.pki import LabPKI

pytestmark = pytest.mark.bus

SERVERS: list[dict[str, Any]] = [
    {
        "server_type": "institute_access",
        "base_url": "https://vpn.campus.example/",
        "display_name": {"en": "Campus Lab", "nl": "Campuslab"},
        "keyword_list": "lab research",
    },
    {
        "server_type": "secure_internet",
        "base_url": "https://nl.eduvpn.example/",
        "country_code": "NL",
    },
]
ORGANIZATIONS: list[dict[str, Any]] = [
    {
        "org_id": "https://idp.unige.example",
        "display_name": {"en": "University of Geneva", "fr": "Université de Genève"},
        "secure_internet_home": "https://nl.eduvpn.example/",
        "keyword_list": {"fr": "UNIGE"},
    },
    {
        "org_id": "https://idp.uva.example",
        "display_name": "Universiteit van Amsterdam",
        "secure_internet_home": "https://nl.eduvpn.example/",
        "keyword_list": "UvA",
    },
    {
        "org_id": "https://idp.tud.example",
        "display_name": "Technische Universität Dresden",
        "secure_internet_home": "https://nl.eduvpn.example/",
    },
]
ORG_LIST = "/organization_list.json"


@pytest.fixture(scope="module")
def signer() -> LabSigner:
    return LabSigner()


@pytest.fixture
def lists(lab_pki: LabPKI, signer: LabSigner) -> Iterator[DiscoveryServer]:
    with DiscoveryServer(lab_pki) as server:
        server.publish("server_list.json", server_list(100, SERVERS), signer)
        server.publish("organization_list.json", organization_list(200, ORGANIZATIONS), signer)
        yield server


@pytest.fixture
def daemon(
    tmp_path: Path,
    private_bus: PrivateSystemBus,
    lab_pki: LabPKI,
    lists: DiscoveryServer,
    signer: LabSigner,
) -> Iterator[DiscoveryDaemon]:
    process = DiscoveryDaemon(
        tmp_path / "vpnd",
        private_bus.env({}),
        ca_file=lab_pki.ca_path,
        settings={"discovery_url": lists.base_url},
        keys=[signer.public_key],
    )
    process.start()
    yield process
    status = process.stop()
    assert status == 0, process.log()
    assert "Traceback" not in process.log(), process.log()


def discover(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads(ok(vpnctl(["discover", *args, "--json"], env)))
    return records


def restart(daemon: DiscoveryDaemon) -> None:
    assert daemon.stop() == 0, daemon.log()
    daemon.start()


def test_discover_finds_an_organization_with_a_typo_or_without_its_accents(
    daemon: DiscoveryDaemon, lists: DiscoveryServer, client_env: dict[str, str]
) -> None:
    # Without a query: the servers, and the organization list is left alone.
    listed = discover(client_env)
    assert [(r["kind"], r["base_url"]) for r in listed] == [
        ("institute-access", "https://vpn.campus.example/"),
        ("secure-internet", "https://nl.eduvpn.example/"),
    ]
    assert lists.count(ORG_LIST) == 0

    [geneva] = discover({**client_env, "LANG": "fr_CH.UTF-8"}, "universite de geneve")
    assert geneva["kind"] == "organization"
    assert geneva["org_id"] == "https://idp.unige.example"
    assert geneva["display_name"] == "Université de Genève"
    assert geneva["secure_internet_home"] == "https://nl.eduvpn.example/"
    assert geneva["list_error"] == ""

    typo = discover(client_env, "Amstredam")
    assert [(r["org_id"], r["match"]) for r in typo] == [("https://idp.uva.example", "fuzzy")]
    dresden = discover(client_env, "UNIVERSITAT dresden")
    assert [r["display_name"] for r in dresden] == ["Technische Universität Dresden"]

    # Institute access, organizations and secure internet are shown apart.
    text = ok(vpnctl(["discover", "nl"], client_env))
    assert "Secure internet:" in text and "https://nl.eduvpn.example/" in text
    text = ok(vpnctl(["discover", "lab"], client_env))
    assert text.startswith("Institute access:") and "Campus Lab" in text
    assert lists.count(ORG_LIST, 200) == 1


def test_an_unchanged_list_costs_one_conditional_request(
    daemon: DiscoveryDaemon, lists: DiscoveryServer, client_env: dict[str, str]
) -> None:
    assert discover(client_env, "amsterdam")
    restart(daemon)
    assert discover(client_env, "amsterdam")
    assert lists.count(ORG_LIST, 200) == 1
    assert lists.count(ORG_LIST, 304) == 1
    assert lists.count(ORG_LIST + ".minisig") == 1
    [request] = [r for r in lists.requests if r[1] == ORG_LIST and "if-none-match" in r[2]]
    assert request[2]["if-none-match"].startswith('"')


def test_discover_uses_the_kept_copy_when_the_list_server_is_down(
    daemon: DiscoveryDaemon, lists: DiscoveryServer, client_env: dict[str, str]
) -> None:
    assert discover(client_env, "geneva")
    assert daemon.kept_list.is_file()
    lists.stop()
    restart(daemon)
    result = vpnctl(["discover", "geneva"], client_env)
    assert "University of Geneva" in ok(result)
    assert "kept copy" in result.stderr and "127.0.0.1" in result.stderr
    [geneva] = discover(client_env, "geneva")
    assert geneva["org_id"] == "https://idp.unige.example" and geneva["list_error"]
    assert "cannot refresh organization_list.json" in daemon.log()


def test_a_tampered_list_is_refused_and_the_kept_copy_stays(
    daemon: DiscoveryDaemon,
    lists: DiscoveryServer,
    signer: LabSigner,
    client_env: dict[str, str],
) -> None:
    assert discover(client_env, "amsterdam")
    kept = daemon.kept_list.read_bytes()
    # A newer list, changed after signing: its signature is the old one's.
    tampered = organization_list(201, [*ORGANIZATIONS, {**ORGANIZATIONS[1], "org_id": "evil"}])
    lists.put(ORG_LIST, tampered)
    restart(daemon)
    [uva] = discover(client_env, "amsterdam")
    assert uva["org_id"] == "https://idp.uva.example"
    assert "does not match" in uva["list_error"]
    assert daemon.kept_list.read_bytes() == kept

    # Rolled back: genuinely signed, but older than the kept copy.
    lists.publish("organization_list.json", organization_list(150, []), signer)
    restart(daemon)
    [uva] = discover(client_env, "amsterdam")
    assert "older" in uva["list_error"]
    assert daemon.kept_list.read_bytes() == kept

    # Signed by a key vpnd does not trust.
    lists.publish("organization_list.json", organization_list(300, []), LabSigner())
    restart(daemon)
    [uva] = discover(client_env, "amsterdam")
    assert "not among the trusted" in uva["list_error"]
    assert daemon.kept_list.read_bytes() == kept


def test_with_no_copy_a_refused_list_is_the_answer(
    daemon: DiscoveryDaemon, lists: DiscoveryServer, client_env: dict[str, str]
) -> None:
    lists.remove(ORG_LIST + ".minisig")
    line = failed(vpnctl(["discover", "amsterdam"], client_env))
    assert "without a signature" in line
    assert not daemon.kept_list.exists()


def test_discovery_off_says_so(
    tmp_path: Path, private_bus: PrivateSystemBus, client_env: dict[str, str]
) -> None:
    with VpndProcess(
        tmp_path / "off", private_bus.env({}), settings={"discovery_url": ""}
    ) as process:
        line = failed(vpnctl(["discover", "amsterdam"], client_env))
        assert "discovery is off" in line and "vpnctl" not in line.removeprefix("vpnctl:")
    assert "Traceback" not in process.log()
