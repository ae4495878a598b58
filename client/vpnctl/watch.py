"""`vpnctl status --watch`: follow the active connection from vpnd's signals, a line per change.

Nothing is polled. One subscription covers the root object (its
ActiveConnection moves to each new connection) and every object under it
(each connection's PropertiesChanged). An object is read once when it
becomes the one to follow; signals queued before that answer are older than
it and are dropped, later ones are applied to what was read.

A line (or, with --json, a `status --json` record on one line) is printed
for the state at start and then whenever something other than the traffic
counters changes: openvpn reports those every second, and they are current
in every line that is printed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

from vpnctl import render
from vpnctl.contract import (
    CONNECTED,
    CONNECTION_INTERFACE,
    DISCONNECTED,
    FAILED,
    MANAGER_INTERFACE,
    MANAGER_PATH,
    NEEDS_INPUT,
    PROPERTIES_INTERFACE,
)
from vpnctl.errors import EXIT_INTERRUPTED, BusError

if TYPE_CHECKING:
    from vpnctl.bus import DaemonBus, Signal, Subscription

# How long one wait for a signal lasts before it is simply started again:
# the wait blocks on the bus socket, this only bounds a single select().
_WAIT = 3600.0

# Record fields that change every second while a tunnel is up; a change of
# these alone prints nothing.
_COUNTERS = frozenset({"bytes_in", "bytes_out"})

_RESET = "\033[0m"
_STATE_COLOURS = {
    CONNECTED: "\033[32m",  # green
    FAILED: "\033[31m",  # red
    NEEDS_INPUT: "\033[33m",  # yellow
}


def use_colour(out: IO[str], environ: Mapping[str, str]) -> bool:
    """Colour only on a terminal, never with NO_COLOR set (https://no-color.org) or TERM=dumb."""
    if environ.get("NO_COLOR", "") != "" or environ.get("TERM") == "dumb":
        return False
    return out.isatty()


def watch_line(record: Mapping[str, Any], when: float, *, colour: bool = False) -> str:
    """One line for people: local time, state (detail), tunnel IP, question, error, server."""
    state = str(record["state"])
    shown = render.describe_state(state, record["detail"])
    if colour and state in _STATE_COLOURS:
        shown = _STATE_COLOURS[state] + shown + _RESET
    parts = [time.strftime("%H:%M:%S", time.localtime(when)), shown]
    addresses = [a for a in (record["tunnel_ip"], record["tunnel_ipv6"]) if a]
    if addresses and state not in (DISCONNECTED, FAILED):
        parts.append("tunnel IP " + ", ".join(addresses))
    prompt = record.get("prompt")
    if prompt:
        parts.append("asks: " + prompt["message"] + (f" {prompt['url']}" if prompt["url"] else ""))
    if state == FAILED or record["error_message"]:
        parts.append("error: " + (record["error_message"] or record["error"] or "unknown error"))
    if record["server_url"]:
        where = record["server_url"]
        if record["profile"]:
            where += f" profile {record['profile']}"
        parts.append(where)
    # The server's words go on one line whatever they hold.
    return "  ".join(" ".join(part.split()) for part in parts)


def json_line(record: Mapping[str, Any]) -> str:
    """The record as compact JSON on one line."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def visible(record: Mapping[str, Any]) -> dict[str, Any]:
    """What of a record decides whether a new line is printed: all but the counters."""
    return {key: value for key, value in record.items() if key not in _COUNTERS}


class _Printer:
    """Prints a record when what it shows changed since the last one printed."""

    def __init__(self, out: IO[str], *, as_json: bool, colour: bool) -> None:
        self._out = out
        self._as_json = as_json
        self._colour = colour
        self._last: dict[str, Any] | None = None

    def show(self, path: str, properties: Mapping[str, Any] | None) -> None:
        record = render.status_record(path, properties)
        seen = visible(record)
        if seen == self._last:
            return
        self._last = seen
        if self._as_json:
            line = json_line(record)
        else:
            line = watch_line(record, time.time(), colour=self._colour)
        self._out.write(line + "\n")
        self._out.flush()


def _active_path(bus: DaemonBus, subscription: Subscription) -> str:
    path = str(bus.get(MANAGER_PATH, MANAGER_INTERFACE, "ActiveConnection"))
    subscription.drop(MANAGER_PATH)
    return path


def _connection(bus: DaemonBus, subscription: Subscription, path: str) -> dict[str, Any] | None:
    """A connection's properties, read afresh; None for none, or for one already gone
    (the root object's change to the next one is on its way)."""
    if path == "/":
        return None
    try:
        properties = bus.get_all(path, CONNECTION_INTERFACE)
    except BusError as error:
        if error.name != "org.freedesktop.DBus.Error.UnknownObject":
            raise
        properties = None
    subscription.drop(path)
    return properties


def _new_active_path(signal: Signal) -> str | None:
    """The path a root PropertiesChanged moves ActiveConnection to; "" when it must be
    read again (invalidated); None when the signal is not about it."""
    if signal.interface != PROPERTIES_INTERFACE or signal.member != "PropertiesChanged":
        return None
    interface, changed, invalidated = signal.body
    if interface != MANAGER_INTERFACE:
        return None
    if "ActiveConnection" in changed:
        return str(changed["ActiveConnection"])
    return "" if "ActiveConnection" in invalidated else None


def watch_status(bus: DaemonBus, out: IO[str], *, as_json: bool) -> int:
    """Print the status, then a line per change, until Ctrl-C (exit 130, quietly).

    Raises BusUnreachable when vpnd leaves the bus or the bus connection breaks.
    """
    from vpnctl.cli import connection_changes

    printer = _Printer(out, as_json=as_json, colour=use_colour(out, os.environ))
    try:
        # Subscribed before the first read: nothing between the two is missed.
        subscription = bus.subscribe(path_namespace=MANAGER_PATH)
        path = _active_path(bus, subscription)
        properties = _connection(bus, subscription, path)
        printer.show(path, properties)
        while True:
            try:
                signal = bus.next_signal(subscription, time.monotonic() + _WAIT)
            except TimeoutError:
                continue
            if signal.path == MANAGER_PATH:
                moved = _new_active_path(signal)
                if moved is None or moved == path:
                    continue
                path = moved or _active_path(bus, subscription)
                properties = _connection(bus, subscription, path)
            elif signal.path == path and properties is not None:
                changes = connection_changes(signal.interface, signal.member, signal.body)
                if changes is None:
                    continue
                if changes:
                    properties.update(changes)
                else:
                    properties = _connection(bus, subscription, path)
            else:
                continue
            printer.show(path, properties)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
