"""`vpnctl monitor [--notify]`: follow vpnd's signals and tell the person what needs them.

The decisions (which change makes which notice, what an action does) are in
`vpnctl.notify`; this module is their I/O: the system bus (vpnd), the
session bus (the desktop's notification server, org.freedesktop.Notifications)
and the programs an action starts. Nothing is polled: the loop sleeps in one
select() on both bus sockets.

vpnd is followed as `status --watch` follows it: the root object's
ActiveConnection says which connection to follow, its PropertiesChanged,
StateChanged and SessionExpiring signals say what happens. vpnd is never
started for this (a desktop session starting should not start the daemon):
while it is not on the bus the monitor waits for it, and when it leaves the
monitor waits for it to come back.

With --notify, each notice is a notification of the standard interface;
a later notice for the same connection replaces it (replaces_id), and its
action (ActionInvoked) renews the session, opens a terminal to answer a
question, or opens the login page. One monitor per desktop session: it
owns the session bus name org.vpnd.Monitor, and a second one leaves.
Every notice is also printed as a line, which is all `vpnctl monitor`
without --notify does.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from collections import deque
from typing import IO, TYPE_CHECKING, Any

from jeepney import HeaderFields, Message, MessageType
from jeepney.bus_messages import MatchRule, message_bus
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from jeepney.low_level import MessageFlag
from jeepney.wrappers import DBusAddress, new_method_call

from vpnctl import notify
from vpnctl.bus import CALL_TIMEOUT, INTERACTIVE_CALL_TIMEOUT, plain_values
from vpnctl.contract import (
    BUS_NAME,
    CONNECTION_INTERFACE,
    MANAGER_INTERFACE,
    MANAGER_PATH,
    PROPERTIES_INTERFACE,
    SERVER_INTERFACE,
    TERMINAL_STATES,
)
from vpnctl.errors import EXIT_INTERRUPTED, EXIT_OK, BusError, BusUnreachable

if TYPE_CHECKING:
    from vpnctl.bus import DaemonBus

NOTIFICATIONS_NAME = "org.freedesktop.Notifications"
NOTIFICATIONS_PATH = "/org/freedesktop/Notifications"
NOTIFICATIONS_INTERFACE = "org.freedesktop.Notifications"
# The session bus name that keeps a desktop session to one notifying monitor.
MONITOR_NAME = "org.vpnd.Monitor"
APP_NAME = "vpnd"
APP_ICON = "network-vpn"
# The desktop entry of the autostart file (data/xdg/autostart), for servers that use it.
DESKTOP_ENTRY = "vpnd-notify"

_BUS_DAEMON = "org.freedesktop.DBus"
_UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"
# RequestName: fail rather than queue; the answer that means the name is ours.
_DO_NOT_QUEUE = 4
_PRIMARY_OWNER = 1


class _Link:
    """One blocking bus connection: calls that wait for their reply, and the
    signals that arrive meanwhile, queued for the loop."""

    def __init__(self, connection: DBusConnection, name: str) -> None:
        self.connection = connection
        self.name = name  # "system bus" / "session bus", for messages
        self.signals: deque[Message] = deque()

    def fileno(self) -> int:
        return int(self.connection.sock.fileno())

    def call(self, message: Message, timeout: float = CALL_TIMEOUT) -> tuple[Any, ...]:
        """Send a method call and return its reply's values, variants unwrapped."""
        serial = next(self.connection.outgoing_serial)
        try:
            self.connection.send(message, serial=serial)
        except OSError as error:
            raise BusUnreachable(f"lost the connection to the {self.name}") from error
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                incoming = self._receive(remaining)
            except TimeoutError:
                raise BusError(
                    "org.freedesktop.DBus.Error.NoReply", f"no answer on the {self.name}"
                ) from None
            header = incoming.header
            if header.fields.get(HeaderFields.reply_serial) != serial:
                if header.message_type is MessageType.signal:
                    self.signals.append(incoming)
                continue
            values = plain_values(header.fields.get(HeaderFields.signature, ""), incoming.body)
            if header.message_type is MessageType.error:
                text = values[0] if values and isinstance(values[0], str) else ""
                raise BusError(str(header.fields.get(HeaderFields.error_name, "")), text)
            return values

    def bus(self, method: str, signature: str, *args: Any) -> tuple[Any, ...]:
        """Call the bus daemon itself."""
        return self.call(new_method_call(message_bus, method, signature, args))

    def read_available(self) -> None:
        """Queue every signal that can be read now, without waiting."""
        while True:
            try:
                message = self._receive(0)
            except TimeoutError:
                return
            if message.header.message_type is MessageType.signal:
                self.signals.append(message)

    def _receive(self, timeout: float) -> Message:
        try:
            return self.connection.receive(timeout=timeout)
        except TimeoutError:
            raise
        except OSError as error:
            raise BusUnreachable(f"lost the connection to the {self.name}") from error


def _body(message: Message) -> tuple[Any, ...]:
    return plain_values(message.header.fields.get(HeaderFields.signature, ""), message.body)


class _Desktop:
    """The notification server on the session bus."""

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.actions = False
        self._ids: dict[str, int] = {}  # connection → notification id
        self._connections: dict[int, str] = {}  # notification id → connection

    def start(self) -> bool:
        """Own the monitor's name and listen to the notification server; False when
        another monitor owns the name already."""
        (answer,) = self.link.bus("RequestName", "su", MONITOR_NAME, _DO_NOT_QUEUE)
        if answer != _PRIMARY_OWNER:
            return False
        rule = MatchRule(type="signal", interface=NOTIFICATIONS_INTERFACE, path=NOTIFICATIONS_PATH)
        self.link.bus("AddMatch", "s", rule.serialise())
        try:
            (capabilities,) = self._call("GetCapabilities", "")
            self.actions = "actions" in capabilities
        except BusError:
            # Asked again with the first notice; the server may start later.
            self.actions = True
        return True

    def _call(self, method: str, signature: str, *args: Any) -> tuple[Any, ...]:
        address = DBusAddress(
            NOTIFICATIONS_PATH, bus_name=NOTIFICATIONS_NAME, interface=NOTIFICATIONS_INTERFACE
        )
        return self.link.call(new_method_call(address, method, signature or None, args))

    def show(self, notice: notify.Notice) -> None:
        """Show the notice, in place of the connection's notice if it has one."""
        actions = [notice.action.key, notice.action.label] if notice.action and self.actions else []
        hints = {
            "urgency": ("y", notice.urgency),
            "category": ("s", "network"),
            "desktop-entry": ("s", DESKTOP_ENTRY),
        }
        (notification,) = self._call(
            "Notify",
            "susssasa{sv}i",
            APP_NAME,
            self._ids.get(notice.connection, 0),
            APP_ICON,
            notice.summary,
            notice.body,
            actions,
            hints,
            0 if notice.sticky else -1,
        )
        old = self._ids.get(notice.connection)
        if old is not None and old != notification:
            self._connections.pop(old, None)
        self._ids[notice.connection] = int(notification)
        self._connections[int(notification)] = notice.connection

    def withdraw(self, connection: str) -> None:
        """Take the connection's notice away."""
        notification = self._ids.pop(connection, None)
        if notification is not None:
            self._connections.pop(notification, None)
            self._call("CloseNotification", "u", notification)

    def forget(self) -> None:
        """Forget which notification is about which connection (vpnd left); they stay shown."""
        self._ids.clear()
        self._connections.clear()

    def closed(self, notification: int) -> str | None:
        """The connection whose notice the server closed, if it was one of ours."""
        connection = self._connections.pop(notification, None)
        if connection is not None and self._ids.get(connection) == notification:
            del self._ids[connection]
        return connection

    def connection(self, notification: int) -> str | None:
        """The connection a notification of ours is about."""
        return self._connections.get(notification)


class Monitor:
    """Follows vpnd and carries out what `vpnctl.notify` decides."""

    def __init__(self, system: _Link, desktop: _Desktop | None, out: IO[str]) -> None:
        self.system = system
        self.desktop = desktop
        self.out = out
        self.shown = notify.Shown()
        self._owner: str | None = None
        self._active = "/"
        self._properties: dict[str, Any] | None = None
        # The last view of every connection with a notice, for its actions.
        self._views: dict[str, notify.View] = {}
        self._kinds: dict[str, str] = {}
        # Servers renewed after their session ended: the profile to connect
        # again once the login succeeds (vpnd reconnects only a live one).
        self._reconnect: dict[str, str] = {}
        self._children: list[subprocess.Popen[bytes]] = []

    # --- vpnd ------------------------------------------------------------

    def start(self) -> None:
        """Listen to vpnd (and to its coming and going), then read where it is."""
        owner_rule = MatchRule(
            type="signal", sender=_BUS_DAEMON, interface=_BUS_DAEMON, member="NameOwnerChanged"
        )
        owner_rule.add_arg_condition(0, BUS_NAME)
        self.system.bus("AddMatch", "s", owner_rule.serialise())
        rule = MatchRule(type="signal", sender=BUS_NAME, path_namespace=MANAGER_PATH)
        self.system.bus("AddMatch", "s", rule.serialise())
        try:
            (owner,) = self.system.bus("GetNameOwner", "s", BUS_NAME)
        except BusError:
            self.say("vpnd is not running; waiting for it")
            return
        self._attach(str(owner))

    def _vpnd(
        self, path: str, interface: str, method: str, signature: str = "", *args: Any
    ) -> tuple[Any, ...]:
        address = DBusAddress(path, bus_name=BUS_NAME, interface=interface)
        message = new_method_call(address, method, signature or None, args)
        message.header.flags |= MessageFlag.no_auto_start
        return self.system.call(message)

    def _get(self, path: str, interface: str, name: str) -> Any:
        (value,) = self._vpnd(path, PROPERTIES_INTERFACE, "Get", "ss", interface, name)
        return value

    def _get_all(self, path: str) -> dict[str, Any]:
        (properties,) = self._vpnd(path, PROPERTIES_INTERFACE, "GetAll", "s", CONNECTION_INTERFACE)
        return dict(properties)

    def _attach(self, owner: str) -> None:
        """vpnd is (again) on the bus: follow its active connection as found now.
        The call also tells vpnd to send us its signals."""
        self._owner = owner
        try:
            path = self._get(MANAGER_PATH, MANAGER_INTERFACE, "ActiveConnection")
        except BusError as error:
            self.say(f"cannot read vpnd's active connection: {error.message or error.name}")
            return
        self._drop_queued(MANAGER_PATH)
        self._follow(str(path), first=True)
        if self._properties is None:
            self.say("following vpnd: no connection")
        else:
            self.say(f"following vpnd: {self._active} is {self._properties.get('State', '')}")

    def _follow(self, path: str, *, first: bool) -> None:
        self._active, self._properties = path, None
        if path == "/":
            return
        try:
            properties = self._get_all(path)
        except BusError as error:
            if error.name != _UNKNOWN_OBJECT:
                self.say(f"cannot read {path}: {error.message or error.name}")
            return  # gone already: the root object's move to the next one is on its way
        self._drop_queued(path)
        self._properties = properties
        view = self._view()
        now = time.time()
        if first:
            self.carry_out(view, notify.on_start(view, now))
        else:
            self.carry_out(view, notify.on_change(notify.View(path), view, now))

    def _view(self) -> notify.View:
        assert self._properties is not None
        server = str(self._properties.get("Server", ""))
        return notify.View.read(self._active, self._properties, self._kind(server))

    def _kind(self, server: str) -> str:
        if not server or server == "/":
            return ""
        if server not in self._kinds:
            try:
                kind = self._get(server, SERVER_INTERFACE, "Kind")
            except BusError:
                return ""
            self._kinds[server] = str(kind)
        return self._kinds[server]

    def _drop_queued(self, path: str) -> None:
        """Drop the property changes of an object queued before it was read afresh
        (they are older than what was read); keep everything else."""

        def older(message: Message) -> bool:
            fields = message.header.fields
            return bool(fields.get(HeaderFields.path) == path) and (
                bool(fields.get(HeaderFields.interface) == PROPERTIES_INTERFACE)
                or bool(fields.get(HeaderFields.member) == "StateChanged")
            )

        kept = [message for message in self.system.signals if not older(message)]
        self.system.signals.clear()
        self.system.signals.extend(kept)

    def system_signal(self, message: Message) -> None:
        """One signal from the system bus."""
        fields = message.header.fields
        sender = fields.get(HeaderFields.sender)
        path = str(fields.get(HeaderFields.path, ""))
        interface = str(fields.get(HeaderFields.interface, ""))
        member = str(fields.get(HeaderFields.member, ""))
        body = _body(message)
        if sender == _BUS_DAEMON:
            if member == "NameOwnerChanged" and body[0] == BUS_NAME:
                _name, _old, new = body
                self._owner, self._active, self._properties = None, "/", None
                # A new vpnd numbers its connections afresh: what was shown
                # is about objects that are gone.
                self.shown = notify.Shown()
                self._views.clear()
                self._kinds.clear()
                self._reconnect.clear()
                if self.desktop is not None:
                    self.desktop.forget()
                if new:
                    self._attach(str(new))
            return
        if sender != self._owner:
            return
        if path == MANAGER_PATH:
            moved = _new_active_path(interface, member, body)
            if moved is not None and moved != self._active:
                self._follow(moved, first=False)
            return
        if interface == SERVER_INTERFACE and member == "AuthorizationFinished":
            self._authorization_finished(path, bool(body[0]))
            return
        if path != self._active or self._properties is None:
            return
        if interface == CONNECTION_INTERFACE and member == "SessionExpiring":
            seconds_left, expiry = int(body[0]), int(body[1])
            self._properties["SessionExpiry"] = expiry
            view = self._view()
            self.carry_out(view, notify.expiring(view, seconds_left, time.time()))
            return
        from vpnctl.cli import connection_changes

        changes = connection_changes(interface, member, body)
        if changes is None:
            return
        before = self._view()
        if changes:
            self._properties.update(changes)
        else:
            try:
                properties = self._get_all(path)
            except BusError:
                return
            self._properties = properties
        after = self._view()
        self.carry_out(after, notify.on_change(before, after, time.time()))

    def _authorization_finished(self, server: str, success: bool) -> None:
        """A renewal after the session ended: connect again once the login is done."""
        profile = self._reconnect.pop(server, None)
        if profile is None or not success:
            return
        try:
            self._vpnd(server, SERVER_INTERFACE, "Connect", "sa{sv}", profile, {})
        except BusError as error:
            self.say(f"cannot connect again: {error.message or error.name}")
            return
        self.say(f"renewed; connecting again with profile {profile}")

    # --- notices and actions -----------------------------------------------

    def carry_out(self, view: notify.View, decision: notify.Decision) -> None:
        """Show or withdraw a notice, unless it is already so."""
        decision = self.shown.decide(decision)
        if decision is None:
            return
        if isinstance(decision, notify.Notice):
            self._views[view.path] = view
            self.say(decision.line())
            if self.desktop is not None:
                try:
                    self.desktop.show(decision)
                except BusError as error:
                    self.say(f"no notification shown: {error.message or error.name}")
        else:
            if self.desktop is not None:
                try:
                    self.desktop.withdraw(decision.connection)
                except BusError as error:
                    self.say(f"no notification withdrawn: {error.message or error.name}")

    def desktop_signal(self, message: Message) -> None:
        """One signal from the session bus: an action invoked, a notification closed."""
        if self.desktop is None:
            return
        fields = message.header.fields
        if fields.get(HeaderFields.interface) != NOTIFICATIONS_INTERFACE:
            return
        member = fields.get(HeaderFields.member)
        body = _body(message)
        if member == "ActionInvoked":
            connection = self.desktop.connection(int(body[0]))
            if connection is not None:
                self.act(connection, str(body[1]))
        elif member == "NotificationClosed":
            connection = self.desktop.closed(int(body[0]))
            if connection is not None:
                self.shown.closed(connection)

    def act(self, connection: str, key: str) -> None:
        """Carry out the action `key` of the connection's notice."""
        view = self._views.get(connection)
        if connection == self._active and self._properties is not None:
            view = self._view()
        if view is None:
            return
        command = notify.command(key, view)
        if command is None:
            self.say(f"action {key}: nothing to do any more")
            return
        if isinstance(command, notify.Run):
            self.run(command)
            return
        try:
            (url,) = self._renew(command.server)
        except BusError as error:
            self.carry_out(view, notify.renew_failed(view, error.message or error.name))
            return
        if view.state in TERMINAL_STATES and view.profile:
            self._reconnect[command.server] = view.profile
        self.say(f"action renew: log in at {url}")
        self.run(notify.open_page(str(url)))

    def _renew(self, server: str) -> tuple[Any, ...]:
        address = DBusAddress(server, bus_name=BUS_NAME, interface=SERVER_INTERFACE)
        message = new_method_call(address, "Renew")
        # A person clicked: polkit may ask them through their desktop's agent.
        message.header.flags |= (
            MessageFlag.no_auto_start | MessageFlag.allow_interactive_authorization
        )
        return self.system.call(message, INTERACTIVE_CALL_TIMEOUT)

    def run(self, command: notify.Run) -> None:
        """Start a program for the person, detached from the monitor."""
        try:
            child = subprocess.Popen(
                command.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as error:
            self.say(f"cannot start {command.argv[0]}: {error.strerror or error}")
            return
        self._children.append(child)
        self.say("started " + " ".join(command.argv))

    def reap(self) -> None:
        """Collect the programs that ended, so that none is left a zombie."""
        self._children = [child for child in self._children if child.poll() is None]

    def say(self, text: str) -> None:
        """A line of the monitor's log: local time and text."""
        self.out.write(time.strftime("%H:%M:%S") + "  " + text + "\n")
        self.out.flush()

    # --- the loop --------------------------------------------------------------

    def run_forever(self) -> None:
        """Handle signals as they come, until the process is stopped."""
        links = [self.system] + ([self.desktop.link] if self.desktop is not None else [])
        with selectors.DefaultSelector() as selector:
            for link in links:
                selector.register(link.fileno(), selectors.EVENT_READ, link)
            while True:
                self.reap()
                while self.system.signals or (
                    self.desktop is not None and self.desktop.link.signals
                ):
                    if self.system.signals:
                        self.system_signal(self.system.signals.popleft())
                    elif self.desktop is not None:
                        self.desktop_signal(self.desktop.link.signals.popleft())
                for key, _events in selector.select():
                    link = key.data
                    assert isinstance(link, _Link)
                    link.read_available()


def _new_active_path(interface: str, member: str, body: tuple[Any, ...]) -> str | None:
    """Where a root PropertiesChanged moves ActiveConnection; None when it does not."""
    if interface != PROPERTIES_INTERFACE or member != "PropertiesChanged":
        return None
    changed_interface, changed, _invalidated = body
    if changed_interface != MANAGER_INTERFACE or "ActiveConnection" not in changed:
        return None
    return str(changed["ActiveConnection"])


def _session_bus() -> DBusConnection:
    """The desktop session's bus: DBUS_SESSION_BUS_ADDRESS, else $XDG_RUNTIME_DIR/bus."""
    address = os.environ.get("DBUS_SESSION_BUS_ADDRESS", "")
    if not address:
        runtime = os.environ.get("XDG_RUNTIME_DIR", "")
        if runtime and os.path.exists(os.path.join(runtime, "bus")):
            address = "unix:path=" + os.path.join(runtime, "bus")
    if not address:
        raise BusUnreachable(
            "no desktop session bus (DBUS_SESSION_BUS_ADDRESS is not set); "
            "--notify runs inside a desktop session"
        )
    try:
        return open_dbus_connection(address)
    except (OSError, ValueError, RuntimeError) as error:
        raise BusUnreachable(f"cannot connect to the session bus at {address}") from error


def monitor(bus: DaemonBus, out: IO[str], *, notify_desktop: bool) -> int:
    """Follow vpnd until Ctrl-C (exit 130, quietly); with `notify_desktop`, also as
    desktop notifications. Raises BusUnreachable when a bus connection breaks."""
    # The command's own connection to the system bus, driven here directly.
    system = _Link(bus._connection, "system bus")
    desktop = None
    if notify_desktop:
        desktop = _Desktop(_Link(_session_bus(), "session bus"))
        if not desktop.start():
            out.write(f"vpnctl monitor: another monitor notifies this session ({MONITOR_NAME})\n")
            return EXIT_OK
    watcher = Monitor(system, desktop, out)
    try:
        watcher.start()
        watcher.run_forever()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        if desktop is not None:
            desktop.link.connection.close()
    return EXIT_OK
