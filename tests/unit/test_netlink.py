"""rtnetlink parsing and the way to an address (vpnd.protocols.netlink, vpnd.netwatch)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vpnd.netwatch import NetworkWatch, peer_address
from vpnd.protocols import netlink as nl
from vpnd.protocols.netlink import Done, Failed, Link, NetlinkMalformed, Path, Paths, Route, parse


def attr(kind: int, value: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(value), kind) + value
    return data + b"\0" * (-len(data) % 4)


def message(kind: int, body: bytes, flags: int = 0) -> bytes:
    data = struct.pack("=IHHII", 16 + len(body), kind, flags, 0, 0) + body
    return data + b"\0" * (-len(data) % 4)


def encode_link(link: Link) -> bytes:
    flags = (nl.IFF_UP if link.admin_up else 0) | (nl.IFF_LOWER_UP if link.carrier else 0)
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 1, link.index, flags, 0)
    body += attr(nl.IFLA_IFNAME, link.name.encode() + b"\0")
    if link.kind:
        body += attr(nl.IFLA_LINKINFO, attr(nl.IFLA_INFO_KIND, link.kind.encode() + b"\0"))
    return message(nl.RTM_DELLINK if link.removed else nl.RTM_NEWLINK, body)


def encode_route(route: Route, table_attr: bool = True) -> bytes:
    family = socket.AF_INET if route.destination.version == 4 else socket.AF_INET6
    table = route.table if route.table < 256 else 252
    body = struct.pack(
        "=BBBBBBBBI", family, route.destination.prefixlen, 0, 0, table, 3, 0, nl.RTN_UNICAST, 0
    )
    if route.destination.prefixlen:
        body += attr(nl.RTA_DST, route.destination.network_address.packed)
    if table_attr:
        body += attr(nl.RTA_TABLE, struct.pack("=I", route.table))
    if route.oif:
        body += attr(nl.RTA_OIF, struct.pack("=I", route.oif))
    if route.gateway:
        body += attr(nl.RTA_GATEWAY, ipaddress.ip_address(route.gateway).packed)
    body += attr(nl.RTA_PRIORITY, struct.pack("=I", route.priority))
    kind = nl.RTM_DELROUTE if route.removed else nl.RTM_NEWROUTE
    return message(kind, body, nl.NLM_F_REPLACE if route.replaces else 0)


names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=15)
links = st.builds(
    Link,
    index=st.integers(1, 2**31 - 1),
    name=names,
    kind=st.sampled_from(["", "tun", "veth", "wireguard"]),
    admin_up=st.booleans(),
    carrier=st.booleans(),
    removed=st.booleans(),
)
v4_networks = st.builds(
    lambda a, n: ipaddress.IPv4Network((a, n), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
v6_networks = st.builds(
    lambda a, n: ipaddress.IPv6Network((a, n), strict=False),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)


@st.composite
def routes(draw: st.DrawFn) -> Route:
    destination = draw(st.one_of(v4_networks, v6_networks))
    gateway = ""
    if draw(st.booleans()):
        bits = 32 if destination.version == 4 else 128
        gateway = str(ipaddress.ip_address(draw(st.integers(1, 2**bits - 1)).to_bytes(bits // 8)))
    removed = draw(st.booleans())
    return Route(
        destination=destination,
        oif=draw(st.integers(0, 2**32 - 1)),
        gateway=gateway,
        priority=draw(st.integers(0, 2**32 - 1)),
        table=draw(st.sampled_from([nl.RT_TABLE_MAIN, 255, 100, 1000])),
        removed=removed,
        replaces=not removed and draw(st.booleans()),
    )


@given(st.lists(st.one_of(links, routes()), max_size=8))
def test_messages_round_trip(events: list[Link | Route]) -> None:
    data = b"".join(encode_link(e) if isinstance(e, Link) else encode_route(e) for e in events)
    assert parse(data) == events


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_the_named_error(data: bytes) -> None:
    try:
        events = parse(data)
    except NetlinkMalformed:
        return
    assert all(isinstance(e, Link | Route | Done | Failed) for e in events)


@given(st.lists(st.one_of(links, routes()), min_size=1, max_size=4), st.data())
def test_a_cut_datagram_is_refused(events: list[Link | Route], data: st.DataObject) -> None:
    whole = b"".join(encode_link(e) if isinstance(e, Link) else encode_route(e) for e in events)
    cut = data.draw(st.integers(1, len(whole) - 1))
    try:
        parsed = parse(whole[:cut])
    except NetlinkMalformed:
        return
    # Only a cut right after a whole message parses, and then into what came before it.
    assert parsed == events[: len(parsed)]
    assert len(parsed) < len(events)


def test_done_errors_and_acknowledgements() -> None:
    data = message(nl.NLMSG_DONE, b"\0" * 4)
    data += message(nl.NLMSG_ERROR, struct.pack("=i", -16) + b"\0" * 16)
    data += message(nl.NLMSG_ERROR, struct.pack("=i", 0) + b"\0" * 16)
    data += message(nl.NLMSG_NOOP, b"")
    assert parse(data) == [Done(), Failed(16)]
    with pytest.raises(NetlinkMalformed):
        parse(message(nl.NLMSG_ERROR, b""))


def test_local_and_other_family_routes_are_skipped() -> None:
    local = struct.pack("=BBBBBBBBI", socket.AF_INET, 32, 0, 0, 255, 2, 254, 2, 0)
    bridge = struct.pack("=BBBBBBBBI", 7, 0, 0, 0, 254, 2, 0, nl.RTN_UNICAST, 0)
    assert parse(message(nl.RTM_NEWROUTE, local) + message(nl.RTM_NEWROUTE, bridge)) == []


def test_malformed_route_attributes_are_refused() -> None:
    head = struct.pack("=BBBBBBBBI", socket.AF_INET, 24, 0, 0, 254, 2, 0, nl.RTN_UNICAST, 0)
    for body in (
        head + attr(nl.RTA_DST, b"\1\2\3"),
        head + attr(nl.RTA_GATEWAY, b"\1" * 16),
        head + attr(nl.RTA_OIF, b"\1\2"),
        struct.pack("=BBBBBBBBI", socket.AF_INET, 33, 0, 0, 254, 2, 0, nl.RTN_UNICAST, 0),
        head + struct.pack("=HH", 200, nl.RTA_DST),
        head[:8],
    ):
        with pytest.raises(NetlinkMalformed):
            parse(message(nl.RTM_NEWROUTE, body))


def test_dump_requests() -> None:
    for kind in (nl.RTM_GETLINK, nl.RTM_GETROUTE):
        data = nl.dump_request(kind, 7)
        length, got, flags, seq, _ = struct.unpack_from("=IHHII", data)
        assert (length, got, flags & nl.NLM_F_DUMP, seq) == (len(data), kind, nl.NLM_F_DUMP, 7)
    with pytest.raises(ValueError):
        nl.dump_request(nl.RTM_NEWLINK, 1)


def route(dst: str, oif: int, gateway: str = "", priority: int = 0, **kw: bool) -> Route:
    return Route(ipaddress.ip_network(dst), oif, gateway, priority, nl.RT_TABLE_MAIN, **kw)


def lab_paths() -> Paths:
    paths = Paths()
    paths.apply(Link(2, "eth0", "", True, True))
    paths.apply(Link(3, "wlan0", "", True, True))
    paths.apply(Link(9, "tun0", "tun", True, True))
    paths.apply(route("0.0.0.0/0", 2, "192.0.2.1", 100))
    paths.apply(route("0.0.0.0/0", 3, "198.51.100.1", 600))
    paths.apply(route("192.0.2.0/24", 2))
    paths.apply(route("::/0", 2, "fe80::1", 100))
    return paths


def test_the_way_is_the_longest_prefix_then_the_lowest_metric() -> None:
    paths = lab_paths()
    assert paths.path("203.0.113.5") == Path("eth0", "192.0.2.1", True)
    assert paths.path("192.0.2.77") == Path("eth0", "", True)
    assert paths.path("2001:db8::1") == Path("eth0", "fe80::1", True)
    assert paths.path("not an address") is None
    # Another table (policy routing) is not the main one.
    paths.apply(Route(ipaddress.ip_network("203.0.113.0/24"), 3, "", 0, 100))
    assert paths.path("203.0.113.5") == Path("eth0", "192.0.2.1", True)


def test_tunnels_never_carry_the_way_to_the_server() -> None:
    paths = lab_paths()
    # openvpn's redirect-gateway def1 and its host route to the server.
    paths.apply(route("0.0.0.0/1", 9))
    paths.apply(route("128.0.0.0/1", 9))
    paths.apply(route("203.0.113.5/32", 2, "192.0.2.1"))
    assert paths.path("203.0.113.5") == Path("eth0", "192.0.2.1", True)
    assert paths.path("8.8.8.8") == Path("eth0", "192.0.2.1", True)


def test_link_changes() -> None:
    paths = lab_paths()
    paths.apply(Link(2, "eth0", "", True, False))  # cable out: routes stay, marked down
    assert paths.path("203.0.113.5") == Path("eth0", "192.0.2.1", False)
    paths.apply(Link(2, "eth0", "", False, False))  # set down: the kernel drops its routes
    assert paths.path("203.0.113.5") == Path("wlan0", "198.51.100.1", True)
    paths.apply(Link(2, "eth0", "", True, True))
    assert paths.path("203.0.113.5") == Path("wlan0", "198.51.100.1", True)
    paths.apply(Link(3, "wlan0", "", True, True, removed=True))
    assert paths.path("203.0.113.5") is None
    assert str(Path("eth0", "192.0.2.1", False)) == "via 192.0.2.1 on eth0 (down)"


def test_route_removal_and_replacement() -> None:
    paths = lab_paths()
    paths.apply(route("0.0.0.0/0", 2, "192.0.2.1", 100, removed=True))
    assert paths.path("203.0.113.5") == Path("wlan0", "198.51.100.1", True)
    paths.apply(route("0.0.0.0/0", 3, "198.51.100.254", 600, replaces=True))
    assert paths.path("203.0.113.5") == Path("wlan0", "198.51.100.254", True)


@given(st.lists(st.one_of(links, routes()), max_size=30), st.ip_addresses())
def test_paths_take_any_events(events: list[Link | Route], address: object) -> None:
    paths = Paths()
    for event in events:
        paths.apply(event)
    way = paths.path(str(address))
    assert way is None or isinstance(way, Path)


def test_the_kernels_own_dump_parses() -> None:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    paths = Paths()
    seen = 0
    with sock:
        sock.bind((0, 0))
        for kind in (nl.RTM_GETLINK, nl.RTM_GETROUTE):
            sock.send(nl.dump_request(kind, 1))
            done = False
            while not done:
                for event in parse(sock.recv(1 << 16)):
                    done = done or isinstance(event, Done)
                    assert not isinstance(event, Failed)
                    paths.apply(event)
                    seen += 1
    assert any(link.name == "lo" for link in paths.links.values())
    assert seen > 1


def test_peer_address() -> None:
    assert peer_address("192.0.2.1:1194") == "192.0.2.1"
    assert peer_address("192.0.2.1") == "192.0.2.1"
    assert peer_address("2001:db8::1") == "2001:db8::1"
    assert peer_address("[2001:db8::1]:1194") == "2001:db8::1"
    assert peer_address("2001:db8::1:1194") == "2001:db8::1"  # as the manager writes it
    assert peer_address("") == ""
    assert peer_address("vpn.example.org:1194") == ""


# --- the watcher's decisions, fed datagrams as the kernel sends them ----------------

ETH0 = Link(2, "eth0", "", True, True)
WLAN0 = Link(3, "wlan0", "", True, True)
TUN0 = Link(9, "tun0", "tun", True, True)
DONE = message(nl.NLMSG_DONE, b"\0" * 4)


class Tunnel:
    """What the manager tells the watcher: the server of the tunnel that is up."""

    def __init__(self) -> None:
        self.remote = ""
        self.since = 0.0

    def __call__(self) -> tuple[str, object]:
        return self.remote, self.since


async def fed_watch(tunnel: Tunnel) -> tuple[NetworkWatch, list[str]]:
    changes: list[str] = []
    watch = NetworkWatch(changes.append, tunnel, quiet=0.01)
    assert not watch.ready
    watch.feed(encode_link(ETH0) + encode_link(WLAN0) + DONE)
    assert not watch.ready  # the routes are still to come
    watch.feed(encode_route(route("0.0.0.0/0", 2, "192.0.2.1", 100)) + DONE)
    assert watch.ready
    return watch, changes


async def settle() -> None:
    await asyncio.sleep(0.05)


async def test_a_new_way_to_the_server_is_reported_once_the_changes_settle() -> None:
    tunnel = Tunnel()
    watch, changes = await fed_watch(tunnel)
    tunnel.remote, tunnel.since = "203.0.113.5:1194", 1.0
    # openvpn's own routes through its tun device change nothing.
    watch.feed(encode_link(TUN0) + encode_route(route("0.0.0.0/1", 9)))
    await settle()
    assert changes == []
    # Roaming: the old default route goes, one on another link comes.
    watch.feed(encode_route(route("0.0.0.0/0", 2, "192.0.2.1", 100, removed=True)))
    watch.feed(encode_route(route("0.0.0.0/0", 3, "198.51.100.1", 600)))
    await settle()
    assert changes == [
        "the way to 203.0.113.5 changed from via 192.0.2.1 on eth0 to via 198.51.100.1 on wlan0"
    ]
    watch.feed(encode_link(Link(3, "wlan0", "", True, False)))
    await settle()
    assert changes[-1] == (
        "the way to 203.0.113.5 changed from via 198.51.100.1 on wlan0"
        " to via 198.51.100.1 on wlan0 (down)"
    )
    watch.feed(encode_link(Link(3, "wlan0", "", False, False)))
    await settle()
    assert changes[-1] == (
        "there is no way to 203.0.113.5 any more (it was via 198.51.100.1 on wlan0 (down))"
    )
    watch.close()


async def test_a_change_and_its_undoing_within_the_quiet_time_is_none() -> None:
    tunnel = Tunnel()
    watch, changes = await fed_watch(tunnel)
    tunnel.remote, tunnel.since = "203.0.113.5:1194", 1.0
    watch.feed(encode_route(route("0.0.0.0/0", 2, "192.0.2.1", 100, removed=True)))
    watch.feed(encode_route(route("0.0.0.0/0", 2, "192.0.2.1", 100)))
    await settle()
    assert changes == []


async def test_a_tunnel_made_since_is_compared_from_its_own_start() -> None:
    tunnel = Tunnel()
    watch, changes = await fed_watch(tunnel)
    tunnel.remote, tunnel.since = "203.0.113.5:1194", 1.0
    watch.feed(encode_route(route("0.0.0.0/0", 2, "192.0.2.1", 100, removed=True)))
    watch.feed(encode_route(route("0.0.0.0/0", 3, "198.51.100.1", 600)))
    # A new tunnel came up over the new way before the changes settled:
    # nothing is left to make again.
    tunnel.since = 2.0
    await settle()
    assert changes == []
    # Without a tunnel nothing is compared.
    tunnel.remote = ""
    watch.feed(encode_route(route("0.0.0.0/0", 3, "198.51.100.1", 600, removed=True)))
    await settle()
    assert changes == []


async def test_a_datagram_that_does_not_parse_asks_for_everything_again() -> None:
    tunnel = Tunnel()
    watch, changes = await fed_watch(tunnel)
    tunnel.remote, tunnel.since = "203.0.113.5:1194", 1.0
    watch.feed(b"\xff" * 7)
    assert not watch.ready
    # The new picture differs from the one before it: that is a change.
    watch.feed(encode_link(ETH0) + encode_link(WLAN0) + DONE)
    watch.feed(encode_route(route("0.0.0.0/0", 3, "198.51.100.1", 600)) + DONE)
    await settle()
    assert changes == [
        "the way to 203.0.113.5 changed from via 192.0.2.1 on eth0 to via 198.51.100.1 on wlan0"
    ]
