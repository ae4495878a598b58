"""An OpenVPN Access Server profile end to end: sign in, connect, ping through the tunnel."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.lab.daemon import VpndProcess, ok, ping, status, vpnctl
from tests.lab.netns import OpenVPNLab
from tests.lab.pki import LabPKI
from tests.lab.portal_as import TestAccessServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def access_server(lab_pki: LabPKI, openvpn_lab: OpenVPNLab) -> Iterator[TestAccessServer]:
    with TestAccessServer(lab_pki, openvpn_lab) as server:
        yield server


def sign_in(server: TestAccessServer, env: dict[str, str], *extra: str) -> None:
    ok(vpnctl(["add", "--access-server", server.base_url, "--user", "alice",
               "--password-stdin", *extra], env, stdin="correct horse\n"))  # fmt: skip


def test_an_autologin_profile_connects_unattended(
    vpnd: VpndProcess,
    access_server: TestAccessServer,
    openvpn_lab: OpenVPNLab,
    client_env: dict[str, str],
) -> None:
    sign_in(access_server, client_env, "--autologin")
    ok(vpnctl(["connect", "127.0.0.1"], client_env))
    assert ping(openvpn_lab.tunnel_gateway_udp)
    now = status(client_env)
    assert now["state"] == "connected" and now["profile"] == "autologin"
    assert now["session_expiry"]  # the profile's certificate ends some day
    ok(vpnctl(["disconnect"], client_env))
    ok(vpnctl(["connect", "127.0.0.1", "--tcp"], client_env))
    assert status(client_env)["remote"].endswith(str(openvpn_lab.tcp_port))
    ok(vpnctl(["disconnect"], client_env))


def test_a_userlogin_profile_connects_with_the_kept_password(
    vpnd: VpndProcess,
    access_server: TestAccessServer,
    openvpn_lab: OpenVPNLab,
    client_env: dict[str, str],
) -> None:
    sign_in(access_server, client_env, "--remember")
    ok(vpnctl(["connect", "127.0.0.1"], client_env))
    assert status(client_env)["profile"] == "userlogin"
    assert ping(openvpn_lab.tunnel_gateway_udp)
    ok(vpnctl(["disconnect"], client_env))
    assert "correct horse" not in vpnd.log()
