"""vpnd's bus connection: dbus-fast's, except that a full socket means "wait", not "hang up".

dbus-fast 5.2.0 writes with a non-blocking socket and treats any error from
`send` as fatal, EAGAIN included: when the bus daemon is slow to read (a
flood of callers, a burst of signals), `_MessageWriter.write_callback`
finalizes the connection and vpnd falls off the bus. This is python-dbus-next
issue 153, "Aio write_callback terminates connection upon EAGAIN error
instead of ignoring this error and retrying"
(https://github.com/altdesktop/python-dbus-next/issues/153), still open and
inherited by dbus-fast. `PatientWriter` keeps what it could not send and
waits for the socket to become writable again.

`PatientMessageBus` is the one place the writer is installed: it is dbus-fast's
MessageBus whose stock writer is replaced right after `connect()`. Both rely
on private parts of dbus-fast, which `check_dbus_fast()` verifies before any
connection is made, so an upgrade that moves them fails loudly at start
rather than silently losing the fix. When dbus-fast retries on EAGAIN itself,
delete this module and use `dbus_fast.aio.MessageBus`.
"""

from __future__ import annotations

import array
import asyncio
import logging
import socket
from typing import Any

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.aio import message_bus as _aio

log = logging.getLogger("vpnd.bus")

# What PatientWriter reads and writes of dbus-fast's writer, and what
# MessageBus must offer for the writer to be swapped.
_WRITER_STATE = (
    "messages",
    "negotiate_unix_fd",
    "bus",
    "sock",
    "loop",
    "buf",
    "fd",
    "offset",
    "unix_fds",
    "fut",
)
_WRITER_METHODS = ("write_callback", "schedule_write", "buffer_message")
_BUS_SLOTS = ("_writer", "_loop", "_fd", "_user_disconnect", "_finalize")


class UnsupportedDbusFast(RuntimeError):
    """The installed dbus-fast lacks the internals PatientWriter replaces."""


def check_dbus_fast() -> None:
    """Raise UnsupportedDbusFast unless dbus-fast has the writer this module replaces."""
    writer = getattr(_aio, "_MessageWriter", None)
    problems: list[str] = []
    if writer is None:
        problems.append("dbus_fast.aio.message_bus._MessageWriter is gone")
    else:
        problems += [
            f"_MessageWriter.{m} is gone" for m in _WRITER_METHODS if not hasattr(writer, m)
        ]
    problems += [f"MessageBus.{s} is gone" for s in _BUS_SLOTS if not hasattr(MessageBus, s)]
    if problems:
        raise UnsupportedDbusFast(
            "this dbus-fast cannot be given vpnd's EAGAIN-tolerant writer ("
            + "; ".join(problems)
            + "); check whether dbus-fast now retries on EAGAIN and update vpnd.bus.transport"
        )


def _check_writer_state(writer: object) -> None:
    missing = [name for name in _WRITER_STATE if not hasattr(writer, name)]
    if missing:
        raise UnsupportedDbusFast(
            "dbus-fast's message writer no longer has "
            + ", ".join(missing)
            + "; update vpnd.bus.transport"
        )


def _resolve(future: asyncio.Future[Any] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def _fail(future: asyncio.Future[Any] | None, exc: Exception) -> None:
    if future is not None and not future.done():
        future.set_exception(exc)


class PatientWriter(_aio._MessageWriter):
    """dbus-fast's writer, waiting for writability on EAGAIN/EINTR instead of disconnecting.

    The loop is dbus-fast 5.2.0's `write_callback` with one change: an
    EAGAIN/EWOULDBLOCK or EINTR from `send`/`sendmsg` keeps the unsent
    message (with its file descriptors: a failed `sendmsg` sent none of
    them) and leaves the writer registered with the event loop.
    """

    def __init__(self, bus: MessageBus) -> None:
        super().__init__(bus)
        # Whether the last attempt found the socket full; for the log only.
        self.congested = False

    @property
    def backlog(self) -> int:
        """Messages waiting to be written, the one being written included."""
        return len(self.messages) + (self.buf is not None)

    def write_callback(self, remove_writer: bool = True) -> None:
        sock, fd = self.sock, self.fd
        assert sock is not None and fd is not None, "the writer exists once connected"
        try:
            while True:
                if self.buf is None:
                    if not self.messages:
                        if remove_writer:
                            self.loop.remove_writer(fd)
                        if self.congested:
                            self.congested = False
                            log.debug("the bus took every queued message")
                        return
                    buf, unix_fds, fut = self.messages.popleft()
                    self.unix_fds = unix_fds
                    self.buf = memoryview(buf)
                    self.offset = 0
                    self.fut = fut
                try:
                    if self.unix_fds and self.negotiate_unix_fd:
                        ancdata = [
                            (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", self.unix_fds))
                        ]
                        self.offset += sock.sendmsg([self.buf[self.offset :]], ancdata)
                        # The descriptors went with the first byte; never twice.
                        self.unix_fds = None
                    else:
                        self.offset += sock.send(self.buf[self.offset :])
                except (BlockingIOError, InterruptedError):
                    # The bus daemon has not read what we sent so far: nothing
                    # of this message left (its descriptors neither). Try again
                    # when the socket can take more; the reader keeps running.
                    if not self.congested:
                        self.congested = True
                        log.debug("the bus is not reading; %d messages wait", self.backlog)
                    self.loop.add_writer(fd, self.write_callback)
                    return
                if self.offset < len(self.buf):
                    # Partly sent: the rest when the socket is writable again
                    # (schedule_write registers us when called from there).
                    return
                self.buf = None
                _resolve(self.fut)
        except Exception as exc:
            # Anything else (EPIPE, ECONNRESET, ...) ends this connection, as in dbus-fast.
            if self.bus._user_disconnect:
                _resolve(self.fut)
            else:
                _fail(self.fut, exc)
            self.bus._finalize(exc)


class PatientMessageBus(MessageBus):
    """dbus-fast's asyncio MessageBus writing through a PatientWriter."""

    async def connect(self) -> PatientMessageBus:
        """Connect and authenticate as dbus-fast does, then install the PatientWriter."""
        check_dbus_fast()
        await super().connect()
        stock = self._writer
        try:
            _check_writer_state(stock)
        except UnsupportedDbusFast:
            self.disconnect()
            raise
        assert stock is not None
        patient = PatientWriter(self)
        # Nothing of vpnd's was sent yet, but take over whatever the stock
        # writer holds, and its place in the event loop.
        assert self._fd is not None
        self._loop.remove_writer(self._fd)
        patient.messages = stock.messages
        patient.buf, patient.offset = stock.buf, stock.offset
        patient.unix_fds, patient.fut = stock.unix_fds, stock.fut
        self._writer = patient
        if patient.backlog:
            self._loop.add_writer(self._fd, patient.write_callback)
        return self

    @property
    def backlog(self) -> int:
        """Messages not yet handed to the bus daemon."""
        writer = self._writer
        return writer.backlog if isinstance(writer, PatientWriter) else 0


async def bus_id(bus: MessageBus) -> str:
    """The bus daemon's id (org.freedesktop.DBus.GetId): the same while the daemon runs."""
    reply: Any = await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="GetId",
        )
    )
    if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
        return ""
    return str(reply.body[0])


async def connect(
    bus_address: str | None = None, *, timeout: float | None = None
) -> PatientMessageBus:
    """A PatientMessageBus on the system bus (or `bus_address`).

    `timeout` bounds the whole connect, authentication included: a bus daemon
    that accepts but never answers must not hold a reconnect forever.
    """
    bus = PatientMessageBus(bus_address=bus_address, bus_type=BusType.SYSTEM)
    if timeout is None:
        return await bus.connect()
    async with asyncio.timeout(timeout):
        return await bus.connect()
