"""rtnetlink messages about links and routes, and the path they give to an address.

Pure: bytes in, events out, no socket (`vpnd.netwatch` owns that). The
kernel sends a datagram of netlink messages, each a header

    length (u32) | type (u16) | flags (u16) | sequence (u32) | port id (u32)

followed by a link (`ifinfomsg`) or route (`rtmsg`) body and its attributes
(`rtattr`: length u16, type u16, value, padded to 4 bytes), all in the
machine's byte order. `parse` turns a datagram into `Link` and `Route`
events (and `Done` at the end of a dump); `Paths` keeps what they describe
and answers which way a packet to an address leaves: the route the kernel
would pick in the main table, its link and gateway, and whether the link is
up. That is what a tunnel depends on, and what `vpnd.netwatch` compares
before and after a change.

Links of kind `tun` (vpnd's own tunnels, and any other) never carry the way
to a VPN server, so routes through them are left out.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

_HEADER = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26

NLM_F_REQUEST = 0x1
NLM_F_REPLACE = 0x100  # on a new route: it took the place of one with the same key
NLM_F_DUMP = 0x300

# Multicast groups (bit masks for bind()).
RTMGRP_LINK = 0x1
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_ROUTE = 0x400

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
IFLA_IFNAME = 3
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_TABLE = 15
RT_TABLE_MAIN = 254
RTN_UNICAST = 1

_FAMILIES = {socket.AF_INET: 4, socket.AF_INET6: 16}
TUN_KIND = "tun"


class NetlinkMalformed(ValueError):
    """A netlink datagram does not parse; the message says where."""


@dataclass(frozen=True)
class Link:
    """A network link as a link message describes it (`removed`: RTM_DELLINK)."""

    index: int
    name: str
    kind: str  # "tun", "veth", "" for a plain device
    admin_up: bool  # IFF_UP: configured up
    carrier: bool  # IFF_LOWER_UP: the medium is there
    removed: bool = False


@dataclass(frozen=True)
class Route:
    """A route as a route message describes it (`removed`: RTM_DELROUTE)."""

    destination: ipaddress.IPv4Network | ipaddress.IPv6Network
    oif: int  # the outgoing link's index (0: none named)
    gateway: str  # "" for a route on the link itself
    priority: int
    table: int
    removed: bool = False
    replaces: bool = False  # NLM_F_REPLACE: the route it replaced is gone, unannounced


@dataclass(frozen=True)
class Done:
    """A dump (the answer to `dump_request`) is complete."""


@dataclass(frozen=True)
class Failed:
    """The kernel answered a request with an error (`errno`, positive)."""

    errno: int


Event = Link | Route | Done | Failed


def dump_request(message_type: int, sequence: int) -> bytes:
    """A request for every link (RTM_GETLINK) or route (RTM_GETROUTE), of all families."""
    if message_type == RTM_GETLINK:
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    elif message_type == RTM_GETROUTE:
        body = _RTMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0, 0)
    else:
        raise ValueError(f"no dump of message type {message_type}")
    flags = NLM_F_REQUEST | NLM_F_DUMP
    return _HEADER.pack(_HEADER.size + len(body), message_type, flags, sequence, 0) + body


def _attributes(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    """The attributes in data[offset:end] by type (the last one of a type wins)."""
    found: dict[int, bytes] = {}
    while offset + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size or offset + length > end:
            raise NetlinkMalformed(f"an attribute at byte {offset} has length {length}")
        # The top bits flag nesting and byte order, not the type.
        found[kind & 0x3FFF] = data[offset + _RTATTR.size : offset + length]
        offset += (length + 3) & ~3
    return found


def _text(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode("utf-8", "replace")


def _link(data: bytes, offset: int, end: int, removed: bool) -> Link:
    if offset + _IFINFOMSG.size > end:
        raise NetlinkMalformed("a link message is shorter than its header")
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(data, offset)
    attrs = _attributes(data, offset + _IFINFOMSG.size, end)
    kind = ""
    if IFLA_LINKINFO in attrs:
        info = attrs[IFLA_LINKINFO]
        kind = _text(_attributes(info, 0, len(info)).get(IFLA_INFO_KIND, b""))
    return Link(
        index=index,
        name=_text(attrs.get(IFLA_IFNAME, b"")),
        kind=kind,
        admin_up=bool(flags & IFF_UP),
        carrier=bool(flags & IFF_LOWER_UP),
        removed=removed,
    )


def _route(data: bytes, offset: int, end: int, removed: bool, replaces: bool) -> Route | None:
    if offset + _RTMSG.size > end:
        raise NetlinkMalformed("a route message is shorter than its header")
    family, dst_len, _src, _tos, table, _proto, _scope, kind, _flags = _RTMSG.unpack_from(
        data, offset
    )
    size = _FAMILIES.get(family)
    if size is None or kind != RTN_UNICAST:
        return None  # local, broadcast, multicast or another family: no way out
    if dst_len > size * 8:
        raise NetlinkMalformed(f"a route's prefix length {dst_len} is too long")
    attrs = _attributes(data, offset + _RTMSG.size, end)
    dst = attrs.get(RTA_DST, bytes(size))
    if len(dst) != size:
        raise NetlinkMalformed(f"a route's destination has {len(dst)} bytes")
    gateway = attrs.get(RTA_GATEWAY, b"")
    if gateway and len(gateway) != size:
        raise NetlinkMalformed(f"a route's gateway has {len(gateway)} bytes")

    def number(attr: int, default: int) -> int:
        value = attrs.get(attr)
        if value is None:
            return default
        if len(value) != _U32.size:
            raise NetlinkMalformed(f"route attribute {attr} has {len(value)} bytes")
        return int(_U32.unpack(value)[0])

    try:
        destination = ipaddress.ip_network((dst, dst_len), strict=False)
    except ValueError as exc:
        raise NetlinkMalformed(f"a route's destination does not parse ({exc})") from None
    return Route(
        destination=destination,
        oif=number(RTA_OIF, 0),
        gateway=str(ipaddress.ip_address(gateway)) if gateway else "",
        priority=number(RTA_PRIORITY, 0),
        table=number(RTA_TABLE, table),
        removed=removed,
        replaces=replaces,
    )


def parse(data: bytes) -> list[Event]:
    """The events in one datagram; NetlinkMalformed if it does not parse (then
    none of it counts: the caller asks for the whole state again)."""
    events: list[Event] = []
    offset = 0
    while offset < len(data):
        if offset + _HEADER.size > len(data):
            raise NetlinkMalformed(f"{len(data) - offset} bytes left over after the last message")
        length, kind, flags, _seq, _port = _HEADER.unpack_from(data, offset)
        end = offset + length
        if length < _HEADER.size or end > len(data):
            raise NetlinkMalformed(f"a message at byte {offset} has length {length}")
        body = offset + _HEADER.size
        if kind in (RTM_NEWLINK, RTM_DELLINK):
            events.append(_link(data, body, end, kind == RTM_DELLINK))
        elif kind in (RTM_NEWROUTE, RTM_DELROUTE):
            replaces = kind == RTM_NEWROUTE and bool(flags & NLM_F_REPLACE)
            route = _route(data, body, end, kind == RTM_DELROUTE, replaces)
            if route is not None:
                events.append(route)
        elif kind == NLMSG_DONE:
            events.append(Done())
        elif kind == NLMSG_ERROR:
            if body + 4 > end:
                raise NetlinkMalformed("an error message has no error number")
            code = struct.unpack_from("=i", data, body)[0]
            if code:  # 0 is an acknowledgement
                events.append(Failed(-code))
        # NOOP, OVERRUN and types not asked for carry nothing for us.
        offset += (length + 3) & ~3
    return events


@dataclass(frozen=True)
class Path:
    """How packets to an address leave: the link, the next hop, whether the link is up."""

    link: str
    gateway: str
    up: bool

    def __str__(self) -> str:
        via = f"via {self.gateway} " if self.gateway else ""
        return f"{via}on {self.link}" + ("" if self.up else " (down)")


# (IP version, priority, destination, link, gateway)
_RouteKey = tuple[int, int, str, int, str]


class Paths:
    """The links and main-table routes that events describe."""

    def __init__(self) -> None:
        self.links: dict[int, Link] = {}
        self._routes: dict[_RouteKey, Route] = {}

    def apply(self, event: Event) -> None:
        """Take one event in."""
        if isinstance(event, Link):
            self._apply_link(event)
        elif isinstance(event, Route) and event.table == RT_TABLE_MAIN:
            where = (event.destination.version, event.priority, str(event.destination))
            if event.replaces:
                self._routes = {k: r for k, r in self._routes.items() if k[:3] != where}
            key = (*where, event.oif, event.gateway)
            if event.removed:
                self._routes.pop(key, None)
            else:
                self._routes[key] = event

    def _apply_link(self, link: Link) -> None:
        old = self.links.get(link.index)
        if link.removed:
            self.links.pop(link.index, None)
        else:
            self.links[link.index] = link
        if link.removed or (old is not None and old.admin_up and not link.admin_up):
            # The kernel drops the routes of a link that goes away or down,
            # without a message for each (IPv4 sends none).
            self._routes = {k: r for k, r in self._routes.items() if r.oif != link.index}

    def path(self, address: str) -> Path | None:
        """The way to `address` (None: no route, or not an address)."""
        try:
            target = ipaddress.ip_address(address)
        except ValueError:
            return None
        best: Route | None = None
        for route in self._routes.values():
            if route.destination.version != target.version or target not in route.destination:
                continue
            link = self.links.get(route.oif)
            if link is not None and link.kind == TUN_KIND:
                continue
            if best is None or (-route.destination.prefixlen, route.priority) < (
                -best.destination.prefixlen,
                best.priority,
            ):
                best = route
        if best is None:
            return None
        link = self.links.get(best.oif)
        name = link.name if link is not None else f"link {best.oif}"
        up = link is None or (link.admin_up and link.carrier)
        return Path(name, best.gateway, up)
