"""The daemon's entry point: settings, logging, the bus name, sd_notify, signals, shutdown."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from vpnd import __version__, config
from vpnd.errors import VpndError
from vpnd.steps import Steps

if TYPE_CHECKING:
    from dbus_fast import RequestNameReply
    from dbus_fast.aio import MessageBus

    from vpnd.bus.objects import BusFrontend
    from vpnd.tunnel.openvpn import Tunnel, TunnelSettings
    from vpnd.tunnel.process import Launcher

log = logging.getLogger("vpnd")

BUS_NAME = "org.vpnd.Daemon"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vpnd",
        description="VPN connection daemon, driven over D-Bus (org.vpnd.Daemon on the system bus).",
    )
    parser.add_argument("--config", type=Path, help="settings file (default /etc/vpnd/vpnd.toml)")
    parser.add_argument("--state-dir", help="where servers and tokens are kept (/var/lib/vpnd)")
    parser.add_argument("--runtime-dir", help="sockets and runtime files (/run/vpnd)")
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="log verbosity"
    )
    parser.add_argument("--version", action="version", version=f"vpnd {__version__}")
    return parser.parse_args(argv)


def _under_systemd() -> bool:
    # systemd sets JOURNAL_STREAM when stdout/stderr go to the journal.
    return bool(os.environ.get("JOURNAL_STREAM")) and bool(os.environ.get("INVOCATION_ID"))


def _setup_logging(level: str) -> None:
    root = logging.getLogger()
    root.setLevel(level.upper())
    handler: logging.Handler
    if _under_systemd():
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER="vpnd")
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("vpnd[%(process)d] %(levelname)s %(name)s: %(message)s")
        )
    root.addHandler(handler)


def _notifier(environ: Mapping[str, str] = os.environ) -> Callable[[str], None]:
    """sd_notify when started by systemd (NOTIFY_SOCKET set), else nothing.

    Sent without waiting: a service manager that does not read its socket
    (its queue holds ten messages by default) must not stop the event loop,
    so a notice that does not fit is dropped rather than waited for."""
    address = environ.get("NOTIFY_SOCKET", "")
    if not address.startswith(("/", "@")):
        return lambda _state: None
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)

    def notify(state: str) -> None:
        what = state.split("=", 1)[0]
        try:
            sock.sendto(state.encode("utf-8"), address)
        except BlockingIOError:
            log.debug("sd_notify(%s) dropped: the service manager reads no more", what)
        except OSError as exc:
            # A service manager that went away must not take the daemon with it.
            log.warning("sd_notify(%s) failed: %s", what, exc)

    return notify


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 notices when systemd asks for them (half its
    WATCHDOG_USEC, as sd_watchdog_enabled advises); None when it does not."""
    owner = environ.get("WATCHDOG_PID")
    if owner and owner != str(pid):
        return None  # meant for another process (openvpn inherits nothing, but a wrapper might)
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None


async def _keep_alive(notify: Callable[[str], None], interval: float) -> None:
    """Tell systemd the event loop turns, every `interval` seconds.

    Fed from the loop itself: a loop that is wedged (a blocking call, an
    endless callback) stops the notices, and systemd restarts the daemon."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def _launcher(choice: str) -> Launcher:
    """The way openvpn is started, as `openvpn_launcher` says."""
    from vpnd.tunnel.process import ChildLauncher, missing_child_capabilities
    from vpnd.tunnel.systemd import SystemdLauncher, systemd_available

    under_systemd = systemd_available()
    if choice == "systemd" or (choice == "auto" and under_systemd):
        log.info("openvpn runs as transient systemd units")
        return SystemdLauncher()
    # A non-root daemon is warned about in main(); this is for a root one
    # whose capabilities were taken away, as under the shipped unit.
    if os.geteuid() == 0:
        missing = missing_child_capabilities(Path("/proc/self/status").read_text())
        if missing:
            # Said at start, not at the first connect as openvpn's own error.
            log.warning(
                "openvpn runs as the daemon's child, which lacks %s: tunnels will fail; %s",
                ", ".join(missing),
                'under systemd set openvpn_launcher = "systemd" (or "auto")'
                if under_systemd
                else "give the daemon these capabilities",
            )
    return ChildLauncher()


def _load_ahead(loop: asyncio.AbstractEventLoop, module: str) -> None:
    """Import `module` in a worker thread after READY, so that the first use
    does not wait for it; the event loop keeps answering meanwhile."""

    def done(loading: asyncio.Future[ModuleType]) -> None:
        if not loading.cancelled() and loading.exception() is not None:
            log.warning("could not load %s ahead: %s", module, loading.exception())

    loop.run_in_executor(None, importlib.import_module, module).add_done_callback(done)


def _prepare_runtime_dir(path: Path) -> None:
    """Own the runtime dir (0700) and remove what a crashed earlier run left in it."""
    from vpnd.store.atomic import ensure_private_dir

    ensure_private_dir(path)
    for leftover in path.glob("*.sock"):
        log.info("removing %s left by an earlier run", leftover.name)
        leftover.unlink(missing_ok=True)


# Waits between attempts to get back on the bus: short at first (a bus
# daemon restart takes a moment), then at most this, for as long as it takes.
_RECONNECT_FIRST = 0.1
_RECONNECT_MAX = 5.0
# A bus daemon that accepts a connection but never answers must not hold a
# reconnect attempt forever.
_CONNECT_TIMEOUT = 10.0


async def _reconnect(stop: asyncio.Event) -> MessageBus | None:
    """A new connection to the system bus, trying with bounded backoff; None once stopping."""
    from vpnd.bus import transport

    delay = _RECONNECT_FIRST
    attempt = 0
    while True:
        attempt += 1
        try:
            return await transport.connect(timeout=_CONNECT_TIMEOUT)
        except transport.UnsupportedDbusFast:
            raise
        except Exception as exc:
            # Refused, no socket yet, authentication failed or timed out: later.
            (log.warning if attempt == 1 else log.debug)(
                "cannot reconnect to the system bus yet (%s); trying again in %.1f s",
                str(exc) or type(exc).__name__,
                delay,
            )
        try:
            # Waiting out the backoff, unless SIGTERM/SIGINT come first.
            async with asyncio.timeout(delay):
                await stop.wait()
            return None
        except TimeoutError:
            pass
        delay = min(delay * 2, _RECONNECT_MAX)


async def _take_name(bus: MessageBus) -> RequestNameReply:
    from dbus_fast import RequestNameReply

    reply = await bus.request_name(BUS_NAME)
    if reply is RequestNameReply.IN_QUEUE:
        log.error("%s is owned by another process; vpnd gets it when that process leaves", BUS_NAME)
    return reply


async def _stay_on_bus(
    bus: MessageBus,
    bus_id: str,
    frontend: BusFrontend,
    stop: asyncio.Event,
    notify: Callable[[str], None],
) -> MessageBus | None:
    """Serve until `stop` is set, reconnecting whenever the bus connection is lost.

    Losing the bus (a bus daemon restart, a connection it dropped) never
    stops vpnd or touches a tunnel: the manager keeps running, and once back
    vpnd owns its name again and serves the same objects with their current
    state. Returns the connection in use when stopping (None if off the bus).
    """
    from vpnd.bus import transport

    stopping = asyncio.ensure_future(stop.wait())
    try:
        while True:
            lost = asyncio.ensure_future(bus.wait_for_disconnect())  # type: ignore[no-untyped-call]
            await asyncio.wait({lost, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                lost.cancel()
                return bus
            reason = lost.exception() if not lost.cancelled() else None
            log.warning(
                "lost the system bus connection (%s); the VPN stays as it is while vpnd reconnects",
                reason or "closed",
            )
            notify("STATUS=Reconnecting to the system bus")
            new_bus = await _reconnect(stop)
            if new_bus is None:
                return None
            try:
                new_id = await transport.bus_id(new_bus)
            except Exception as exc:
                # Then it counts as another daemon: vpnd forgets who its callers were.
                log.warning("cannot ask the bus for its id: %s", exc)
                new_id = ""
            frontend.rebind(new_bus, same_daemon=bool(bus_id) and new_id == bus_id)
            bus, bus_id = new_bus, new_id
            try:
                await _take_name(bus)
            except Exception as exc:
                # A connection that died again is noticed at the top of the loop.
                log.error("cannot own %s again: %s", BUS_NAME, exc)
                continue
            notify("STATUS=Serving on the system bus")
            log.info("back on the system bus as %s", BUS_NAME)
    finally:
        stopping.cancel()


async def run(settings: config.Settings, steps: Steps | None = None) -> int:
    """Serve on the system bus until SIGTERM/SIGINT; return the exit status.

    `steps` times the start-up (logged at debug level)."""
    steps = steps or Steps(log, "start")
    from dbus_fast import RequestNameReply

    from vpnd.bus import transport
    from vpnd.bus.objects import BusFrontend
    from vpnd.discovery import MAX_DOWNLOAD, Discovery
    from vpnd.http import HttpClient
    from vpnd.manager import Manager
    from vpnd.providers import default_families
    from vpnd.status import StatusLine
    from vpnd.store.secret_store import open_secret_store
    from vpnd.store.store import Store
    from vpnd.tunnel.dns import DnsKeeper
    from vpnd.tunnel.events import TunnelEvent
    from vpnd.tunnel.leftovers import remove_leftovers

    steps.step("imported the daemon")
    notify = _notifier()
    try:
        _prepare_runtime_dir(settings.runtime_dir)
        store = Store(settings.state_dir, open_secret_store(settings))
    except VpndError as exc:
        log.error("%s", exc.message)
        return 1
    except OSError as exc:
        log.error("cannot prepare %s or %s: %s", settings.runtime_dir, settings.state_dir, exc)
        return 1
    http = HttpClient(ca_file=settings.ca_file, timeout=settings.http_timeout)
    # Discovery lists are larger than any server document: a client of their own.
    discovery_http = HttpClient(
        ca_file=settings.ca_file, timeout=settings.http_timeout, max_body=MAX_DOWNLOAD
    )
    discovery = Discovery(settings, discovery_http)
    launcher = _launcher(settings.openvpn_launcher)
    # Before anyone can connect: a tunnel a killed earlier run left is removed.
    # That and the bus handshake are independent and each waits on a peer
    # (systemd, for the units of an earlier run; the bus daemon), so at once.
    found, connected = await asyncio.gather(
        remove_leftovers(settings.runtime_dir, launcher),
        transport.connect(),
        return_exceptions=True,
    )
    if isinstance(found, BaseException):
        if not isinstance(connected, BaseException):
            connected.disconnect()
        raise found
    leftovers = found
    if leftovers:
        steps.step("removed the tunnels an earlier run left")
    tunnel_settings: TunnelSettings | None = None

    def new_tunnel(name: str, on_event: Callable[[TunnelEvent], None]) -> Tunnel:
        # The OpenVPN tunnel and its management protocol are loaded at the
        # first connect: a start does not need them.
        from vpnd.tunnel.openvpn import Tunnel, TunnelSettings

        nonlocal tunnel_settings
        if tunnel_settings is None:
            tunnel_settings = TunnelSettings(
                runtime_dir=settings.runtime_dir, openvpn=settings.openvpn, launcher=launcher
            )
        return Tunnel(name, tunnel_settings, on_event)

    if isinstance(connected, transport.UnsupportedDbusFast):
        log.error("%s", connected)
        return 1
    if isinstance(connected, OSError | ValueError):
        log.error("cannot connect to the system bus: %s", connected)
        return 1
    if isinstance(connected, BaseException):
        raise connected
    bus: MessageBus | None = connected
    assert bus is not None
    bus_id = await transport.bus_id(bus)
    steps.step("opened the store and connected to the bus")
    frontend = BusFrontend(bus)
    families = default_families(
        http, store.secrets, settings, template_for=discovery.authentication_template
    )
    # The bus publishes every change; systemd's STATUS= line says what a connection does.
    # DNS a killed run left on a tunnel's link goes before anything else connects.
    dns = DnsKeeper(settings.runtime_dir)
    await dns.recover()
    manager = Manager(settings, store, families, new_tunnel, StatusLine(frontend, notify), dns=dns)
    frontend.attach(manager)
    frontend.discovery = discovery
    discovery.on_change = frontend.listed_changed
    manager.load()
    steps.step("loaded the servers")
    reply = await bus.request_name(BUS_NAME)
    if reply is not RequestNameReply.PRIMARY_OWNER:
        log.error("%s is already owned by another process (%s); is vpnd running?", BUS_NAME, reply)
        bus.disconnect()
        return 1

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    steps.step("owns its bus name")
    notify(
        "READY=1\nSTATUS=Serving on the system bus"
        + (f"; removed {len(leftovers)} tunnel(s) an earlier run left" if leftovers else "")
    )
    log.info("vpnd %s ready on the system bus as %s", __version__, BUS_NAME)
    discovery.start()
    # The OpenVPN tunnel and its management protocol: not needed for READY,
    # but the first connect spawns openvpn as soon as it starts.
    _load_ahead(loop, "vpnd.tunnel.openvpn")
    # Loaded after READY: it is not needed to answer on the bus.
    from vpnd.netwatch import NetworkWatch

    # A changed way to the server makes the tunnel again at once.
    network = NetworkWatch(
        manager.network_changed,
        lambda: (c.remote, c.connected_since) if (c := manager.connection) else ("", None),
    )
    network.start()
    interval = watchdog_interval(os.environ, os.getpid())
    keep_alive = asyncio.create_task(_keep_alive(notify, interval)) if interval else None
    marked = manager.connect_at_start()
    if marked is not None and not marked.authorized:
        notify(
            f"STATUS=Authorization required: {marked.host} connects at start once someone"
            " logs in to it"
        )
    try:
        bus = await _stay_on_bus(bus, bus_id, frontend, stop, notify)
    except transport.UnsupportedDbusFast as exc:
        log.error("%s", exc)
        bus = None

    notify("STOPPING=1")
    log.info("stopping")
    try:
        async with asyncio.timeout(15):
            await manager.shutdown()
    except TimeoutError:
        log.error("shutting down took too long; exiting anyway")
    network.close()
    await discovery.aclose()
    await discovery_http.aclose()
    await http.aclose()
    if bus is not None and bus.connected:
        frontend.router.flush()
        bus.disconnect()
    if keep_alive is not None:
        # Fed through the shutdown too: tearing a tunnel down may take a while.
        keep_alive.cancel()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    steps = Steps(log, "start")
    args = _parse_args(argv)
    overrides: dict[str, Any] = {
        "state_dir": str(Path(args.state_dir).absolute()) if args.state_dir else None,
        "runtime_dir": str(Path(args.runtime_dir).absolute()) if args.runtime_dir else None,
        "log_level": args.log_level,
    }
    try:
        settings = config.load(args.config, overrides)
    except VpndError as exc:
        print(f"vpnd: {exc.message}", file=sys.stderr)
        return 2
    _setup_logging(settings.log_level)
    if os.geteuid() != 0:
        log.warning("not running as root: openvpn will not be able to create tunnels")
    steps.step("read the settings")
    try:
        return asyncio.run(run(settings, steps))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
