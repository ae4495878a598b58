"""The DNS a tunnel brings: what the server pushes, read from openvpn's log.

openvpn applies no DNS on Linux by itself; it logs what the server pushed,
at verb 3 and up, one line per part of the reply:

    PUSH: Received control message: 'PUSH_REPLY,dhcp-option DNS 10.0.0.1,push-continuation 2'

A reply too long for one control message comes in parts, each but the last
ending in `push-continuation 2`, the last in `push-continuation 1`. openvpn
logs the part with its auth-token already taken out; this module never
keeps a token anyway, only the options it reads.

Two ways to push DNS are read:

* `dhcp-option DNS addr`, `dhcp-option DNS6 addr`, `dhcp-option DOMAIN name`,
  `dhcp-option DOMAIN-SEARCH name` (every openvpn version);
* openvpn 2.6's `dns server N address addr[:port] ...`,
  `dns server N resolve-domains name ...` and `dns search-domains name ...`.

When both name servers, the `dns server` ones are used (ordered by their
priority N, lowest first), as openvpn 2.6 prefers them; likewise
`dns search-domains` over DOMAIN/DOMAIN-SEARCH. `resolve-domains` become
routing-only domains: names under them go to the tunnel's servers without
being a search suffix.

The tunnel's link name comes from the same log (`TUN/TAP device tun0
opened`), and "Initialization Sequence Completed" says that all of it has
been logged; the OpenVPN tunnel waits for that line before it reports the
tunnel up, so the DNS goes with the `Up` event.

Bad input from the server (an address that is not one, a name that is not
a DNS name, too many of either) raises `PushedDnsRejected` and changes
nothing: the tunnel comes up without DNS rather than with part of it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from vpnd.errors import ServerError

#: At most this many name servers and domains are taken from one reply.
MAX_SERVERS = 32
MAX_DOMAINS = 256

_PUSH_LINE = re.compile(r"PUSH: Received control message: '(PUSH_REPLY,?.*)'\s*")
_DEVICE_LINE = re.compile(
    r"(?:TUN/TAP|DCO) device (\S+) opened|Preserving previous TUN/TAP instance: (\S+)"
)
_COMPLETED = "Initialization Sequence Completed"
_LINK_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,15}")
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_PORTED_V6 = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::([0-9]{1,5}))?")
_PORTED_V4 = re.compile(r"([0-9.]+):([0-9]{1,5})")
_PRIORITY = re.compile(r"-?[0-9]{1,3}")


class PushedDnsRejected(ServerError):
    """The server pushed DNS settings that are malformed; none of them is used."""


@dataclass(frozen=True, order=True)
class DnsServer:
    """One name server: an IPv4 or IPv6 address, and a port (0 for the usual 53)."""

    address: str
    port: int = 0

    @property
    def family(self) -> int:
        """4 or 6."""
        return ipaddress.ip_address(self.address).version

    def __str__(self) -> str:
        if not self.port:
            return self.address
        return (
            f"[{self.address}]:{self.port}"
            if ":" in self.address
            else f"{self.address}:{self.port}"
        )


@dataclass(frozen=True)
class PushedDns:
    """The DNS part of what the server pushed (no link yet)."""

    servers: tuple[DnsServer, ...] = ()
    search_domains: tuple[str, ...] = ()
    routing_domains: tuple[str, ...] = ()
    # redirect-gateway was pushed: every name goes to the tunnel.
    redirect_gateway: bool = False

    def __bool__(self) -> bool:
        return bool(self.servers or self.search_domains or self.routing_domains)


@dataclass(frozen=True)
class DnsSettings:
    """What to set on a tunnel's link, whoever sets it (systemd-resolved, resolvconf)."""

    link: str
    servers: tuple[DnsServer, ...]
    search_domains: tuple[str, ...] = ()
    routing_domains: tuple[str, ...] = ()
    # Every name not claimed by a more specific domain goes to this link:
    # the tunnel carries all traffic, or it has servers but no domains to use them for.
    default_route: bool = False

    @classmethod
    def for_link(
        cls, link: str, pushed: PushedDns, *, full_tunnel: bool, extra_search: tuple[str, ...] = ()
    ) -> DnsSettings:
        """The settings for `link`; `extra_search` are search domains from elsewhere (the
        server's profile list). PushedDnsRejected for a bad link name."""
        if not _LINK_NAME.fullmatch(link):
            raise PushedDnsRejected(f"the tunnel device name {link!r} is not a link name")
        search = _unique(pushed.search_domains + tuple(normal_domain(d) for d in extra_search))
        full = full_tunnel or pushed.redirect_gateway
        default_route = bool(pushed.servers) and (full or not (search or pushed.routing_domains))
        return cls(link, pushed.servers, search, pushed.routing_domains, default_route)

    def describe(self) -> str:
        """For a person and the journal: servers, then domains."""
        parts = [", ".join(str(s) for s in self.servers) or "no name servers"]
        if self.search_domains:
            parts.append("search " + " ".join(self.search_domains))
        if self.routing_domains:
            parts.append("for " + " ".join(self.routing_domains))
        if self.default_route:
            parts.append("for all names")
        return "; ".join(parts)


def normal_domain(text: str) -> str:
    """A DNS name as given, without a trailing dot; PushedDnsRejected if it is none."""
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(p) for p in name.split(".")):
        raise PushedDnsRejected(f"{text[:80]!r} is not a DNS domain name")
    return name


def dns_server(text: str) -> DnsServer:
    """`addr`, `v4:port` or `[v6]:port`; PushedDnsRejected if it is none of these."""
    port = ""
    if match := _PORTED_V6.fullmatch(text):
        address, port = match[1], match[2] or ""
    elif match := _PORTED_V4.fullmatch(text):
        address, port = match[1], match[2]
    else:
        address = text
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise PushedDnsRejected(f"{text[:80]!r} is not a name server address") from None
    number = int(port) if port else 0
    if port and not 1 <= number <= 65535:
        raise PushedDnsRejected(f"{text[:80]!r} names a port out of range")
    return DnsServer(str(ip), 0 if number == 53 else number)


def _unique(items: tuple[str, ...]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return tuple(seen)


@dataclass
class _Collected:
    dhcp_servers: list[DnsServer] = field(default_factory=list)
    dhcp_domains: list[str] = field(default_factory=list)
    dns_servers: dict[int, list[DnsServer]] = field(default_factory=dict)
    resolve_domains: list[str] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    redirect_gateway: bool = False


def parse_push_options(options: list[str]) -> PushedDns:
    """The DNS in a push reply's options (each one `name args...`); others are ignored.

    PushedDnsRejected for a DNS option with a malformed value or for too many."""
    found = _Collected()
    for option in options:
        words = [word.strip('"') for word in option.split()]
        if not words:
            continue
        if words[0] == "redirect-gateway":
            found.redirect_gateway = True
        elif words[0] == "dhcp-option" and len(words) == 3:
            _dhcp_option(found, words[1].upper(), words[2])
        elif words[0] == "dns" and len(words) >= 2:
            _dns_option(found, words[1:])
    if found.dns_servers:
        servers = [s for _, group in sorted(found.dns_servers.items()) for s in group]
    else:
        servers = found.dhcp_servers
    search = found.dns_search or found.dhcp_domains
    unique_servers = tuple(dict.fromkeys(servers))
    if len(unique_servers) > MAX_SERVERS:
        raise PushedDnsRejected(f"the server pushed more than {MAX_SERVERS} name servers")
    domains = _unique(tuple(search)), _unique(tuple(found.resolve_domains))
    if sum(len(d) for d in domains) > MAX_DOMAINS:
        raise PushedDnsRejected(f"the server pushed more than {MAX_DOMAINS} DNS domains")
    return PushedDns(unique_servers, domains[0], domains[1], found.redirect_gateway)


def _dhcp_option(found: _Collected, kind: str, value: str) -> None:
    if kind in ("DNS", "DNS6"):
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise PushedDnsRejected(
                f"dhcp-option {kind} takes an address, not {value[:80]!r}"
            ) from None
        found.dhcp_servers.append(DnsServer(str(address)))
    elif kind in ("DOMAIN", "DOMAIN-SEARCH", "ADAPTER_DOMAIN_SUFFIX"):
        found.dhcp_domains.append(normal_domain(value))


def _dns_option(found: _Collected, words: list[str]) -> None:
    if words[0] == "search-domains":
        found.dns_search += [normal_domain(word) for word in words[1:]]
    elif words[0] == "server" and len(words) >= 4 and _PRIORITY.fullmatch(words[1]):
        priority, key, values = int(words[1]), words[2], words[3:]
        if key == "address":
            # Each address line names the server's addresses anew, as openvpn reads it.
            found.dns_servers[priority] = [dns_server(word) for word in values]
        elif key == "resolve-domains":
            found.resolve_domains += [normal_domain(word) for word in values]
        # exclude-domains, dnssec, transport and sni have no use here.
    elif words[0] == "server":
        raise PushedDnsRejected(f"a `dns server` option is malformed: {' '.join(words)[:80]!r}")


class PushReplyReader:
    """Follows openvpn's log lines: the tunnel device and the last complete push reply.

    `feed` each line's text (without openvpn's time and flags); it returns
    True on the line that ends a (re)connection's set-up. Then `device` and
    `pushed` describe this connection. A reply in parts is read to its last
    part; a reply that begins after a complete one replaces it (a restart).
    """

    def __init__(self) -> None:
        self.device = ""
        self.pushed = PushedDns()
        self._parts: list[str] | None = None  # options of a reply still coming in

    def restart(self) -> None:
        """openvpn starts the connection over: what was pushed is void (the device stays)."""
        self.pushed = PushedDns()
        self._parts = None

    def feed(self, text: str) -> bool:
        """Read one log line; PushedDnsRejected on the last part of a bad reply
        (which then counts as one without DNS)."""
        if text.startswith(_COMPLETED):
            return True
        if match := _DEVICE_LINE.match(text):
            self.device = match[1] or match[2]
            return False
        match = _PUSH_LINE.fullmatch(text)
        if match is None:
            return False
        options = match[1].split(",")[1:]
        parts = self._parts if self._parts is not None else []
        more = False
        for option in options:
            if option.startswith("push-continuation"):
                more = option.split()[1:] == ["2"]
            else:
                parts.append(option)
        if more:
            self._parts = parts
            return False
        self._parts = None
        self.pushed = PushedDns()
        self.pushed = parse_push_options(parts)
        return False
