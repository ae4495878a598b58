"""Network changes, as the kernel announces them over rtnetlink.

When the way to the VPN server changes (another uplink, another gateway, a
new address after a roam, the link gone and back), the tunnel's packets
may no longer reach the server, or come back from an address it does not
know, and openvpn would notice only at its ping timeout (a minute or
more). The watcher tells the manager at once instead (`on_change`), which
makes the tunnel again, as after a wake from sleep.

It listens to link and route changes, keeps the kernel's links and main
routing table (`vpnd.protocols.netlink.Paths`, filled by a dump at start),
and after each burst of changes has been quiet for `quiet` seconds compares
the way to the tunnel's server before and after. Changes that leave that
way as it was (another interface coming and going, vpnd's own tun device
and the routes openvpn adds through it) are not reported. Changes are only
ever compared for the server of the connection that is up at the time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable

from vpnd.protocols import netlink

log = logging.getLogger("vpnd.netwatch")

# A change arrives as several messages (address, then routes; link down
# then up): wait until they stop before comparing.
QUIET = 0.5
MOST = 2.0
_RECEIVE_BUFFER = 1 << 20
_DATAGRAM = 1 << 16


def peer_address(remote: str) -> str:
    """The address in a connection's `remote` ("192.0.2.1:1194", "2001:db8::1",
    "[2001:db8::1]:1194"), or ""."""
    text = remote.strip()
    # With a port first: "2001:db8::1:1194" is also an address, without it.
    for candidate in (text.rpartition(":")[0].strip("[]"), text):
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return ""


class NetworkWatch:
    """Calls `on_change(what)` when the way to the server `tunnel()` names changes."""

    def __init__(
        self,
        on_change: Callable[[str], None],
        tunnel: Callable[[], tuple[str, object]],
        quiet: float = QUIET,
    ) -> None:
        """`tunnel()` is the server's address of the tunnel that is up ("" if none;
        as `peer_address` reads it) and what tells that tunnel from the next one:
        a tunnel made since is compared from its own start, never with the way
        an earlier one took."""
        self._on_change = on_change
        self._tunnel = tunnel
        self._quiet = quiet
        self._paths = netlink.Paths()
        self._socket: socket.socket | None = None
        # The dumps asked for and not yet answered: until then nothing is compared.
        self._dumps: list[int] = [netlink.RTM_GETLINK, netlink.RTM_GETROUTE]
        self._sequence = 0
        self._most = max(quiet, MOST)
        # The tunnel's server, the tunnel, and the way to it as last compared.
        self._before: tuple[str, object, netlink.Path | None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._burst_began = 0.0

    def start(self) -> bool:
        """Start listening; False (and a warning) where the kernel refuses."""
        try:
            sock = socket.socket(
                socket.AF_NETLINK,
                socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                socket.NETLINK_ROUTE,
            )
        except OSError as exc:
            log.warning("cannot follow network changes: %s", exc.strerror or exc)
            return False
        try:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
            sock.bind(
                (0, netlink.RTMGRP_LINK | netlink.RTMGRP_IPV4_ROUTE | netlink.RTMGRP_IPV6_ROUTE)
            )
        except OSError as exc:
            sock.close()
            log.warning("cannot follow network changes: %s", exc.strerror or exc)
            return False
        self._socket = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)
        self._dump_all()
        log.debug("following changes of links and routes")
        return True

    def close(self) -> None:
        """Stop listening."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sock, self._socket = self._socket, None
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()

    @property
    def ready(self) -> bool:
        """Whether the first full picture of links and routes is in."""
        return not self._dumps

    def _dump_all(self) -> None:
        """Ask for every link, then every route (one dump at a time per socket)."""
        self._paths = netlink.Paths()
        self._dumps = [netlink.RTM_GETLINK, netlink.RTM_GETROUTE]
        self._ask_next_dump()

    def _ask_next_dump(self) -> None:
        if not self._dumps or self._socket is None:
            return
        self._sequence += 1
        try:
            self._socket.send(netlink.dump_request(self._dumps[0], self._sequence))
        except OSError as exc:
            log.warning("cannot ask the kernel for its links and routes: %s", exc)
            self._dumps = []

    def _readable(self) -> None:
        sock = self._socket
        while sock is not None:
            try:
                data = sock.recv(_DATAGRAM)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    log.warning("cannot read network changes: %s", exc)
                    return
                # Changes were lost while the daemon was busy: start afresh,
                # and compare the way before with the way once that is in.
                log.info("missed some network changes; reading the whole state again")
                self._note_before()
                self._dump_all()
                continue
            self.feed(data)

    def feed(self, data: bytes) -> None:
        """Take in one datagram from the kernel: changes, or answers to a dump."""
        try:
            events = netlink.parse(data)
        except netlink.NetlinkMalformed as exc:
            log.warning("a network change did not parse (%s); reading the whole state again", exc)
            self._note_before()
            self._dump_all()
            return
        for event in events:
            self._take(event)

    def _take(self, event: netlink.Event) -> None:
        if isinstance(event, netlink.Done | netlink.Failed):
            if isinstance(event, netlink.Failed):
                log.warning(
                    "the kernel refused to list its links or routes (errno %d)", event.errno
                )
            if self._dumps:
                self._dumps.pop(0)
                self._ask_next_dump()
        else:
            self._note_before()
            self._paths.apply(event)
        if self.ready:
            self._settle_soon()

    def _note_before(self) -> None:
        """Take the way to a server seen for the first time as the one to compare
        with: before the change at hand is applied."""
        if not self.ready:
            return
        peer, which = self._current()
        if self._before is None or self._before[:2] != (peer, which):
            self._before = (peer, which, self._paths.path(peer) if peer else None)

    def _current(self) -> tuple[str, object]:
        remote, which = self._tunnel()
        return peer_address(remote), which

    def _settle_soon(self) -> None:
        """Compare once changes have been quiet for `quiet` seconds, but at most
        `most` seconds after the first: other links' changes never stop on a
        busy machine."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._timer is None:
            self._burst_began = now
        else:
            self._timer.cancel()
        when = min(now + self._quiet, self._burst_began + self._most)
        self._timer = loop.call_at(when, self._settled)

    def _settled(self) -> None:
        self._timer = None
        if self._before is None or not self.ready:
            return
        peer, which, old = self._before
        if not peer or self._current() != (peer, which):
            self._before = None  # no tunnel, or another one: its way is taken at the next change
            return
        new = self._paths.path(peer)
        self._before = (peer, which, new)
        if new == old:
            log.debug("links or routes changed; the way to %s did not (%s)", peer, new)
            return
        what = (
            f"the way to {peer} changed from {old or 'none'} to {new or 'none'}"
            if new is not None
            else f"there is no way to {peer} any more (it was {old or 'none'})"
        )
        log.info("network change: %s", what)
        self._on_change(what)
