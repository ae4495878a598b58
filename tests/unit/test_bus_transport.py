"""The bus writer when the bus daemon does not read: it waits, keeps order, loses nothing.

Each test wires a bus object to one end of a socketpair with a small send
buffer, as `connect()` would to a bus daemon's socket, and does not read the
other end until many messages are queued: exactly what a busy dbus-daemon
does to vpnd under a flood.
"""

from __future__ import annotations

import array
import asyncio
import gc
import os
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from dbus_fast import Message
from dbus_fast.aio import message_bus as dbus_fast_aio
from jeepney.low_level import Message as JeepneyMessage
from jeepney.low_level import Parser

from vpnd.bus import transport
from vpnd.bus.transport import PatientMessageBus, PatientWriter

PAYLOAD = "x" * 1000
COUNT = 500  # 500 kB: far more than the socket takes while nobody reads


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    theirs.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    yield ours, theirs
    ours.close()
    theirs.close()


@pytest.fixture
async def lost_futures() -> AsyncIterator[list[dict[str, Any]]]:
    """What the loop says of futures nobody awaited.

    dbus-fast fails the future of the message it was writing when the
    connection breaks, and that future is out of reach when `send()` itself
    raises; it is collected here instead of being logged at a random moment.
    """
    loop = asyncio.get_running_loop()
    reports: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reports.append(context))
    yield reports
    gc.collect()
    loop.set_exception_handler(None)


def wired_bus(
    ours: socket.socket, *, unix_fds: bool = False, stock: bool = False
) -> PatientMessageBus:
    """A bus object connected to `ours` the way connect() leaves it, with either writer."""
    bus = PatientMessageBus(bus_address="unix:path=/nonexistent", negotiate_unix_fd=unix_fds)
    bus._sock = ours
    bus._stream = ours.makefile("rwb", buffering=0)
    bus._fd = ours.fileno()
    bus.unique_name = ":1.42"
    bus._writer = dbus_fast_aio._MessageWriter(bus) if stock else PatientWriter(bus)
    return bus


def numbered(index: int, **extra: Any) -> Message:
    return Message(
        destination=":1.7",
        path="/org/example/Flood",
        interface="org.example.Flood",
        member="Numbered",
        signature=extra.pop("signature", "us"),
        body=extra.pop("body", [index, PAYLOAD]),
        **extra,
    )


async def readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), ready.set_result, None)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


async def drain(theirs: socket.socket, count: int) -> tuple[list[JeepneyMessage], list[int]]:
    """Read until `count` messages arrived; their descriptors too."""
    parser = Parser()
    messages: list[JeepneyMessage] = []
    fds: list[int] = []
    while len(messages) < count:
        await readable(theirs)
        data, ancdata, _flags, _addr = theirs.recvmsg(65536, socket.CMSG_SPACE(4 * 256))
        assert data, "the writer closed the socket"
        received: list[int] = []
        for level, kind, raw in ancdata:
            assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
            received += array.array("i", raw[: len(raw) - len(raw) % 4]).tolist()
        fds += received
        parser.add_data(data, fds=received)
        while (message := parser.get_next_message()) is not None:
            messages.append(message)
    return messages, fds


async def test_a_full_socket_waits_and_every_message_arrives_intact_in_order(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    bus = wired_bus(ours)
    sent = [bus.send(numbered(i)) for i in range(COUNT)]
    # The socket is full: messages wait, and the connection stays.
    assert bus.backlog > 0
    assert bus.connected
    await asyncio.sleep(0)
    assert bus.connected and bus.backlog > 0

    messages, fds = await drain(theirs, COUNT)
    assert [m.body for m in messages] == [(i, PAYLOAD) for i in range(COUNT)]
    serials = [m.header.serial for m in messages]
    assert serials == sorted(serials)
    assert fds == []
    await asyncio.gather(*sent)
    assert bus.backlog == 0 and bus.connected


async def test_the_stock_dbus_fast_writer_hangs_up_in_the_same_situation(
    pair: tuple[socket.socket, socket.socket], lost_futures: list[dict[str, Any]]
) -> None:
    """dbus-fast's own writer (python-dbus-next issue 153): the reason transport.py exists.

    If this fails, dbus-fast retries on EAGAIN itself: delete vpnd.bus.transport.
    """
    ours, _theirs = pair
    bus = wired_bus(ours, stock=True)
    sent: list[asyncio.Future[Any]] = []
    for i in range(COUNT):
        try:
            sent.append(bus.send(numbered(i)))
        except OSError:
            break  # the socket is closed already: it cannot even wait for writability
    assert not bus.connected
    await asyncio.gather(*sent, return_exceptions=True)
    with pytest.raises(BlockingIOError):
        await bus.wait_for_disconnect()


async def test_descriptors_are_kept_for_the_retry_and_sent_once_each(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    bus = wired_bus(ours, unix_fds=True)
    read_end, write_end = os.pipe()
    try:
        count = 200
        sent = [
            bus.send(numbered(i, signature="hus", body=[0, i, PAYLOAD], unix_fds=[read_end]))
            for i in range(count)
        ]
        assert bus.connected and bus.backlog > 0
        messages, fds = await drain(theirs, count)
        await asyncio.gather(*sent)
    finally:
        os.close(read_end)
        os.close(write_end)
    try:
        assert [m.body[1] for m in messages] == list(range(count))
        # One descriptor per message, each a working copy of the pipe's read end.
        assert len(fds) == count
        assert all(os.path.samestat(os.fstat(fd), os.fstat(fds[0])) for fd in fds)
    finally:
        for fd in fds:
            os.close(fd)


class Interrupted:
    """A socket whose first send is interrupted by a signal (EINTR)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.interrupted = False

    def send(self, data: Any) -> int:
        if not self.interrupted:
            self.interrupted = True
            raise InterruptedError
        return self._sock.send(data)

    def sendmsg(self, *args: Any) -> int:
        raise AssertionError("no descriptors here")


async def test_an_interrupted_send_is_tried_again(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    bus = wired_bus(ours)
    writer = bus._writer
    assert isinstance(writer, PatientWriter)
    flaky = Interrupted(ours)
    writer.sock = flaky  # type: ignore[assignment]
    done = bus.send(numbered(1))
    assert flaky.interrupted and bus.connected
    [message], _fds = await drain(theirs, 1)
    await done
    assert message.body == (1, PAYLOAD)


async def test_other_send_errors_still_end_the_connection(
    pair: tuple[socket.socket, socket.socket], lost_futures: list[dict[str, Any]]
) -> None:
    ours, theirs = pair
    bus = wired_bus(ours)
    theirs.close()
    with pytest.raises(OSError):
        # dbus-fast's schedule_write then finds the socket closed.
        bus.send(numbered(1))
    assert not bus.connected
    with pytest.raises(BrokenPipeError):
        await bus.wait_for_disconnect()


def test_the_dbus_fast_internals_the_writer_replaces_are_there() -> None:
    transport.check_dbus_fast()
