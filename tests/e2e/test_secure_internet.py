"""Secure internet end to end: one login at the home server, the VPN at two locations.

A federation of two test portals: the home server, where the organization
logs in (through the server list's login shortcut), and a location that
accepts the home server's tokens, as secure-internet servers do. Signed
discovery lists name both. vpnd adds the home server by organization, logs
in once, connects at home, moves to the other location without a new login,
and refreshes the token only at home; the location's OAuth endpoints are
never called.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.browser import final_address
from tests.lab.daemon import failed, ok, ping, status, vpnctl
from tests.lab.dbus import PrivateSystemBus
from tests.lab.discovery import (
    DiscoveryDaemon,
    DiscoveryServer,
    LabSigner,
    organization_list,
    server_list,
)
from tests.lab.netns import OpenVPNLab
from tests.lab.pki import LabPKI
from tests.lab.portal import TestPortal
from tests.lab.terminal import Terminal

pytestmark = pytest.mark.e2e

ORG = "https://idp.uni.example"


@pytest.fixture(scope="module")
def federation(lab_pki: LabPKI, openvpn_lab: OpenVPNLab) -> Iterator[tuple[TestPortal, TestPortal]]:
    with TestPortal(lab_pki, openvpn_lab) as home, TestPortal(lab_pki, openvpn_lab) as away:
        away.token_authority = home
        yield home, away


@pytest.fixture
def lists(
    lab_pki: LabPKI, federation: tuple[TestPortal, TestPortal]
) -> Iterator[tuple[DiscoveryServer, LabSigner]]:
    home, away = federation
    signer = LabSigner()
    servers: list[dict[str, Any]] = [
        {
            "server_type": "secure_internet",
            "base_url": home.base_url,
            "country_code": "NL",
            "display_name": "Home",
            "authentication_url_template": (
                f"{home.base_url}_saml/login?ReturnTo=@RETURN_TO@&IdP=@ORG_ID@"
            ),
            "support_contact": ["mailto:help@home.example"],
        },
        {
            "server_type": "secure_internet",
            "base_url": away.base_url,
            "country_code": "SE",
            "display_name": "Away",
        },
    ]
    organizations = [
        {"org_id": ORG, "display_name": "The University", "secure_internet_home": home.base_url}
    ]
    with DiscoveryServer(lab_pki) as served:
        served.publish("server_list.json", server_list(1, servers), signer)
        served.publish("organization_list.json", organization_list(1, organizations), signer)
        yield served, signer


@pytest.fixture
def daemon(
    tmp_path: Path,
    private_bus: PrivateSystemBus,
    lab_pki: LabPKI,
    lists: tuple[DiscoveryServer, LabSigner],
    federation: tuple[TestPortal, TestPortal],
) -> Iterator[DiscoveryDaemon]:
    served, signer = lists
    for portal in federation:
        portal.reset()
    process = DiscoveryDaemon(
        tmp_path / "vpnd",
        private_bus.env({}),
        ca_file=lab_pki.ca_path,
        settings={"discovery_url": served.base_url},
        keys=[signer.public_key],
    )
    process.start()
    yield process
    assert process.stop() == 0, process.log()
    assert "Traceback" not in process.log(), process.log()


def oauth_requests(portal: TestPortal) -> list[str]:
    return [path for _method, path, _headers in portal.requests if path.startswith("/oauth/")]


def test_one_login_at_home_serves_every_location(
    daemon: DiscoveryDaemon,
    federation: tuple[TestPortal, TestPortal],
    openvpn_lab: OpenVPNLab,
    client_env: dict[str, str],
) -> None:
    home, away = federation
    added = ok(vpnctl(["add", "--org", ORG], client_env))
    assert "The University" in added and "Support: mailto:help@home.example" in added
    [server] = json.loads(ok(vpnctl(["list", "--json"], client_env)))
    assert server["url"] == home.base_url and server["kind"] == "secure-internet"
    assert server["display_name"] == "The University"
    assert server["support_contact"] == ["mailto:help@home.example"]
    # The login goes through the home server's shortcut for this organization.
    ok(vpnctl(["login", home.host + f":{home.port}"], client_env))
    assert home.shortcut_logins == [ORG]
    assert home.token_grants == ["authorization_code"]

    ok(vpnctl(["connect", f"{home.host}:{home.port}", "--profile", "employees"], client_env))
    assert len(home.connect_calls) == 1 and not away.connect_calls
    assert ping(openvpn_lab.tunnel_gateway_udp)
    ok(vpnctl(["disconnect"], client_env))

    locations = json.loads(ok(vpnctl(["location", "--json"], client_env)))
    assert [(loc["country_code"], loc["current"]) for loc in locations] == [
        ("NL", True),
        ("SE", False),
    ]
    ok(vpnctl(["location", "se"], client_env))
    ok(vpnctl(["connect", f"{home.host}:{home.port}", "--profile", "employees"], client_env))
    assert len(away.connect_calls) == 1 and len(home.connect_calls) == 1
    assert status(client_env)["state"] == "connected"
    assert ping(openvpn_lab.tunnel_gateway_udp)
    ok(vpnctl(["disconnect"], client_env))

    # An expired token is refreshed at home, never at the location.
    home.expire_access_tokens()
    ok(vpnctl(["profiles", f"{home.host}:{home.port}"], client_env))
    assert home.token_grants == ["authorization_code", "refresh_token"]
    assert oauth_requests(away) == [] and away.token_grants == []
    assert away.shortcut_logins == []

    # Back home; an unknown location is named, and the choice stays.
    line = failed(vpnctl(["location", "FR"], client_env))
    assert "no secure-internet location 'FR'" in line
    ok(vpnctl(["location", ""], client_env))
    assert json.loads(ok(vpnctl(["location", "--json"], client_env)))[0]["current"] is True


def test_a_headless_login_at_home_serves_every_location(
    daemon: DiscoveryDaemon,
    federation: tuple[TestPortal, TestPortal],
    openvpn_lab: OpenVPNLab,
    lab_pki: LabPKI,
    client_env: dict[str, str],
) -> None:
    home, away = federation
    server = f"{home.host}:{home.port}"
    ok(vpnctl(["add", "--org", ORG], client_env))
    env = {**client_env, "BROWSER": "/bin/false"}  # no browser on this machine

    def other_device(terminal: Terminal) -> str:
        """The address the browser on another device ends at (it never loads it)."""
        terminal.expect("Open this address in a browser to log in:\n")
        url = terminal.expect("\n").strip()
        # The login starts at the home server's shortcut for the organization.
        assert url.startswith(f"{home.base_url}_saml/login?")
        terminal.expect("Paste that address here")
        return final_address(url, ca_file=str(lab_pki.ca_path))

    with Terminal.vpnctl(["login", "--no-browser", server], env) as terminal:
        address = other_device(terminal)
        assert address.startswith("http://127.0.0.1:")
        # A forged state is refused as a real callback's would be.
        forged = re.sub(r"state=[^&]*", "state=forged", address)
        terminal.send(forged)
        assert terminal.wait() != 0
        # What vpnctl said after the (echoed) pasted line.
        assert "state mismatch" in terminal.output.rpartition(forged)[2]
    assert json.loads(ok(vpnctl(["list", "--json"], client_env)))[0]["authorized"] is False
    with Terminal.vpnctl(["login", "--no-browser", server], env) as terminal:
        terminal.send(other_device(terminal))
        terminal.expect("Logged in to")
        assert terminal.wait() == 0
    assert home.shortcut_logins == [ORG, ORG]
    assert home.token_grants == ["authorization_code"]
    [listed] = json.loads(ok(vpnctl(["list", "--json"], client_env)))
    assert listed["authorized"] is True and listed["kind"] == "secure-internet"

    # The home server's token serves both locations, without a new login.
    ok(vpnctl(["connect", server, "--profile", "employees"], client_env))
    assert ping(openvpn_lab.tunnel_gateway_udp)
    ok(vpnctl(["disconnect"], client_env))
    ok(vpnctl(["location", "se"], client_env))
    ok(vpnctl(["connect", server, "--profile", "employees"], client_env))
    assert status(client_env)["state"] == "connected"
    assert ping(openvpn_lab.tunnel_gateway_udp)
    ok(vpnctl(["disconnect"], client_env))
    assert len(home.connect_calls) == 1 and len(away.connect_calls) == 1
    assert home.token_grants == ["authorization_code"]
    assert oauth_requests(away) == [] and away.shortcut_logins == []


def test_an_organization_the_list_does_not_have_is_named(
    daemon: DiscoveryDaemon, client_env: dict[str, str]
) -> None:
    line = failed(vpnctl(["add", "--org", "https://idp.nowhere.example"], client_env))
    assert "no organization" in line
    assert json.loads(ok(vpnctl(["list", "--json"], client_env))) == []
