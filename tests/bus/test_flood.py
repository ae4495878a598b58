"""Issue 8: no local user can take vpnd off the bus, and losing the bus loses nothing.

The crash: dbus-fast gave up the connection when its socket to the bus
daemon was full (EAGAIN), and vpnd stopped with it. A busy dbus-daemon is
slow to read; here it is made to read nothing at all, at the worst moment,
by stopping it (SIGSTOP) while vpnd has a pile of calls to answer. That is
the flood of the issue, made deterministic: vpnd must wait, not leave.

Clients are raw jeepney connections run as `nobody` (unprivileged), many per
process, pipelining their calls the way a flood does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.daemon import VpndProcess, ok, vpnctl
from tests.lab.dbus import PrivateSystemBus
from tests.lab.pki import LabPKI
from tests.lab.portal import TestPortal
from tests.lab.require import require_root

pytestmark = pytest.mark.bus

DEST = "org.vpnd.Daemon"
NOBODY = 65534
LIMITS_EXCEEDED = "org.freedesktop.DBus.Error.LimitsExceeded"
# How long a step may take before the test gives up on it (not a measurement).
PATIENCE = 120.0


@pytest.fixture(scope="module", autouse=True)
def _needs_root() -> None:
    require_root("stopping dbus-daemon and running clients as another user")


# Many connections in one process, as one user. Commands on stdin, one per line:
#   burst       send every connection's calls without reading (then "sent", once
#               the bus daemon has taken them all: a GetId answered after them)
#   collect     read every answer, print a JSON summary of the answers
#   loop N      N rounds of (each connection sends its calls, then reads their answers)
#   listen      remember every signal from vpnd until "report", then print them
# argv: connections, JSON list of calls [path, interface, member, signature, [args]].
CLIENTS = r"""
import collections, json, sys
from jeepney import DBusAddress, HeaderFields, MatchRule, MessageType, message_bus, new_method_call
from jeepney.io.blocking import open_dbus_connection

count, calls = int(sys.argv[1]), json.loads(sys.argv[2])
summary = collections.Counter()

def make(path, interface, member, signature, args):
    address = DBusAddress(path, bus_name="org.vpnd.Daemon", interface=interface)
    return new_method_call(address, member, signature or None, tuple(args))

def judge(reply):
    if reply.header.message_type is MessageType.error:
        summary[reply.header.fields[HeaderFields.error_name]] += 1
    else:
        summary["ok"] += 1

conns = [open_dbus_connection(bus="SYSTEM") for _ in range(count)]
queues = []
for conn in conns:
    # Everything that arrives, replies and signals, in order.
    queue = conn.filter(MatchRule(), bufsize=1_000_000).__enter__()
    queues.append(queue)
    # Called once: vpnd now knows who this is (and sends it signals it may read).
    conn.send_and_get_reply(make("/org/vpnd/Daemon", "org.freedesktop.DBus.Properties", "Get",
                                 "ss", ["org.vpnd.Manager1", "Version"]), timeout=60)
    conn.send_and_get_reply(message_bus.AddMatch(
        MatchRule(type="signal", sender="org.vpnd.Daemon")), timeout=60)
    queue.clear()
pending = [[] for _ in conns]

def send_all():
    for i, conn in enumerate(conns):
        for call in calls:
            serial = next(conn.outgoing_serial)
            conn.send(make(*call), serial=serial)
            pending[i].append(serial)

def read_all():
    for i, conn in enumerate(conns):
        waiting = set(pending[i])
        while waiting:
            try:
                msg = conn.recv_until_filtered(queues[i], timeout=60)
            except Exception as exc:
                summary["lost: " + type(exc).__name__] += len(waiting)
                break
            serial = msg.header.fields.get(HeaderFields.reply_serial)
            if serial in waiting:
                waiting.discard(serial)
                judge(msg)
        pending[i] = []

print("ready", flush=True)
for line in sys.stdin:
    command = line.split()
    if command[0] == "burst":
        send_all()
        for conn in conns:
            conn.send_and_get_reply(message_bus.GetId(), timeout=60)
        print("sent", flush=True)
    elif command[0] == "collect":
        read_all()
        print(json.dumps(summary), flush=True)
        summary.clear()
    elif command[0] == "loop":
        for _ in range(int(command[1])):
            send_all()
            read_all()
        print(json.dumps(summary), flush=True)
        summary.clear()
    elif command[0] == "report":
        got = []
        for i, conn in enumerate(conns):
            # Every signal vpnd sent before this answer has arrived by now.
            conn.send_and_get_reply(make("/org/vpnd/Daemon", "org.freedesktop.DBus.Properties",
                                         "Get", "ss", ["org.vpnd.Manager1", "Version"]), timeout=60)
            got.append([m.header.fields.get(HeaderFields.member) for m in queues[i]
                        if m.header.message_type is MessageType.signal
                        and m.header.fields.get(HeaderFields.sender) != "org.freedesktop.DBus"])
            queues[i].clear()
        print(json.dumps(got), flush=True)
"""

INTROSPECT_ROOT = ["/org/vpnd/Daemon", "org.freedesktop.DBus.Introspectable", "Introspect", "", []]
GET_ACTIVE = [
    "/org/vpnd/Daemon",
    "org.freedesktop.DBus.Properties",
    "Get",
    "ss",
    ["org.vpnd.Manager1", "ActiveConnection"],
]
LIST_SERVERS = ["/org/vpnd/Daemon", "org.vpnd.Manager1", "ListServers", "", []]


class Clients:
    """A process holding `count` bus connections as `uid`, driven line by line."""

    def __init__(
        self, bus: PrivateSystemBus, count: int, calls: list[list[Any]], uid: int | None
    ) -> None:
        command = [sys.executable, "-c", CLIENTS, str(count), json.dumps(calls)]
        if uid is not None:
            command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command]
        self.process = subprocess.Popen(
            command,
            env=bus.env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.ask(None) == "ready"

    def ask(self, command: str | None) -> str:
        """Send `command` (if any) and return the next line the clients print."""
        assert self.process.stdin is not None and self.process.stdout is not None
        if command is not None:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"the clients exited ({self.process.wait()})"
        return line.strip()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def clients(
    bus: PrivateSystemBus, count: int, calls: list[list[Any]], uid: int | None = NOBODY
) -> Iterator[Clients]:
    running = Clients(bus, count, calls, uid)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def private_bus(tmp_path: Path) -> Iterator[PrivateSystemBus]:
    """A bus of the test's own: it is stopped and restarted here."""
    with PrivateSystemBus(tmp_path / "bus") as bus:
        yield bus


@pytest.fixture
def vpnd(tmp_path: Path, private_bus: PrivateSystemBus, lab_pki: LabPKI) -> Iterator[VpndProcess]:
    daemon = VpndProcess(tmp_path / "vpnd", private_bus.env({}), ca_file=lab_pki.ca_path)
    daemon.start()
    yield daemon
    status = daemon.stop()
    assert status == 0, daemon.log()
    assert "Traceback" not in daemon.log(), daemon.log()


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The process `pid` stopped (SIGSTOP) until the block ends, whatever happens in it."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have died meanwhile
            os.kill(pid, signal.SIGCONT)


def wait_for(what: str, condition: Any) -> None:
    """Return once `condition()` holds; fail if it never does (a hang, not a slow machine)."""
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def test_a_bus_daemon_that_stops_reading_does_not_take_vpnd_off_the_bus(
    vpnd: VpndProcess, private_bus: PrivateSystemBus
) -> None:
    # 50 connections × 16 calls (vpnd's limit per connection): about 120 kB of
    # calls, which fit in vpnd's socket, whose answers (Introspect, a few kB
    # each) are many times what a socket holds.
    connections, per_connection = 50, 16
    assert vpnd.process is not None
    with clients(private_bus, connections, [INTROSPECT_ROOT] * per_connection) as flood:
        with stopped(vpnd.pid):
            # vpnd cannot read yet: dbus-daemon queues the calls into its socket.
            assert flood.ask("burst") == "sent"
            with stopped(private_bus.pid):
                os.kill(vpnd.pid, signal.SIGCONT)
                # vpnd answers, and the bus daemon reads none of it.
                wait_for(
                    "vpnd finds the bus daemon not reading (or dies of it)",
                    lambda: (
                        vpnd.process is None
                        or vpnd.process.poll() is not None
                        or "the bus is not reading" in vpnd.log()
                    ),
                )
        assert vpnd.process.poll() is None, f"vpnd exited:\n{vpnd.log()[-3000:]}"
        answers = json.loads(flood.ask("collect"))
    assert answers == {"ok": connections * per_connection}
    # And it carries on, on the same connection.
    assert "lost the system bus" not in vpnd.log()
    assert ok(vpnctl(["status", "--json"], private_bus.env({})))


def test_fifty_readers_and_a_signal_loop_leave_vpnd_serving_the_truth(
    vpnd: VpndProcess, private_bus: PrivateSystemBus, portal: TestPortal
) -> None:
    env = private_bus.env({})
    rounds = 10
    with (
        clients(private_bus, 10, [LIST_SERVERS], uid=None) as listeners,
        clients(private_bus, 50, [GET_ACTIVE, LIST_SERVERS] * 8) as readers,
    ):
        assert listeners.process.stdin is not None and readers.process.stdin is not None
        # The readers read all along while root adds and removes a server.
        readers.process.stdin.write("loop 40\n")
        readers.process.stdin.flush()
        for _ in range(rounds):
            ok(vpnctl(["add", portal.base_url], env))
            ok(vpnctl(["remove", portal.host], env))
        answers = json.loads(readers.ask(None))
        seen = json.loads(listeners.ask("report"))
    # Answers or, past the limit per connection, the named error; nothing else.
    assert set(answers) <= {"ok", LIMITS_EXCEEDED}, answers
    assert sum(answers.values()) == 50 * 16 * 40
    assert answers["ok"] > 0
    # Every root connection saw every change, in order.
    for signals in seen:
        events = [s for s in signals if s in ("ServerAdded", "ServerRemoved")]
        assert events == ["ServerAdded", "ServerRemoved"] * rounds, signals
    assert vpnd.process is not None and vpnd.process.poll() is None
    assert json.loads(ok(vpnctl(["list", "--json"], env))) in ([], {"servers": []})


def test_a_bus_daemon_restart_leaves_vpnd_running_and_back_on_the_bus(
    vpnd: VpndProcess, private_bus: PrivateSystemBus, portal: TestPortal
) -> None:
    ok(vpnctl(["add", portal.base_url], private_bus.env({})))
    before = json.loads(ok(vpnctl(["list", "--json"], private_bus.env({}))))
    assert before

    private_bus.restart()
    assert vpnd.process is not None
    private_bus.wait_for_name(DEST, timeout=PATIENCE, process=vpnd.process)

    assert vpnd.process.poll() is None
    # The servers are the ones it had: the objects are served again, with the truth.
    assert json.loads(ok(vpnctl(["list", "--json"], private_bus.env({})))) == before
    assert ok(vpnctl(["status", "--json"], private_bus.env({})))
    log = vpnd.log()
    assert "lost the system bus connection" in log
    assert "back on the system bus" in log

    # Twice is no different from once.
    private_bus.restart()
    private_bus.wait_for_name(DEST, timeout=PATIENCE, process=vpnd.process)
    assert json.loads(ok(vpnctl(["list", "--json"], private_bus.env({})))) == before
