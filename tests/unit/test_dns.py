"""The DNS a tunnel brings: the push-reply reader, the settings for a link, the
tunnel's timing of `Up`, and setting and taking back through a fake resolver."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_manager import World, settled_tunnel, until
from vpnd.manager import Connection, Manager, Server
from vpnd.protocols.connstate import State
from vpnd.protocols.dns import (
    DnsServer,
    DnsSettings,
    PushedDns,
    PushedDnsRejected,
    PushReplyReader,
    dns_server,
    normal_domain,
    parse_push_options,
)
from vpnd.protocols.management import StateEvent
from vpnd.tunnel.dns import RECORD_NAME, DnsFailed, DnsKeeper, Resolvconf
from vpnd.tunnel.events import TunnelEvent, TunnelExited, Up
from vpnd.tunnel.openvpn import Tunnel, TunnelSettings

LINK = "lo"  # a link every machine has: the keeper looks its index up


def push_line(*options: str) -> str:
    return "PUSH: Received control message: 'PUSH_REPLY," + ",".join(options) + "'"


# --- the reader --------------------------------------------------------------


def test_reads_dhcp_options_and_the_device() -> None:
    reader = PushReplyReader()
    assert not reader.feed("TUN/TAP device tun3 opened")
    reader.feed(
        push_line(
            "route 10.8.0.0 255.255.255.0",
            "dhcp-option DNS 10.8.0.1",
            "dhcp-option DNS6 fd00::0001",
            "dhcp-option DOMAIN corp.example.",
            "dhcp-option DOMAIN-SEARCH lab.example",
            "auth-token",
            "ifconfig 10.8.0.2 255.255.255.0",
        )
    )
    assert reader.device == "tun3"
    assert reader.pushed == PushedDns(
        (DnsServer("10.8.0.1"), DnsServer("fd00::1")), ("corp.example", "lab.example")
    )
    assert reader.feed("Initialization Sequence Completed")


def test_dns_options_come_before_dhcp_options_and_by_priority() -> None:
    pushed = parse_push_options(
        [
            "dhcp-option DNS 10.8.0.1",
            "dhcp-option DOMAIN old.example",
            "dns server 5 address 10.8.0.5",
            "dns server 1 address [fd00::53]:5353 10.8.0.53:53",
            "dns server 1 resolve-domains intra.example",
            "dns server 1 dnssec yes",
            "dns search-domains a.example b.example",
            "redirect-gateway def1",
        ]
    )
    assert pushed.servers == (
        DnsServer("fd00::53", 5353),
        DnsServer("10.8.0.53"),
        DnsServer("10.8.0.5"),
    )
    assert pushed.search_domains == ("a.example", "b.example")
    assert pushed.routing_domains == ("intra.example",)
    assert pushed.redirect_gateway


@pytest.mark.parametrize(
    "option",
    [
        "dhcp-option DNS 10.8.0.300",
        "dhcp-option DNS 10.8.0.1:53",
        "dhcp-option DOMAIN bad..example",
        "dhcp-option DOMAIN-SEARCH -x-.example",
        "dns server 1 address 10.8.0.1:70000",
        "dns server 1 address nameserver",
        "dns search-domains ok.example under_score.example. not/a/name",
        "dns server x address 10.8.0.1",
    ],
)
def test_a_bad_value_rejects_the_whole_reply_and_keeps_nothing(option: str) -> None:
    reader = PushReplyReader()
    reader.feed(push_line("dhcp-option DNS 10.8.0.1"))
    with pytest.raises(PushedDnsRejected):
        reader.feed(push_line("dhcp-option DNS 10.8.0.2", option))
    assert reader.pushed == PushedDns()


def test_too_many_servers_or_domains_are_rejected() -> None:
    with pytest.raises(PushedDnsRejected):
        parse_push_options([f"dhcp-option DNS 10.8.1.{i}" for i in range(40)])
    with pytest.raises(PushedDnsRejected):
        parse_push_options([f"dhcp-option DOMAIN d{i}.example" for i in range(300)])


def test_a_restart_voids_what_was_pushed_and_a_half_reply() -> None:
    reader = PushReplyReader()
    reader.feed("TUN/TAP device tun0 opened")
    reader.feed(push_line("dhcp-option DNS 10.8.0.1"))
    reader.feed(push_line("dhcp-option DNS 10.8.0.2", "push-continuation 2"))
    reader.restart()
    assert reader.pushed == PushedDns()
    reader.feed("Preserving previous TUN/TAP instance: tun0")
    reader.feed(push_line("dhcp-option DNS 10.8.0.3"))
    assert reader.pushed.servers == (DnsServer("10.8.0.3"),)
    assert reader.device == "tun0"


def test_a_later_reply_replaces_the_last() -> None:
    reader = PushReplyReader()
    reader.feed(push_line("dhcp-option DNS 10.8.0.1", "dhcp-option DOMAIN a.example"))
    reader.feed(push_line("dhcp-option DNS 10.8.0.2"))
    assert reader.pushed == PushedDns((DnsServer("10.8.0.2"),))


servers = st.lists(st.ip_addresses().map(str), max_size=8, unique=True)
labels = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
domains = st.lists(st.lists(labels, min_size=1, max_size=4).map(".".join), max_size=10, unique=True)


@given(servers, domains, st.data())
def test_a_reply_in_any_number_of_parts_reads_as_one(
    addresses: list[str], names: list[str], data: st.DataObject
) -> None:
    options = [f"dhcp-option DNS{'6' if ':' in a else ''} {a}" for a in addresses]
    options += [f"dhcp-option DOMAIN-SEARCH {name}" for name in names]
    options += ["route 10.8.0.0 255.255.255.0", "auth-token", "peer-id 3"]
    options = data.draw(st.permutations(options))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(options)), max_size=4)))
    parts = [options[a:b] for a, b in zip([0, *cuts], [*cuts, len(options)], strict=True)]
    reader = PushReplyReader()
    for number, part in enumerate(parts):
        last = number == len(parts) - 1
        reader.feed(push_line(*part, f"push-continuation {1 if last else 2}"))
        if not last:
            assert reader.pushed == PushedDns()  # nothing until the last part
    expected_servers = [DnsServer(a) for a in addresses]
    assert sorted(reader.pushed.servers) == sorted(expected_servers)
    assert sorted(reader.pushed.search_domains) == sorted(names)


@given(
    st.dictionaries(
        st.integers(-5, 20), st.lists(st.ip_addresses(), min_size=1, max_size=3), max_size=8
    ),
    servers,
    st.randoms(use_true_random=False),
)
def test_dns_servers_go_by_priority_and_replace_dhcp_ones(
    by_priority: dict[int, list[ipaddress._BaseAddress]], dhcp: list[str], rnd: random.Random
) -> None:
    options = [
        f"dns server {number} address "
        + " ".join(f"[{a}]:53" if a.version == 6 else str(a) for a in addresses)
        for number, addresses in by_priority.items()
    ]
    rnd.shuffle(options)
    # The dhcp-option ones keep their order among themselves, wherever they fall.
    dhcp_options = [f"dhcp-option DNS{'6' if ':' in a else ''} {a}" for a in dhcp]
    merged: list[str] = []
    while options or dhcp_options:
        pick = dhcp_options and (not options or rnd.random() < 0.5)
        merged.append((dhcp_options if pick else options).pop(0))
    options = merged
    expected = [str(a) for _, group in sorted(by_priority.items()) for a in group]
    if not by_priority:
        expected = dhcp
    got = [s.address for s in parse_push_options(options).servers]
    assert got == list(dict.fromkeys(expected))


@given(st.text(max_size=300))
def test_any_log_line_is_read_or_rejected_by_name(text: str) -> None:
    reader = PushReplyReader()
    for line in (text, "PUSH: Received control message: 'PUSH_REPLY," + text + "'"):
        try:
            reader.feed(line)
        except PushedDnsRejected as error:
            assert error.message
    for server in reader.pushed.servers:
        ipaddress.ip_address(server.address)
    for name in reader.pushed.search_domains + reader.pushed.routing_domains:
        assert normal_domain(name) == name


@given(st.ip_addresses(), st.integers(1, 65535))
def test_a_server_with_a_port_reads_back(address: ipaddress._BaseAddress, port: int) -> None:
    text = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    server = dns_server(text)
    assert ipaddress.ip_address(server.address) == address
    assert server.port == (0 if port == 53 else port)
    assert dns_server(str(server)) == server


# --- settings for a link -------------------------------------------------------


def test_a_full_tunnel_sends_every_name_to_the_tunnel() -> None:
    pushed = PushedDns((DnsServer("10.8.0.1"),), ("corp.example",))
    full = DnsSettings.for_link("tun0", pushed, full_tunnel=True)
    assert full.default_route and full.search_domains == ("corp.example",)
    pushed_redirect = PushedDns((DnsServer("10.8.0.1"),), redirect_gateway=True)
    assert DnsSettings.for_link("tun0", pushed_redirect, full_tunnel=False).default_route


def test_a_split_tunnel_sends_only_its_domains_unless_it_has_none() -> None:
    with_domains = PushedDns((DnsServer("10.8.0.1"),), ("corp.example",), ("intra.example",))
    assert not DnsSettings.for_link("tun0", with_domains, full_tunnel=False).default_route
    without = PushedDns((DnsServer("10.8.0.1"),))
    assert DnsSettings.for_link("tun0", without, full_tunnel=False).default_route
    # Domains alone, without servers, never take every name.
    alone = PushedDns((), ("corp.example",))
    assert not DnsSettings.for_link("tun0", alone, full_tunnel=True).default_route


def test_profile_search_domains_join_the_pushed_ones() -> None:
    pushed = PushedDns((DnsServer("10.8.0.1"),), ("corp.example",))
    settings = DnsSettings.for_link(
        "tun0", pushed, full_tunnel=False, extra_search=("lab.example.", "corp.example")
    )
    assert settings.search_domains == ("corp.example", "lab.example")
    with pytest.raises(PushedDnsRejected):
        DnsSettings.for_link("tun0", pushed, full_tunnel=False, extra_search=("a b",))
    with pytest.raises(PushedDnsRejected):
        DnsSettings.for_link("../../x", pushed, full_tunnel=False)


# --- the tunnel reports Up with its DNS, whichever channel comes first -----------


def machine_line(text: str) -> bytes:
    return f"1700000000.000000 1 {text}\n".encode()


def log_until_completed(tunnel: Tunnel) -> None:
    tunnel._output_line(machine_line("TUN/TAP device tun7 opened"))
    tunnel._output_line(machine_line(push_line("dhcp-option DNS 10.8.0.1", "auth-token")))
    tunnel._output_line(machine_line("Initialization Sequence Completed"))


def tunnel_reporting_up(tmp_path: Path, config: str = "client\n") -> tuple[Tunnel, list[Up]]:
    """A tunnel handed `config`, and the Up events it reports, in order."""
    ups: list[Up] = []

    def take(event: TunnelEvent) -> None:
        if isinstance(event, Up):
            ups.append(event)

    tunnel = Tunnel("t", TunnelSettings(runtime_dir=tmp_path), take)
    tunnel._take_config(config, None)
    return tunnel, ups


@pytest.mark.parametrize("log_first", [True, False])
def test_up_carries_the_link_and_dns_in_either_order(tmp_path: Path, log_first: bool) -> None:
    tunnel, ups = tunnel_reporting_up(tmp_path)
    connected = StateEvent(0, "CONNECTED", "SUCCESS", "10.8.0.2", "198.51.100.1", "1194")
    if log_first:
        log_until_completed(tunnel)
        tunnel._on_state(connected)
    else:
        tunnel._on_state(connected)
        assert not ups  # waits for the log
        log_until_completed(tunnel)
    [up] = ups
    assert up.local_ip == "10.8.0.2" and up.link == "tun7"
    assert up.dns == PushedDns((DnsServer("10.8.0.1"),))
    # A restart waits for its own log again.
    tunnel._on_state(StateEvent(0, "RECONNECTING", "ping-restart"))
    tunnel._on_state(connected)
    assert len(ups) == 1
    tunnel._output_line(machine_line("Initialization Sequence Completed"))
    assert ups[-1].dns == PushedDns()


def test_an_auth_token_before_a_dns_option_hides_neither(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # openvpn logs the token's option bare ("auth-token,"); the log's
    # redaction must not cost the option after it, nor the token show.
    tunnel, ups = tunnel_reporting_up(tmp_path)
    caplog.set_level(logging.DEBUG, "vpnd.tunnel")
    for token in ("auth-token", "auth-token SECRET"):
        tunnel._output_line(machine_line("TUN/TAP device tun7 opened"))
        tunnel._output_line(machine_line(push_line(token, "dhcp-option DNS 10.8.0.1")))
        tunnel._output_line(machine_line("Initialization Sequence Completed"))
        tunnel._on_state(StateEvent(0, "CONNECTED", "SUCCESS", "10.8.0.2"))
        assert ups[-1].dns.servers == (DnsServer("10.8.0.1"),)
        tunnel._on_state(StateEvent(0, "RECONNECTING", "ping-restart"))
    assert "SECRET" not in caplog.text


def test_a_config_that_redirects_the_gateway_is_a_full_tunnel(tmp_path: Path) -> None:
    tunnel, ups = tunnel_reporting_up(tmp_path, "client\nredirect-gateway def1\n")
    log_until_completed(tunnel)
    tunnel._on_state(StateEvent(0, "CONNECTED", "SUCCESS", "10.8.0.2"))
    [up] = ups
    assert up.dns.redirect_gateway


def test_a_rejected_reply_is_logged_without_its_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tunnel, _ = tunnel_reporting_up(tmp_path)
    caplog.set_level(logging.DEBUG, "vpnd.tunnel")
    bad = push_line("dhcp-option DNS not-an-address", "auth-token SECRET")
    tunnel._output_line(machine_line(bad))
    log_until_completed(tunnel)
    assert "not-an-address" in caplog.text and "DNS is left as it is" in caplog.text
    assert "SECRET" not in caplog.text


# --- setting and taking back, with a fake resolver --------------------------------


class FakeResolver:
    """A resolver that keeps per-link settings as resolved would."""

    def __init__(self, name: str = "systemd-resolved", *, running: bool = True) -> None:
        self.name = name
        self.running = running
        self.links: dict[int, DnsSettings] = {}
        self.calls: list[tuple[str, int]] = []
        self.fail_apply = False
        self.on_revert: list[object] = []

    async def available(self) -> bool:
        return self.running

    async def apply(self, ifindex: int, settings: DnsSettings) -> None:
        self.calls.append(("apply", ifindex))
        if self.fail_apply:
            raise DnsFailed("refused")
        self.links[ifindex] = settings

    async def revert(self, ifindex: int, link: str) -> None:
        self.calls.append(("revert", ifindex))
        self.links.pop(ifindex, None)


SETTINGS = DnsSettings(LINK, (DnsServer("10.8.0.1"),), ("corp.example",), (), True)


async def test_apply_records_the_link_and_revert_takes_it_back(tmp_path: Path) -> None:
    resolver = FakeResolver()
    keeper = DnsKeeper(tmp_path, [resolver])
    assert await keeper.apply(SETTINGS)
    index = socket.if_nametoindex(LINK)
    assert resolver.links == {index: SETTINGS}
    record = json.loads((tmp_path / RECORD_NAME).read_text())
    assert record == {"backend": "systemd-resolved", "link": LINK, "ifindex": index}
    await keeper.revert()
    assert resolver.links == {} and not (tmp_path / RECORD_NAME).exists()
    await keeper.revert()  # nothing left: nothing done
    assert resolver.calls == [("apply", index), ("revert", index)]


async def test_the_same_link_is_set_over_without_a_gap(tmp_path: Path) -> None:
    resolver = FakeResolver()
    keeper = DnsKeeper(tmp_path, [resolver])
    assert await keeper.apply(SETTINGS)
    other = DnsSettings(LINK, (DnsServer("10.8.0.9"),))
    assert await keeper.apply(other)
    index = socket.if_nametoindex(LINK)
    assert resolver.calls == [("apply", index), ("apply", index)]
    assert resolver.links == {index: other} and keeper.applied == other
    resolver.running = False  # the way it was set is gone: taken back, not set over
    assert not await keeper.apply(SETTINGS)
    assert resolver.calls[-1] == ("revert", index)


async def test_a_cancelled_resolvconf_run_finishes_before_the_next(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    program = tmp_path / "resolvconf"
    program.write_text(
        f'#!/bin/sh\necho "start $1 $2" >> {calls}\ncat > {tmp_path}/input$1\n'
        f'sleep 0.2\necho "end $1" >> {calls}\n'
    )
    program.chmod(0o755)
    resolvconf = Resolvconf(str(program))
    applying = asyncio.create_task(resolvconf.apply(1, SETTINGS))
    await until(lambda: calls.exists())
    applying.cancel()
    with pytest.raises(asyncio.CancelledError):
        await applying
    await resolvconf.revert(1, LINK)
    assert calls.read_text().split("\n") == [
        f"start -a {LINK}.vpnd",
        "end -a",
        f"start -d {LINK}.vpnd",
        "end -d",
        "",
    ]
    assert (tmp_path / "input-a").read_text() == "nameserver 10.8.0.1\nsearch corp.example\n"


async def test_a_failing_resolvconf_says_why(tmp_path: Path) -> None:
    program = tmp_path / "resolvconf"
    program.write_text("#!/bin/sh\necho 'resolvconf: Error: no way' >&2\nexit 3\n")
    program.chmod(0o755)
    with pytest.raises(DnsFailed, match="failed \\(3\\): resolvconf: Error: no way"):
        await Resolvconf(str(program)).apply(1, SETTINGS)
    with pytest.raises(DnsFailed, match="cannot run"):
        await Resolvconf(str(tmp_path / "missing")).apply(1, SETTINGS)


async def test_the_first_running_resolver_is_used(tmp_path: Path) -> None:
    resolved, resolvconf = FakeResolver(running=False), FakeResolver("resolvconf")
    keeper = DnsKeeper(tmp_path, [resolved, resolvconf])
    assert await keeper.apply(SETTINGS)
    assert resolvconf.links and not resolved.calls
    assert json.loads((tmp_path / RECORD_NAME).read_text())["backend"] == "resolvconf"


async def test_no_resolver_means_no_dns_and_no_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keeper = DnsKeeper(tmp_path, [FakeResolver(running=False)])
    assert not await keeper.apply(SETTINGS)
    assert "not used" in caplog.text and not (tmp_path / RECORD_NAME).exists()


async def test_a_refused_apply_leaves_nothing_set(tmp_path: Path) -> None:
    resolver = FakeResolver()
    resolver.fail_apply = True
    keeper = DnsKeeper(tmp_path, [resolver])
    assert not await keeper.apply(SETTINGS)
    assert [c[0] for c in resolver.calls] == ["apply", "revert"]
    assert keeper.applied is None and not (tmp_path / RECORD_NAME).exists()


async def test_a_link_that_is_gone_gets_nothing(tmp_path: Path) -> None:
    resolver = FakeResolver()
    keeper = DnsKeeper(tmp_path, [resolver])
    gone = DnsSettings("vpnd-no-such0", (DnsServer("10.8.0.1"),))
    assert not await keeper.apply(gone)
    assert resolver.calls == []


async def test_a_restart_takes_back_what_a_killed_run_left(tmp_path: Path) -> None:
    resolver = FakeResolver()
    assert await DnsKeeper(tmp_path, [resolver]).apply(SETTINGS)  # then "killed"
    again = DnsKeeper(tmp_path, [resolver])
    await again.recover()
    assert resolver.links == {} and not (tmp_path / RECORD_NAME).exists()


async def test_a_restart_leaves_a_link_alone_that_is_another_now(tmp_path: Path) -> None:
    resolver = FakeResolver()
    record = {"backend": "systemd-resolved", "link": LINK, "ifindex": 99999}
    (tmp_path / RECORD_NAME).write_text(json.dumps(record))
    await DnsKeeper(tmp_path, [resolver]).recover()
    assert resolver.calls == [] and not (tmp_path / RECORD_NAME).exists()


@pytest.mark.parametrize("text", ["", "{", '{"backend": 1}', '{"link": 2, "ifindex": "x"}'])
async def test_an_unreadable_record_is_dropped(tmp_path: Path, text: str) -> None:
    (tmp_path / RECORD_NAME).write_text(text)
    resolver = FakeResolver()
    await DnsKeeper(tmp_path, [resolver]).recover()
    assert resolver.calls == [] and not (tmp_path / RECORD_NAME).exists()


# --- the manager's flow -------------------------------------------------------------


class DnsWorld(World):
    """The manager's test world with a keeper over a fake resolver."""

    def __init__(self, tmp_path: Path) -> None:
        self.resolver = FakeResolver()
        (tmp_path / "run").mkdir()
        self.keeper = DnsKeeper(tmp_path / "run", [self.resolver])
        super().__init__(tmp_path)

    def new_manager(self) -> Manager:
        manager = super().new_manager()
        manager._dns = self.keeper
        return manager


async def started(world: World, server: Server) -> Connection:
    connection = world.manager.connect(server, "employees", prefer_tcp=False)
    await settled_tunnel(world, connection)
    return connection


PUSHED = PushedDns((DnsServer("10.8.0.1"),), ("corp.example",))


async def test_the_manager_sets_dns_when_up_and_takes_it_back_first_on_disconnect(
    tmp_path: Path,
) -> None:
    world = DnsWorld(tmp_path)
    server = await world.authorized_server()
    connection = world.manager.connect(server, "employees", prefer_tcp=False)
    await settled_tunnel(world, connection)
    tunnel = world.tunnels[-1]
    tunnel.emit(Up("10.8.0.2", link=LINK, dns=PUSHED))
    await until(lambda: connection.dns is not None)
    assert connection.dns == DnsSettings(LINK, PUSHED.servers, ("corp.example",))
    assert "dns_servers" in world.listener.changed_fields(connection)
    stopped_at_revert: list[bool] = []
    original = world.resolver.revert

    async def revert(ifindex: int, link: str) -> None:
        stopped_at_revert.append(tunnel.stopped)
        await original(ifindex, link)

    world.resolver.revert = revert  # type: ignore[method-assign]
    await world.manager.disconnect(connection)
    assert stopped_at_revert == [False]  # taken back while the tunnel still ran
    assert world.resolver.links == {} and connection.dns is None


async def test_a_lost_tunnel_takes_its_dns_along_and_the_next_sets_its_own(
    tmp_path: Path,
) -> None:
    world = DnsWorld(tmp_path)
    server = await world.authorized_server()
    connection = await started(world, server)
    world.tunnels[-1].emit(Up("10.8.0.2", link=LINK, dns=PUSHED))
    await until(lambda: connection.dns is not None)
    world.tunnels[-1].emit(TunnelExited(-9, "killed", requested=False))
    await until(lambda: connection.state is State.RECONNECTING)
    await until(lambda: len(world.tunnels) == 2 and world.tunnels[-1].started)
    assert world.resolver.links == {} and connection.dns is None
    other = PushedDns((DnsServer("10.8.0.9"),))
    world.tunnels[-1].emit(Up("10.8.0.3", link=LINK, dns=other))
    await until(lambda: connection.dns is not None)
    assert [s.servers for s in world.resolver.links.values()] == [other.servers]
    await world.manager.shutdown()
    assert world.resolver.links == {}


async def test_a_tunnel_without_dns_sets_none(tmp_path: Path) -> None:
    world = DnsWorld(tmp_path)
    server = await world.authorized_server()
    connection = await started(world, server)
    world.tunnels[-1].emit(Up("10.8.0.2", link=LINK))
    await asyncio.sleep(0.01)
    assert world.resolver.calls == []
    assert connection.dns is None and world.resolver.links == {}


async def test_profile_dns_from_the_profile_list_is_used(tmp_path: Path) -> None:
    world = DnsWorld(tmp_path)
    server = await world.authorized_server()
    server.profile_dns["employees"] = (True, ("lab.example",))
    connection = await started(world, server)
    world.tunnels[-1].emit(Up("10.8.0.2", link=LINK, dns=PUSHED))
    await until(lambda: connection.dns is not None)
    assert connection.dns is not None
    assert connection.dns.search_domains == ("corp.example", "lab.example")
    assert connection.dns.default_route
    await world.manager.disconnect(connection)
