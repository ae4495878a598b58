"""The D-Bus plumbing of vpnctl: calls, properties and signals, over blocking jeepney.

One `DaemonBus` wraps one connection to the system bus. Signals are caught by
subscriptions made before the call that causes them, queued while other
replies are awaited, and handed out with a deadline. Nothing here knows what
the commands mean; `vpnctl.cli` does.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from jeepney import HeaderFields, Message, MessageType
from jeepney.bus_messages import MatchRule, message_bus
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from jeepney.low_level import Array, DictEntry, MessageFlag, Struct, Variant, parse_signature
from jeepney.wrappers import DBusAddress, new_method_call

from vpnctl.contract import BUS_NAME, PROPERTIES_INTERFACE
from vpnctl.errors import NO_ANSWER_MESSAGE, UNREACHABLE_MESSAGE, BusError, BusUnreachable

# The customary D-Bus method call timeout; vpnd promises to answer well within it.
CALL_TIMEOUT = 25.0
# When polkit may ask the user for a password, a person is typing: vpnd waits
# up to two minutes for polkit, and vpnctl a little longer for vpnd.
INTERACTIVE_CALL_TIMEOUT = 130.0

_BUS_DAEMON = "org.freedesktop.DBus"


class Signal:
    """A signal received from vpnd."""

    __slots__ = ("body", "interface", "member", "path")

    def __init__(self, path: str, interface: str, member: str, body: tuple[Any, ...]) -> None:
        self.path = path
        self.interface = interface
        self.member = member
        self.body = body

    def __repr__(self) -> str:
        return f"Signal({self.path!r}, {self.interface!r}, {self.member!r}, {self.body!r})"


class Subscription:
    """Signals from vpnd that match a rule, queued until taken with `DaemonBus.next_signal`."""

    def __init__(
        self,
        *,
        path: str | None,
        path_namespace: str | None,
        interface: str | None,
        member: str | None,
    ) -> None:
        self.path = path
        self.path_namespace = path_namespace
        self.interface = interface
        self.member = member
        self.queue: deque[Signal] = deque()

    def rule(self) -> str:
        """The match rule that asks the bus to route these signals to us."""
        return str(
            MatchRule(
                type="signal",
                sender=BUS_NAME,
                path=self.path,
                path_namespace=self.path_namespace,
                interface=self.interface,
                member=self.member,
            ).serialise()
        )

    def matches(self, signal: Signal) -> bool:
        """Whether the signal is one this subscription asked for."""
        if self.path is not None and signal.path != self.path:
            return False
        if self.path_namespace is not None and not (
            signal.path == self.path_namespace or signal.path.startswith(self.path_namespace + "/")
        ):
            return False
        if self.interface is not None and signal.interface != self.interface:
            return False
        return self.member is None or signal.member == self.member

    def clear(self) -> None:
        """Drop what is queued: after reading state afresh, older signals would go back in time."""
        self.queue.clear()

    def drop(self, path: str) -> None:
        """Drop what is queued about one object, after reading it afresh; keep the rest."""
        kept = [signal for signal in self.queue if signal.path != path]
        self.queue.clear()
        self.queue.extend(kept)


def plain_values(signature: str, values: Sequence[Any]) -> tuple[Any, ...]:
    """Message values of a signature with every variant replaced by its value.

    jeepney hands a variant over as (signature, value); callers of this module
    get plain Python values: dicts, lists, tuples for structs.
    """
    pending = list(signature)
    types = []
    while pending:
        types.append(parse_signature(pending))
    return tuple(_plain(kind, value) for kind, value in zip(types, values, strict=True))


def _plain(kind: Any, value: Any) -> Any:
    if isinstance(kind, Variant):
        inner_signature, inner = value
        (plain,) = plain_values(inner_signature, (inner,))
        return plain
    if isinstance(kind, Array):
        element = kind.elt_type
        if isinstance(element, DictEntry):
            value_kind = element.fields[1]
            return {key: _plain(value_kind, item) for key, item in value.items()}
        if isinstance(value, bytes):
            return value
        return [_plain(element, item) for item in value]
    if isinstance(kind, Struct):
        return tuple(_plain(field, item) for field, item in zip(kind.fields, value, strict=True))
    return value


class PendingCall:
    """A call to vpnd that was sent, its reply not yet taken: see `DaemonBus.start`."""

    __slots__ = ("serial", "timeout")

    def __init__(self, serial: int, timeout: float) -> None:
        self.serial = serial
        self.timeout = timeout


class DaemonBus:
    """A blocking connection to vpnd on the system bus."""

    def __init__(self, connection: DBusConnection, *, interactive: bool = False) -> None:
        self._connection = connection
        # Whether calls let polkit ask the user to authenticate (a person at a terminal).
        self.interactive = interactive
        self._subscriptions: list[Subscription] = []
        # vpnd's unique name, learned from its replies: signals from anyone else
        # are ignored, and its leaving the bus ends every wait.
        self._daemon: str | None = None
        self._watching_owner = False
        self._daemon_gone = False
        # Replies to calls started and not yet taken, by serial: awaited, or arrived.
        self._awaited: set[int] = set()
        self._replies: dict[int, Message] = {}
        # The bus daemon's replies that subscribe() did not wait for: what each answered.
        self._unchecked: dict[int, str] = {}

    @classmethod
    def open(cls, *, interactive: bool = False) -> DaemonBus:
        """Connect to the system bus (DBUS_SYSTEM_BUS_ADDRESS, or the standard socket).

        With `interactive`, calls to vpnd allow interactive authorization: polkit
        may ask the user for a password through their authentication agent.
        """
        try:
            connection = open_dbus_connection(bus="SYSTEM")
        except (OSError, ValueError, RuntimeError) as error:
            # Missing socket, refused connection, failed authentication, an
            # address with no usable transport: all mean the same to a user.
            raise BusUnreachable(UNREACHABLE_MESSAGE) from error
        return cls(connection, interactive=interactive)

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()

    def __enter__(self) -> DaemonBus:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def call(
        self,
        path: str,
        interface: str,
        method: str,
        signature: str = "",
        *args: Any,
        timeout: float = CALL_TIMEOUT,
        auto_start: bool = True,
    ) -> tuple[Any, ...]:
        """Call a method of vpnd and return its reply's values, variants unwrapped.

        Variant arguments are given as (signature, value). Raises BusError for
        an error reply and BusUnreachable when vpnd does not answer. Without
        `auto_start`, a vpnd that is not running is not started by D-Bus
        activation: the call fails at once instead.
        """
        return self.result(
            self.start(
                path, interface, method, signature, *args, timeout=timeout, auto_start=auto_start
            )
        )

    def start(
        self,
        path: str,
        interface: str,
        method: str,
        signature: str = "",
        *args: Any,
        timeout: float = CALL_TIMEOUT,
        auto_start: bool = True,
    ) -> PendingCall:
        """Send a call as `call` does, without waiting: its reply is kept when it
        comes, while other replies or signals are awaited, until `result` takes it.

        vpnd gets calls in the order they were sent, so one can be sent ahead
        while another is still on its way.
        """
        address = DBusAddress(path, bus_name=BUS_NAME, interface=interface)
        message = new_method_call(address, method, signature or None, args)
        if not auto_start:
            message.header.flags |= MessageFlag.no_auto_start
        if self.interactive:
            message.header.flags |= MessageFlag.allow_interactive_authorization
            timeout = max(timeout, INTERACTIVE_CALL_TIMEOUT)
        serial = self._send(message)
        self._awaited.add(serial)
        return PendingCall(serial, timeout)

    def result(self, pending: PendingCall) -> tuple[Any, ...]:
        """The values of a started call's reply, waiting for it up to the call's timeout.

        Raises what `call` raises.
        """
        try:
            reply = self._wait_for_reply(pending.serial, pending.timeout)
        finally:
            self._awaited.discard(pending.serial)
        self._daemon = reply.header.fields.get(HeaderFields.sender, self._daemon)
        return _plain_body(reply)

    def get(self, path: str, interface: str, name: str) -> Any:
        """One property of an object of vpnd."""
        (value,) = self.call(path, PROPERTIES_INTERFACE, "Get", "ss", interface, name)
        return value

    def get_all(self, path: str, interface: str) -> dict[str, Any]:
        """All properties of an object of vpnd, as plain values."""
        (properties,) = self.call(path, PROPERTIES_INTERFACE, "GetAll", "s", interface)
        return dict(properties)

    def subscribe(
        self,
        *,
        path: str | None = None,
        path_namespace: str | None = None,
        interface: str | None = None,
        member: str | None = None,
    ) -> Subscription:
        """Start queueing vpnd's signals that match; do it before the call that causes them.

        The requests to the bus daemon are sent without waiting for their
        answers: it handles them before any call sent after them, and its
        answers come before the signals they let through. They are checked
        as they come, while the next reply or signal is awaited.
        """
        if self._daemon is None:
            self._send_unchecked("GetNameOwner", "s", BUS_NAME)
        if not self._watching_owner:
            owner_rule = MatchRule(
                type="signal",
                sender=_BUS_DAEMON,
                interface=_BUS_DAEMON,
                member="NameOwnerChanged",
            )
            owner_rule.add_arg_condition(0, BUS_NAME)
            self._send_unchecked("AddMatch", "s", owner_rule.serialise())
            self._watching_owner = True
        subscription = Subscription(
            path=path, path_namespace=path_namespace, interface=interface, member=member
        )
        self._send_unchecked("AddMatch", "s", subscription.rule())
        self._subscriptions.append(subscription)
        return subscription

    def next_signal(self, subscription: Subscription, deadline: float) -> Signal:
        """The next signal for the subscription, waiting until the monotonic deadline.

        Raises TimeoutError when the deadline passes first, and BusUnreachable
        when vpnd leaves the bus or the bus connection breaks.
        """
        while not subscription.queue:
            if self._daemon_gone:
                raise BusUnreachable(
                    "vpnd left the system bus while vpnctl was waiting "
                    "(did it stop or crash? `systemctl status vpnd`)"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self._dispatch(self._receive(remaining))
        return subscription.queue.popleft()

    def _send_unchecked(self, method: str, signature: str, *args: Any) -> None:
        """Send a request to the bus daemon; its answer is checked when it comes."""
        message = new_method_call(message_bus, method, signature, args)
        self._unchecked[self._send(message)] = method

    def _send(self, message: Message) -> int:
        serial: int = next(self._connection.outgoing_serial)
        try:
            self._connection.send(message, serial=serial)
        except OSError as error:
            raise BusUnreachable(UNREACHABLE_MESSAGE) from error
        return serial

    def _wait_for_reply(self, serial: int, timeout: float) -> Message:
        """The reply to the call sent with `serial`; signals and other replies
        that come first are dispatched. Raises BusError for an error reply."""
        incoming = self._replies.pop(serial, None)
        deadline = time.monotonic() + timeout
        while incoming is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BusUnreachable(NO_ANSWER_MESSAGE)
            try:
                message = self._receive(remaining)
            except TimeoutError:
                raise BusUnreachable(NO_ANSWER_MESSAGE) from None
            if message.header.fields.get(HeaderFields.reply_serial) == serial:
                incoming = message
            else:
                self._dispatch(message)
        if incoming.header.message_type is MessageType.error:
            raise _bus_error(incoming)
        return incoming

    def _receive(self, timeout: float) -> Message:
        try:
            return self._connection.receive(timeout=timeout)
        except TimeoutError:
            raise  # an OSError too, but one the caller handles
        except OSError as error:
            raise BusUnreachable("lost the connection to the system bus") from error

    def _dispatch(self, message: Message) -> None:
        """Queue a signal for the subscriptions it matches, keep a reply to a
        started call, check an answer of the bus daemon; drop anything else.

        Raises BusError when the bus daemon refused what subscribe() asked.
        """
        header = message.header
        fields = header.fields
        if header.message_type is not MessageType.signal:
            serial = fields.get(HeaderFields.reply_serial)
            if serial in self._awaited:
                self._replies[serial] = message
                return
            asked = self._unchecked.pop(serial, None)
            if asked is not None and header.message_type is MessageType.error:
                raise _bus_error(message)
            if asked == "GetNameOwner" and self._daemon is None:
                self._daemon = str(message.body[0])
            return
        sender = fields.get(HeaderFields.sender)
        interface = fields.get(HeaderFields.interface, "")
        member = fields.get(HeaderFields.member, "")
        if sender == _BUS_DAEMON:
            if member == "NameOwnerChanged" and message.body[0] == BUS_NAME:
                _name, old_owner, _new_owner = message.body
                if old_owner == self._daemon:
                    self._daemon_gone = True
            return
        if sender != self._daemon:
            return
        signal = Signal(fields.get(HeaderFields.path, ""), interface, member, _plain_body(message))
        for subscription in self._subscriptions:
            if subscription.matches(signal):
                subscription.queue.append(signal)


def _plain_body(message: Message) -> tuple[Any, ...]:
    return plain_values(message.header.fields.get(HeaderFields.signature, ""), message.body)


def _bus_error(reply: Message) -> BusError:
    name = str(
        reply.header.fields.get(HeaderFields.error_name, "org.freedesktop.DBus.Error.Failed")
    )
    body = reply.body
    message = body[0] if body and isinstance(body[0], str) else ""
    return BusError(name, message)
