"""Put a tunnel's DNS on its link, and take it back.

Through systemd-resolved's D-Bus API where resolved runs (per link: name
servers, search and routing-only domains, default route), else through
`resolvconf` (an entry named `<link>.vpnd`). Before anything is set, a
small record in the runtime directory names the link and the way it was
set; it goes once the DNS is taken back. A daemon that starts and finds the
record was killed with DNS set: it takes that DNS back (`recover`), so no
setting is left pointing at a tunnel that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from vpnd.store.atomic import remove_durably, write_atomic

if TYPE_CHECKING:
    from vpnd.protocols.dns import DnsSettings

log = logging.getLogger("vpnd.dns")

RECORD_NAME = "dns.json"
_RESOLVED = "org.freedesktop.resolve1"
_RESOLVED_PATH = "/org/freedesktop/resolve1"
_RESOLVED_MANAGER = "org.freedesktop.resolve1.Manager"
_RESOLVCONF_TIMEOUT = 10.0
_BUS_TIMEOUT = 10.0


class DnsFailed(Exception):
    """A resolver refused or could not be reached; the message says which and why."""


class Backend(Protocol):
    """One way of setting a link's DNS."""

    name: str

    async def available(self) -> bool:
        """Whether this way works on this machine now."""
        ...

    async def apply(self, ifindex: int, settings: DnsSettings) -> None:
        """Set `settings` on the link; DnsFailed if that fails."""
        ...

    async def revert(self, ifindex: int, link: str) -> None:
        """Take back what `apply` set on the link; DnsFailed if that fails."""
        ...


class Resolved:
    """systemd-resolved over the system bus (org.freedesktop.resolve1.Manager)."""

    name = "systemd-resolved"

    def __init__(self, bus_address: str | None = None) -> None:
        self._bus_address = bus_address
        self._bus: MessageBus | None = None

    async def available(self) -> bool:
        try:
            reply = await self._call(
                "NameHasOwner",
                "s",
                _RESOLVED,
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
            )
        except DnsFailed as error:
            log.debug("systemd-resolved: %s", error)
            return False
        return bool(reply.body[0])

    async def apply(self, ifindex: int, settings: DnsSettings) -> None:
        servers = [
            [
                socket.AF_INET if server.family == 4 else socket.AF_INET6,
                ipaddress.ip_address(server.address).packed,
                server.port,
                "",
            ]
            for server in settings.servers
        ]
        try:
            await self._call("SetLinkDNSEx", "ia(iayqs)", ifindex, servers)
        except _UnknownMethod:
            # Before systemd 246: no ports.
            await self._call("SetLinkDNS", "ia(iay)", ifindex, [s[:2] for s in servers])
        domains = [[d, False] for d in settings.search_domains]
        domains += [[d, True] for d in settings.routing_domains]
        if settings.default_route:
            domains.append([".", True])
        await self._call("SetLinkDomains", "ia(sb)", ifindex, domains)
        await self._call("SetLinkDefaultRoute", "ib", ifindex, settings.default_route)

    async def revert(self, ifindex: int, link: str) -> None:
        await self._call("RevertLink", "i", ifindex)

    async def close(self) -> None:
        """Drop the bus connection."""
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    async def _call(
        self,
        member: str,
        signature: str,
        *body: Any,
        destination: str = _RESOLVED,
        path: str = _RESOLVED_PATH,
        interface: str = _RESOLVED_MANAGER,
    ) -> Message:
        bus = await self._connect()
        try:
            async with asyncio.timeout(_BUS_TIMEOUT):
                reply = await bus.call(
                    Message(
                        destination=destination,
                        path=path,
                        interface=interface,
                        member=member,
                        signature=signature,
                        body=list(body),
                    )
                )
        except TimeoutError:
            raise DnsFailed(f"systemd-resolved did not answer {member}") from None
        if reply is None:
            raise DnsFailed(f"systemd-resolved: no reply to {member}")
        if reply.message_type is MessageType.ERROR:
            detail = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            if reply.error_name == "org.freedesktop.DBus.Error.UnknownMethod":
                raise _UnknownMethod(member)
            raise DnsFailed(f"systemd-resolved refused {member}: {reply.error_name} {detail}")
        return reply

    async def _connect(self) -> MessageBus:
        if self._bus is not None and self._bus.connected:
            return self._bus
        try:
            self._bus = await MessageBus(
                bus_address=self._bus_address, bus_type=BusType.SYSTEM
            ).connect()
        except (OSError, ValueError) as error:
            raise DnsFailed(f"cannot reach the system bus: {error}") from None
        return self._bus


class _UnknownMethod(DnsFailed):
    pass


class Resolvconf:
    """The `resolvconf` program (Debian's resolvconf or openresolv)."""

    name = "resolvconf"

    def __init__(self, program: str = "resolvconf") -> None:
        self._program = program

    async def available(self) -> bool:
        return shutil.which(self._program) is not None

    async def apply(self, ifindex: int, settings: DnsSettings) -> None:
        lines = [f"nameserver {server.address}" for server in settings.servers if not server.port]
        if settings.search_domains:
            lines.append("search " + " ".join(settings.search_domains))
        await self._run("-a", _entry(settings.link), "\n".join(lines) + "\n")

    async def revert(self, ifindex: int, link: str) -> None:
        await self._run("-d", _entry(link), "")

    async def _run(self, flag: str, entry: str, text: str) -> None:
        # A run that was started finishes even if its caller is cancelled: a
        # `-d` that follows must never overtake the `-a` before it.
        run = asyncio.ensure_future(self._exec(flag, entry, text))
        try:
            await asyncio.shield(run)
        except asyncio.CancelledError:
            await asyncio.wait({run})
            raise

    async def _exec(self, flag: str, entry: str, text: str) -> None:
        try:
            process = await asyncio.create_subprocess_exec(
                self._program,
                flag,
                entry,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as error:
            raise DnsFailed(f"cannot run {self._program}: {error.strerror}") from None
        try:
            async with asyncio.timeout(_RESOLVCONF_TIMEOUT):
                _, errors = await process.communicate(text.encode())
        except TimeoutError:
            process.kill()
            await process.wait()
            raise DnsFailed(f"{self._program} {flag} {entry} did not finish") from None
        if process.returncode != 0:
            said = errors.decode(errors="replace").strip()[-300:]
            raise DnsFailed(
                f"{self._program} {flag} {entry} failed ({process.returncode})"
                + (f": {said}" if said else "")
            )


def _entry(link: str) -> str:
    # The ".vpnd" suffix keeps vpnd's entry apart from anyone else's for the link.
    return f"{link}.vpnd"


def default_backends() -> list[Backend]:
    """systemd-resolved first, then resolvconf."""
    return [Resolved(), Resolvconf()]


class DnsKeeper:
    """The DNS of the one tunnel vpnd runs: set, taken back, and recovered after a crash."""

    def __init__(self, runtime_dir: Path, backends: Sequence[Backend] | None = None) -> None:
        self._record = runtime_dir / RECORD_NAME
        self._backends = list(backends) if backends is not None else default_backends()
        self._lock = asyncio.Lock()
        #: What is set now, and on which link.
        self.applied: DnsSettings | None = None
        self._ifindex = 0
        self._backend: Backend | None = None

    async def apply(self, settings: DnsSettings) -> bool:
        """Set `settings` on their link (taking back what was set before); True if set.

        A failure is logged, not raised: the tunnel works without its DNS."""
        async with self._lock:
            try:
                ifindex = socket.if_nametoindex(settings.link)
            except OSError:
                await self._revert()
                log.warning("cannot set DNS on %s: the link is gone", settings.link)
                return False
            # The same link the same way is set over (a tunnel that came back),
            # without a moment of no DNS in between; for another link, or when
            # that way is gone, what was set goes first.
            kept = self._backend
            if (
                kept is None
                or self._ifindex != ifindex
                or self.applied is None
                or self.applied.link != settings.link
                or not await kept.available()
            ):
                await self._revert()
            backend = self._backend or await self._choose()
            if backend is None:
                log.warning(
                    "the tunnel's DNS (%s) is not used: neither systemd-resolved nor"
                    " resolvconf is there to set it",
                    settings.describe(),
                )
                return False
            # Written first: a daemon killed halfway still knows what to take back.
            self._write_record(backend.name, settings.link, ifindex)
            self._backend, self._ifindex = backend, ifindex
            try:
                await backend.apply(ifindex, settings)
            except DnsFailed as error:
                log.warning("cannot set the tunnel's DNS on %s: %s", settings.link, error)
                await self._revert()
                return False
            self.applied = settings
            log.info("DNS on %s through %s: %s", settings.link, backend.name, settings.describe())
            return True

    async def revert(self) -> None:
        """Take back what `apply` set, if anything."""
        async with self._lock:
            await self._revert()

    async def recover(self) -> None:
        """At start: take back DNS that a daemon killed earlier left set."""
        try:
            record = json.loads(self._record.read_text())
            backend_name, link, ifindex = record["backend"], record["link"], record["ifindex"]
            if not (isinstance(link, str) and isinstance(ifindex, int)):
                raise ValueError("malformed")
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("ignoring the unreadable DNS record %s: %s", self._record, error)
            self._remove_record()
            return
        backend = next((b for b in self._backends if b.name == backend_name), None)
        if backend is not None and _same_link(link, ifindex, backend):
            try:
                await backend.revert(ifindex, link)
                log.info("took back the DNS an earlier run left on %s", link)
            except DnsFailed as error:
                log.warning("cannot take back the DNS an earlier run left on %s: %s", link, error)
        else:
            log.info("the link %s an earlier run set DNS on is gone, and its DNS with it", link)
        self._remove_record()

    async def _revert(self) -> None:
        backend, settings, ifindex = self._backend, self.applied, self._ifindex
        self._backend, self.applied, self._ifindex = None, None, 0
        if backend is None:
            return
        link = settings.link if settings is not None else self._recorded_link()
        try:
            await backend.revert(ifindex, link)
            log.info("took back the DNS on %s", link)
        except DnsFailed as error:
            # A link that is gone has taken its DNS along (resolved forgets it).
            log.info("taking back the DNS on %s: %s", link, error)
        self._remove_record()

    async def _choose(self) -> Backend | None:
        for backend in self._backends:
            if await backend.available():
                return backend
        return None

    def _recorded_link(self) -> str:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return str(json.loads(self._record.read_text())["link"])
        return ""

    def _write_record(self, backend: str, link: str, ifindex: int) -> None:
        data = {"backend": backend, "link": link, "ifindex": ifindex}
        try:
            write_atomic(self._record, json.dumps(data).encode())
        except OSError as error:
            log.warning("cannot record the DNS set on %s: %s", link, error)

    def _remove_record(self) -> None:
        try:
            remove_durably(self._record)
        except OSError as error:
            log.warning("cannot remove %s: %s", self._record, error)


def _same_link(link: str, ifindex: int, backend: Backend) -> bool:
    """Whether the recorded link is still there (resolved knows links by index)."""
    if backend.name != Resolved.name:
        return True  # resolvconf's entry outlives the link: always taken back
    try:
        return socket.if_nametoindex(link) == ifindex
    except OSError:
        return False
