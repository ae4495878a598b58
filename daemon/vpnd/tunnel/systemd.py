"""openvpn as a transient systemd unit, asked for over the system bus.

With this launcher the daemon never starts openvpn itself: systemd does, as
openvpn's own user with CAP_NET_ADMIN alone (the properties are in
`vpnd.tunnel.unit`). The daemon therefore needs no capability to switch
users or signal other users' processes, and its own unit can drop them all.

The daemon keeps a second connection to the system bus for this, with unix
fd passing negotiated: the config pipe and the output pipe travel with
StartTransientUnit. The main connection does not accept descriptors, so no
caller can send the daemon any.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import signal
from pathlib import Path
from typing import Any

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from vpnd.bus.transport import PatientMessageBus
from vpnd.errors import TunnelFailed
from vpnd.tunnel import unit
from vpnd.tunnel.process import OpenVPNProcess, send_and_close

log = logging.getLogger("vpnd.tunnel")

_SYSTEMD = "org.freedesktop.systemd1"
_MANAGER_PATH = "/org/freedesktop/systemd1"
_MANAGER = "org.freedesktop.systemd1.Manager"
_UNIT = "org.freedesktop.systemd1.Unit"
_SERVICE = "org.freedesktop.systemd1.Service"
_PROPERTIES = "org.freedesktop.DBus.Properties"
_FINAL_STATES = {"inactive", "failed"}
# How long to wait for a state change signal before asking again: a lost
# signal (the bus dropped it) costs at most this.
_RECHECK = 2.0
_OUTPUT_LIMIT = 2**16


def systemd_available(environ: dict[str, str] | None = None) -> bool:
    """True if this process is a systemd service on a machine booted with systemd."""
    environ = dict(os.environ) if environ is None else environ
    return bool(environ.get("INVOCATION_ID")) and Path("/run/systemd/system").is_dir()


class SystemdError(TunnelFailed):
    """systemd refused or failed a request about an openvpn unit."""


class SystemdLauncher:
    """Starts each openvpn as a transient unit `vpnd-openvpn-<tunnel>.service`."""

    switches_user = False
    # Reachable by openvpn's user only through the bind into its unit: the
    # runtime directory around it stays 0700 root.
    socket_mode = 0o666

    def __init__(self, bus_address: str | None = None) -> None:
        """Connect lazily, to `bus_address` or the system bus."""
        self._bus_address = bus_address
        self._bus: MessageBus | None = None
        self._connecting = asyncio.Lock()
        self._own_unit: str | None = None
        self._watchers: dict[str, asyncio.Event] = {}

    def management_path(self, socket_path: Path) -> str:
        """The socket as bound into the unit."""
        del socket_path
        return unit.MANAGEMENT_PATH

    async def launch(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        socket_path: Path,
        account: tuple[str, str] | None,
    ) -> OpenVPNProcess:
        """Start the unit; returns once systemd has queued its start."""
        if account is None:
            raise TunnelFailed("openvpn runs as a systemd unit only under its own user")
        binary = _absolute_binary(argv[0], env.get("PATH"))
        bus = await self._connect()
        request = unit.UnitRequest(
            name=name,
            argv=[binary, *argv[1:]],
            environment=env,
            user=account[0],
            group=account[1],
            socket_path=str(socket_path),
            bound_to=self._own_unit,
        )
        unit_name = unit.unit_name(name)
        process = UnitProcess(self, unit_name, pwd.getpwnam(account[0]).pw_uid)
        stdin_read, stdin_write = os.pipe2(os.O_CLOEXEC)
        output_read, output_write = os.pipe2(os.O_CLOEXEC)
        try:
            # openvpn opens /dev/stdin anew, as its own user: a pipe is made
            # 0600 for the daemon. Only holders of the pipe can reopen it.
            os.fchmod(stdin_read, 0o444)
            await self._watch(unit_name, process.changed)
            reply = await bus.call(
                Message(
                    destination=_SYSTEMD,
                    path=_MANAGER_PATH,
                    interface=_MANAGER,
                    member="StartTransientUnit",
                    signature="ssa(sv)a(sa(sv))",
                    body=[unit_name, "fail", unit.properties(request, 0, 1), []],
                    unix_fds=[stdin_read, output_write],
                )
            )
            _check(reply, f"systemd refused to start {unit_name}")
            await process.attach(stdin_write, output_read)
        except BaseException:
            await self._unwatch(unit_name)
            for fd in (stdin_write, output_read):
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        finally:
            # systemd has its own copies now (or none at all).
            os.close(stdin_read)
            os.close(output_write)
        return process

    async def call(
        self, path: str, interface: str, member: str, signature: str = "", *body: Any
    ) -> Message:
        """One method call to systemd; its error reply raises SystemdError."""
        return await _call(await self._connect(), path, interface, member, signature, *body)

    async def forget(self, unit_name: str) -> None:
        """Stop watching `unit_name` and let systemd unload it."""
        await self._unwatch(unit_name)
        with contextlib.suppress(SystemdError):
            await self.call(unit.unit_object_path(unit_name), _UNIT, "Unref")

    async def _connect(self) -> MessageBus:
        async with self._connecting:
            if self._bus is not None and self._bus.connected:
                return self._bus
            try:
                # Patient: a full socket (EAGAIN) must not drop the units' watch.
                bus = await PatientMessageBus(
                    bus_address=self._bus_address,
                    bus_type=BusType.SYSTEM,
                    negotiate_unix_fd=True,
                ).connect()
            except (OSError, ValueError) as error:
                raise SystemdError(f"cannot reach systemd over the system bus: {error}") from None
            bus.add_message_handler(self._on_message)
            try:
                # Without a subscriber systemd sends no PropertiesChanged for units.
                await _call(bus, _MANAGER_PATH, _MANAGER, "Subscribe")
                self._own_unit = await _find_own_unit(bus)
            except BaseException:
                bus.disconnect()
                raise
            self._bus = bus
            return bus

    async def _watch(self, unit_name: str, changed: asyncio.Event) -> None:
        self._watchers[unit.unit_object_path(unit_name)] = changed
        await self._bus_call("AddMatch", _match_rule(unit_name))

    async def _unwatch(self, unit_name: str) -> None:
        if self._watchers.pop(unit.unit_object_path(unit_name), None) is None:
            return
        with contextlib.suppress(SystemdError):
            await self._bus_call("RemoveMatch", _match_rule(unit_name))

    async def _bus_call(self, member: str, rule: str) -> None:
        bus = await self._connect()
        await _call(
            bus,
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            member,
            "s",
            rule,
            destination="org.freedesktop.DBus",
        )

    def _on_message(self, message: Message) -> None:
        if message.message_type is MessageType.SIGNAL and message.path in self._watchers:
            self._watchers[message.path].set()


class UnitProcess:
    """An openvpn started by `SystemdLauncher`."""

    def __init__(self, launcher: SystemdLauncher, unit_name: str, uid: int) -> None:
        """The unit `unit_name`, not yet started, whose process runs as `uid`."""
        self._launcher = launcher
        self._unit = unit_name
        self._uid = uid
        self._path = unit.unit_object_path(unit_name)
        #: Set whenever systemd reports a change of the unit.
        self.changed = asyncio.Event()
        self._pid: int | None = None
        self._returncode: int | None = None
        self._stdin: asyncio.StreamWriter | None = None
        self._output = asyncio.StreamReader(limit=_OUTPUT_LIMIT)
        self._output_transport: asyncio.ReadTransport | None = None
        self._signals: set[asyncio.Task[None]] = set()
        self._forgotten = False

    async def attach(self, stdin_fd: int, output_fd: int) -> None:
        """Take over the daemon's ends of the two pipes."""
        loop = asyncio.get_running_loop()
        self._output_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(self._output), os.fdopen(output_fd, "rb", 0)
        )
        # A stream writer over the pipe, as asyncio.subprocess makes for a child's stdin.
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(stdin_fd, "wb", 0)
        )
        self._stdin = asyncio.StreamWriter(transport, protocol, None, loop)

    @property
    def label(self) -> str:
        """The unit's name."""
        return self._unit

    @property
    def pid(self) -> int | None:
        """The unit's main process, once the management peer check has asked for it."""
        return self._pid

    @property
    def returncode(self) -> int | None:
        """Known once `wait()` has returned."""
        return self._returncode

    async def send_input(self, data: bytes) -> None:
        """Write the config and close the pipe."""
        assert self._stdin is not None
        await send_and_close(self._stdin, data)

    async def readline(self) -> bytes:
        """The next line openvpn wrote."""
        return await self._output.readline()

    async def wait(self) -> int:
        """Wait until the unit is inactive or failed; then systemd may unload it."""
        if self._returncode is not None:
            return self._returncode
        try:
            while True:
                self.changed.clear()
                state = await self._state()
                if state is None or state.get("ActiveState") in _FINAL_STATES:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_RECHECK):
                        await self.changed.wait()
        finally:
            if self._stdin is not None:
                self._stdin.close()
            if self._output_transport is not None:
                self._output_transport.close()
        if state is None:
            # Unloaded, or systemd is out of reach: nothing tells how it ended.
            self._returncode = -1
        else:
            self._returncode = unit.returncode(
                int(state.get("ExecMainCode", 0)), int(state.get("ExecMainStatus", 0))
            )
        if not self._forgotten:
            self._forgotten = True
            await self._launcher.forget(self._unit)
        return self._returncode

    async def is_peer(self, pid: int, uid: int) -> bool:
        """The unit's main process, running as openvpn's user."""
        if uid != self._uid:
            return False
        try:
            reply = await self._launcher.call(
                self._path, _PROPERTIES, "Get", "ss", _SERVICE, "MainPID"
            )
        except SystemdError as error:
            log.debug("%s: %s", self._unit, error.message)
            return False
        main_pid = reply.body[0].value
        if isinstance(main_pid, int) and main_pid != 0 and main_pid == pid:
            self._pid = main_pid
            return True
        return False

    def send_signal(self, signum: signal.Signals) -> None:
        """Ask systemd to signal the unit's processes; the daemon may not itself."""
        if self._returncode is not None:
            return
        task = asyncio.create_task(self._kill(signum))
        self._signals.add(task)
        task.add_done_callback(self._signals.discard)

    def exit_reason(self, returncode: int) -> str | None:
        """systemd's own exit statuses, for an openvpn that never ran."""
        return unit.exit_reason(returncode, self._unit)

    async def _kill(self, signum: signal.Signals) -> None:
        try:
            await self._launcher.call(
                _MANAGER_PATH, _MANAGER, "KillUnit", "ssi", self._unit, "all", int(signum)
            )
        except SystemdError as error:
            log.debug("%s: %s", self._unit, error.message)

    async def _state(self) -> dict[str, Any] | None:
        """ActiveState, MainPID, ExecMainCode and ExecMainStatus; None if systemd has no unit."""
        try:
            unit_reply = await self._launcher.call(self._path, _PROPERTIES, "GetAll", "s", _UNIT)
            state = unit.as_dict(unit_reply.body[0])
            if state.get("LoadState") != "loaded":
                return None  # unloaded; asking made systemd look for a unit file
            service = await self._launcher.call(self._path, _PROPERTIES, "GetAll", "s", _SERVICE)
        except SystemdError as error:
            log.debug("%s: %s", self._unit, error.message)
            return None
        state.update(unit.as_dict(service.body[0]))
        return state


async def _call(
    bus: MessageBus,
    path: str,
    interface: str,
    member: str,
    signature: str = "",
    *body: Any,
    destination: str = _SYSTEMD,
) -> Message:
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
    _check(reply, f"{'systemd' if destination == _SYSTEMD else 'the bus'}: {member} failed")
    assert reply is not None
    return reply


async def _find_own_unit(bus: MessageBus) -> str | None:
    """The daemon's own service unit, which its openvpn units are bound to."""
    try:
        reply = await _call(bus, _MANAGER_PATH, _MANAGER, "GetUnitByPID", "u", os.getpid())
        reply = await _call(bus, reply.body[0], _PROPERTIES, "Get", "ss", _UNIT, "Id")
    except SystemdError as error:
        log.debug("the daemon's own unit is unknown: %s", error.message)
        return None
    own = reply.body[0].value
    return own if isinstance(own, str) and own.endswith(".service") else None


def _absolute_binary(name: str, path: str | None) -> str:
    """systemd runs only absolute paths: look `name` up as execve(PATH) would."""
    binary = shutil.which(name, path=path)
    if binary is None:
        raise TunnelFailed(f"cannot run {name}: not found")
    return os.path.abspath(binary)


def _check(reply: Message | None, what: str) -> None:
    if reply is None:
        raise SystemdError(f"{what}: no reply")
    if reply.message_type is MessageType.ERROR:
        detail = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
        raise SystemdError(f"{what}: {reply.error_name}" + (f": {detail}" if detail else ""))


def _match_rule(unit_name: str) -> str:
    return (
        f"type='signal',sender='{_SYSTEMD}',interface='{_PROPERTIES}',"
        f"member='PropertiesChanged',path='{unit.unit_object_path(unit_name)}'"
    )
