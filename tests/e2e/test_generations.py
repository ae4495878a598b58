"""Older eduVPN servers end to end: API v2 and v1 portals, a real tunnel, driven by vpnctl.

The same path as the spine's test for API v3: add → login (scripted
browser) → profiles → connect → ping through the tunnel → disconnect. The
user never says which generation a server speaks; vpnd finds out.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest

from tests.lab.browser import final_address
from tests.lab.daemon import VpndProcess, failed, ok, ping, state_files, status, vpnctl
from tests.lab.netns import OpenVPNLab
from tests.lab.pki import LabPKI
from tests.lab.portal_v2 import TestPortalV2
from tests.lab.terminal import Terminal

pytestmark = pytest.mark.e2e


def servers(env: dict[str, str]) -> list[dict[str, object]]:
    return list(json.loads(ok(vpnctl(["list", "--json"], env))))


def profile_ids(env: dict[str, str], server: str) -> list[str]:
    return [p["profile_id"] for p in json.loads(ok(vpnctl(["profiles", server, "--json"], env)))]


@pytest.fixture(params=[2, 1], ids=["api-v2", "api-v1"])
def generation(request: pytest.FixtureRequest, portal_v2: TestPortalV2) -> Iterator[int]:
    portal_v2.api_version = request.param
    yield request.param


def test_add_login_connect_ping_disconnect(
    vpnd: VpndProcess,
    portal_v2: TestPortalV2,
    openvpn_lab: OpenVPNLab,
    client_env: dict[str, str],
    generation: int,
) -> None:
    env = client_env
    host = "127.0.0.1"
    ok(vpnctl(["add", portal_v2.base_url], env))
    ok(vpnctl(["login", host], env))
    [server] = servers(env)
    assert server["authorized"] is True
    assert server["kind"] == f"eduvpn-v{generation}"
    assert profile_ids(env, host) == ["internet", "office"]
    portal_v2.system_messages = [
        {"type": "motd", "message": "Welcome to the lab", "date_time": "2026-12-01T10:00:00Z"},
        {"type": "maintenance", "message": "Upgrade", "date_time": "2026-12-02T10:00:00Z",
         "begin": "2026-12-24T08:00:00Z", "end": "2026-12-24T09:00:00Z"},
    ]  # fmt: skip
    portal_v2.user_messages = [
        {"type": "notification", "message": "Hello", "date_time": "2026-12-03T10:00:00Z"}
    ]
    messages = json.loads(ok(vpnctl(["messages", host, "--json"], env)))
    assert [(m["type"], m["text"]) for m in messages] == [
        ("notification", "Hello"), ("maintenance", "Upgrade"), ("motd", "Welcome to the lab"),
    ]  # fmt: skip
    assert messages[1]["begin_iso"] == "2026-12-24T08:00:00Z"

    shown = ok(vpnctl(["connect", host, "--profile", "internet"], env))
    assert shown.splitlines()[-1] == "Welcome to the lab"
    assert ping(openvpn_lab.tunnel_gateway_udp)
    now = status(env)
    assert now["state"] == "connected" and now["profile"] == "internet"
    # The session ends when the certificate does.
    [common_name] = portal_v2.issued_common_names
    assert abs(now["session_expiry"] - (time.time() + portal_v2.keypair_days * 86400)) < 600
    ok(vpnctl(["disconnect"], env))
    assert status(env)["state"] == "disconnected"

    # A second connect reuses the server's key pair where the API lets a
    # client keep one (v2; v1 servers without create_certificate issue a new
    # one with every configuration).
    ok(vpnctl(["connect", host, "--profile", "internet", "--tcp"], env))
    assert status(env)["remote"].endswith(str(openvpn_lab.tcp_port))
    assert ping(openvpn_lab.tunnel_gateway_tcp)
    ok(vpnctl(["disconnect"], env))
    if generation == 2:
        assert portal_v2.issued_common_names == [common_name]
        checks = [c for c in portal_v2.calls if c[0] == "check_certificate"]
        assert checks and all(c[1]["common_name"] == common_name for c in checks)
    else:
        assert len(portal_v2.issued_common_names) == 2


def test_an_expired_certificate_is_replaced_without_the_user(
    vpnd: VpndProcess, portal_v2: TestPortalV2, openvpn_lab: OpenVPNLab, client_env: dict[str, str]
) -> None:
    env = client_env
    ok(vpnctl(["add", portal_v2.base_url], env))
    ok(vpnctl(["login", "127.0.0.1"], env))
    ok(vpnctl(["connect", "127.0.0.1", "--profile", "internet"], env))
    ok(vpnctl(["disconnect"], env))
    portal_v2.expire_certificates()
    ok(vpnctl(["connect", "127.0.0.1", "--profile", "internet"], env))
    assert ping(openvpn_lab.tunnel_gateway_udp)
    ok(vpnctl(["disconnect"], env))
    first, second = portal_v2.issued_common_names
    assert first != second
    assert [c[0] for c in portal_v2.calls].count("create_keypair") == 2


def test_a_disabled_account_is_named_before_openvpn_starts(
    vpnd: VpndProcess, portal_v2: TestPortalV2, client_env: dict[str, str]
) -> None:
    env = client_env
    ok(vpnctl(["add", portal_v2.base_url], env))
    ok(vpnctl(["login", "127.0.0.1"], env))
    portal_v2.user_disabled = True
    before = state_files(vpnd)
    line = failed(vpnctl(["connect", "127.0.0.1", "--profile", "internet"], env))
    assert "disabled your account" in line
    portal_v2.user_disabled = False
    # The profile needs two-factor authentication, which the user has not enrolled in.
    line = failed(vpnctl(["connect", "127.0.0.1", "--profile", "office"], env))
    assert "two-factor" in line and "enroll" in line
    assert portal_v2.base_url in line  # where to enroll
    assert state_files(vpnd) == before


def test_the_key_pair_is_kept_sealed(
    vpnd: VpndProcess, portal_v2: TestPortalV2, client_env: dict[str, str]
) -> None:
    ok(vpnctl(["add", portal_v2.base_url], client_env))
    ok(vpnctl(["login", "127.0.0.1"], client_env))
    ok(vpnctl(["connect", "127.0.0.1", "--profile", "internet"], client_env))
    ok(vpnctl(["disconnect"], client_env))
    issued = portal_v2.issued_keys
    assert issued
    key_body = [line for line in issued[-1].splitlines() if line and "-----" not in line]
    for path, data in state_files(vpnd).items():
        for line in key_body:
            assert line.encode() not in data, path


def test_a_headless_implicit_grant_login_takes_the_address_with_the_token(
    vpnd: VpndProcess,
    portal_v2: TestPortalV2,
    openvpn_lab: OpenVPNLab,
    lab_pki: LabPKI,
    client_env: dict[str, str],
) -> None:
    portal_v2.api_version = 1
    ok(vpnctl(["add", portal_v2.base_url], client_env))
    env = {**client_env, "BROWSER": "/bin/false"}  # no browser on this machine

    def other_device(terminal: Terminal) -> str:
        """The address the browser on another device ends at (it never loads it)."""
        url = terminal.expect("/_oauth/authorize?").rpartition("\n")[2]
        url += terminal.expect("\n").strip()
        assert "response_type=token" in url  # API v1: the implicit grant
        terminal.expect("Paste that address here")
        return final_address(url, ca_file=str(lab_pki.ca_path))

    with Terminal.vpnctl(["login", "--no-browser", "127.0.0.1"], env) as terminal:
        address = other_device(terminal)
        # The token comes back in the fragment, which no server ever sees.
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/callback#.*access_token=.+", address)
        assert "state=" in address.partition("#")[2]
        # A forged state is refused as a real callback's would be.
        forged = re.sub(r"state=[^&]*", "state=forged", address)
        terminal.send(forged)
        assert terminal.wait() != 0
        # What vpnctl said after the (echoed) pasted line.
        assert "state mismatch" in terminal.output.rpartition(forged)[2]
    assert servers(client_env)[0]["authorized"] is False
    with Terminal.vpnctl(["login", "--no-browser", "127.0.0.1"], env) as terminal:
        terminal.send(other_device(terminal))
        terminal.expect("Logged in to")
        assert terminal.wait() == 0
    # No token endpoint in API v1: the pasted fragment was the whole login.
    assert portal_v2.token_grants == []
    [server] = servers(client_env)
    assert server["authorized"] is True and server["kind"] == "eduvpn-v1"
    # The token from the pasted address is the one the API accepts.
    ok(vpnctl(["connect", "127.0.0.1", "--profile", "internet"], client_env))
    assert ping(openvpn_lab.tunnel_gateway_udp)
    ok(vpnctl(["disconnect"], client_env))
