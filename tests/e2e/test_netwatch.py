"""A changed way to the server makes the tunnel again at once (vpnd.netwatch).

The machine roams: its address on the lab's link moves to another subnet
and the server is now reached through a gateway. The server does not know
the new source address, so the old tunnel is dead, and openvpn by itself
would notice only at its ping timeout (60 s, pushed by the lab's server).
vpnd sees the route change over netlink and makes the tunnel again.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.lab.daemon import VpndProcess, ok, ping, status, vpnctl
from tests.lab.netns import OpenVPNLab
from tests.lab.portal import TestPortal
from tests.lab.vpnd_unit import UnitDaemon

pytestmark = pytest.mark.e2e

# Below the ping-restart (60 s) the lab's server pushes: only vpnd's own
# reaction can bring the tunnel back within this.
WITHIN = 45.0


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True)


def test_a_new_way_to_the_server_makes_the_tunnel_again(
    vpnd: VpndProcess, portal: TestPortal, openvpn_lab: OpenVPNLab, client_env: dict[str, str]
) -> None:
    env = client_env
    lab = openvpn_lab
    ok(vpnctl(["add", portal.base_url], env))
    ok(vpnctl(["login", portal.host], env))
    ok(vpnctl(["connect", portal.host, "--profile", "employees"], env))
    assert status(env)["state"] == "connected"
    [before] = vpnd.openvpn_children()
    # Addresses of the lab's own /24 (its link uses .0/30).
    prefix = lab.host_address.rpartition(".")[0]
    new_host, new_gateway = f"{prefix}.5", f"{prefix}.6"
    moved = time.monotonic()
    try:
        ip("-n", lab.netns, "addr", "add", f"{new_gateway}/30", "dev", lab.veth_peer)
        ip("addr", "add", f"{new_host}/30", "dev", lab.veth_host)
        ip("addr", "del", f"{lab.host_address}/30", "dev", lab.veth_host)
        ip("route", "add", f"{lab.server_address}/32", "via", new_gateway, "dev", lab.veth_host)
        while not ((now := vpnd.openvpn_children()) and now != [before]):
            assert time.monotonic() - moved < WITHIN, vpnd.log()[-3000:]
            time.sleep(0.1)
        while status(env)["state"] != "connected":
            assert time.monotonic() - moved < WITHIN, vpnd.log()[-3000:]
            time.sleep(0.1)
        log = vpnd.log()
        assert f"the way to {lab.server_address} changed" in log, log[-3000:]
        assert ping(lab.tunnel_gateway_udp)
        # The server knows the client by its new address.
        assert f",{new_host}:" in lab.management("udp", "status 2")
        ok(vpnctl(["disconnect"], env))
    finally:
        subprocess.run(["ip", "route", "del", f"{lab.server_address}/32"], check=False)
        subprocess.run(
            ["ip", "addr", "add", f"{lab.host_address}/30", "dev", lab.veth_host], check=False
        )
        subprocess.run(["ip", "addr", "del", f"{new_host}/30", "dev", lab.veth_host], check=False)
        subprocess.run(
            ["ip", "-n", lab.netns, "addr", "del", f"{new_gateway}/30", "dev", lab.veth_peer],
            check=False,
        )


def test_a_link_down_and_up_again_brings_the_tunnel_back(
    vpnd: VpndProcess, portal: TestPortal, openvpn_lab: OpenVPNLab, client_env: dict[str, str]
) -> None:
    env = client_env
    lab = openvpn_lab
    ok(vpnctl(["add", portal.base_url], env))
    ok(vpnctl(["login", portal.host], env))
    ok(vpnctl(["connect", portal.host, "--profile", "employees"], env))
    [before] = vpnd.openvpn_children()
    try:
        ip("link", "set", lab.veth_host, "down")
        # While it is down the tunnel is made again, and cannot come up.
        deadline = time.monotonic() + WITHIN
        while vpnd.openvpn_children() == [before]:
            assert time.monotonic() < deadline, vpnd.log()[-3000:]
            time.sleep(0.1)
        time.sleep(2)
        assert status(env)["state"] == "reconnecting"
    finally:
        ip("link", "set", lab.veth_host, "up")
    back = time.monotonic()
    while status(env)["state"] != "connected":
        assert time.monotonic() - back < WITHIN, vpnd.log()[-3000:]
        time.sleep(0.1)
    assert f"the way to {lab.server_address} changed" in vpnd.log()
    assert ping(lab.tunnel_gateway_udp)
    ok(vpnctl(["disconnect"], env))


def test_changes_elsewhere_leave_the_tunnel_alone(
    vpnd: VpndProcess, portal: TestPortal, openvpn_lab: OpenVPNLab, client_env: dict[str, str]
) -> None:
    env = client_env
    ok(vpnctl(["add", portal.base_url], env))
    ok(vpnctl(["login", portal.host], env))
    ok(vpnctl(["connect", portal.host, "--profile", "employees"], env))
    [before] = vpnd.openvpn_children()
    # A link that comes and goes and a route elsewhere: the way to the server stays.
    name = f"vpnd-nw-{openvpn_lab.slot}"
    try:
        ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p")
        ip("link", "set", name, "up")
        ip("addr", "add", "198.18.0.1/24", "dev", name)
        ip("route", "add", "198.19.0.0/24", "via", "198.18.0.2", "dev", name)
        ip("link", "set", name, "down")
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)
    # Long enough for the watcher's quiet period and a restart it should not make.
    time.sleep(3)
    assert vpnd.openvpn_children() == [before]
    assert "network change" not in vpnd.log()
    assert status(env)["state"] == "connected"
    ok(vpnctl(["disconnect"], env))


def test_the_unit_may_follow_network_changes(
    unit_daemon: UnitDaemon, client_env: dict[str, str]
) -> None:
    # The shipped unit's sandbox leaves AF_NETLINK open for this, and only that.
    ok(vpnctl(["list"], unit_daemon.env(client_env)))
    log = unit_daemon.log()
    assert "following changes of links and routes" in log, log[-3000:]
    assert "cannot follow network changes" not in log
