"""`vpnctl status --watch` following a real tunnel: connecting → connected → disconnected,
for people and as JSON, with traffic alone printing nothing."""

from __future__ import annotations

import time

import pytest

from tests.lab.daemon import VpndProcess, ok, ping, status, vpnctl
from tests.lab.netns import OpenVPNLab
from tests.lab.portal import TestPortal
from tests.lab.watch import Watcher

pytestmark = pytest.mark.e2e


def test_watch_follows_a_tunnel_up_and_down(
    vpnd: VpndProcess, portal: TestPortal, openvpn_lab: OpenVPNLab, client_env: dict[str, str]
) -> None:
    env = client_env
    ok(vpnctl(["add", portal.base_url], env))
    ok(vpnctl(["login", portal.host], env))
    with Watcher(env) as records, Watcher(env, args=()) as lines:
        assert records.record()["state"] == "disconnected"
        assert lines.line().endswith("  disconnected")

        ok(vpnctl(["connect", portal.host, "--profile", "employees"], env))
        up = records.records_until(lambda record: record["state"] == "connected")
        states = [record["state"] for record in up]
        assert "connecting" in states
        assert set(states) <= {"preparing", "connecting", "connected"}
        assert {record["connection"] for record in up} == {up[0]["connection"]}
        now = status(env)
        assert (up[-1]["tunnel_ip"], up[-1]["profile"]) == (now["tunnel_ip"], "employees")

        # Traffic through the tunnel; once vpnd has counted it, it still makes no line.
        assert ping(openvpn_lab.tunnel_gateway_udp)
        deadline = time.monotonic() + 30
        while status(env)["bytes_in"] == 0:
            assert time.monotonic() < deadline, "vpnd never counted the traffic"
            time.sleep(0.2)

        ok(vpnctl(["disconnect"], env))
        down = records.records_until(lambda record: record["state"] == "disconnected")
        assert {record["state"] for record in down} <= {"disconnecting", "disconnected"}
        # The counters are current in the line that follows.
        assert down[0]["bytes_in"] > 0
        assert records.interrupt() == (130, "")

        shown = [lines.line()]
        while not shown[-1].split("  ")[1].startswith("disconnected"):
            shown.append(lines.line())
        assert lines.interrupt() == (130, "")
    states_shown = [line.split("  ")[1] for line in shown]
    assert any(state.startswith("connecting (") for state in states_shown), shown
    connected = [line for line in shown if line.split("  ")[1] == "connected"]
    assert len(connected) == 1
    assert f"  tunnel IP {now['tunnel_ip']}" in connected[0]
    assert connected[0].endswith(f"{portal.base_url} profile employees")
    assert states_shown.index("connected") < len(states_shown) - 1
