"""The project's bus policy and polkit actions, enforced by a real dbus-daemon and polkitd.

The daemon is not involved: a stand-in that owns org.vpnd.Daemon and
answers every method call with "<interface>.<member>" shows which calls
the bus lets through. Unprivileged callers run as nobody (uid 65534).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from jeepney import DBusAddress, new_method_call

from tests.lab.dbus import DAEMON_BUS_NAME, PrivateSystemBus, find_polkitd
from tests.lab.require import missing, require_root, require_tool

pytestmark = pytest.mark.bus


@pytest.fixture(scope="module", autouse=True)
def _needs_a_system_bus() -> None:
    require_root("a system-type bus")
    require_tool("dbus-daemon", "dbus-daemon")


def require_polkitd() -> None:
    if find_polkitd() is None:
        missing("polkitd is not installed (Debian package polkitd)")

NOBODY = 65534
OBJECT = "/org/vpnd/Daemon"
ALLOWED_INTERFACES = [
    "org.vpnd.Manager1",
    "org.vpnd.Server1",
    "org.vpnd.Connection1",
    "org.freedesktop.DBus.Properties",
    "org.freedesktop.DBus.Introspectable",
    "org.freedesktop.DBus.Peer",
    "org.freedesktop.DBus.ObjectManager",
]
REFUSED_INTERFACES = [
    "org.vpnd.Debug1",
    "org.vpnd.Manager2",
    "org.freedesktop.DBus.Monitoring",
]

# A stand-in for the daemon, for these policy tests only: it takes the name
# on the bus named by DBUS_SYSTEM_BUS_ADDRESS and echoes what was called.
STANDIN = """
import sys
from jeepney import DBus, HeaderFields, MatchRule, new_method_return
from jeepney.io.blocking import open_dbus_connection

conn = open_dbus_connection(bus="SYSTEM")
# When the bus activated us, it hands over the waiting call as soon as we own
# the name, before the RequestName reply: catch calls from the start.
with conn.filter(MatchRule(type="method_call"), bufsize=64) as calls:
    reply = conn.send_and_get_reply(DBus().RequestName("org.vpnd.Daemon", 4))
    if reply.body[0] != 1:
        sys.exit(f"stand-in did not become the owner: {reply.body[0]}")
    while True:
        try:
            msg = conn.recv_until_filtered(calls)
        except (ConnectionError, OSError):
            sys.exit(0)
        fields = msg.header.fields
        called = f"{fields.get(HeaderFields.interface, '')}.{fields[HeaderFields.member]}"
        conn.send(new_method_return(msg, "s", (called,)))
"""


def busctl(
    bus: PrivateSystemBus, *args: str, uid: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Run busctl on the private bus, as root or as `uid`."""
    command = ["busctl", f"--address={bus.address}", "--timeout=10", *args]
    if uid is not None:
        command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def call(
    bus: PrivateSystemBus, interface: str, *, uid: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Call `<interface>.Ping` on the daemon's root object."""
    return busctl(bus, "call", DAEMON_BUS_NAME, OBJECT, interface, "Ping", uid=uid)


def request_name(
    bus: PrivateSystemBus, *, uid: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Ask the bus for org.vpnd.Daemon (flag 4: do not queue)."""
    return busctl(
        bus,
        "call",
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus",
        "RequestName",
        "su",
        DAEMON_BUS_NAME,
        "4",
        uid=uid,
    )


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[PrivateSystemBus]:
    with PrivateSystemBus(tmp_path) as private_bus:
        yield private_bus


@pytest.fixture
def standin(bus: PrivateSystemBus) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", STANDIN], env=bus.env())
    try:
        bus.wait_for_name(DAEMON_BUS_NAME, process=proc)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_root_may_own_the_name(bus: PrivateSystemBus) -> None:
    result = request_name(bus)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["u", "1"]  # primary owner


def test_unprivileged_user_may_not_own_the_name(bus: PrivateSystemBus) -> None:
    result = request_name(bus, uid=NOBODY)
    assert result.returncode != 0
    assert "Access denied" in result.stderr, result.stderr
    assert not bus.name_has_owner(DAEMON_BUS_NAME)


@pytest.mark.parametrize("interface", ALLOWED_INTERFACES)
def test_unprivileged_user_may_call_the_daemon_interfaces(
    bus: PrivateSystemBus, standin: subprocess.Popen[bytes], interface: str
) -> None:
    result = call(bus, interface, uid=NOBODY)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f's "{interface}.Ping"'


@pytest.mark.parametrize("interface", REFUSED_INTERFACES)
@pytest.mark.parametrize("uid", [NOBODY, None], ids=["nobody", "root"])
def test_other_interfaces_are_refused_by_the_bus(
    bus: PrivateSystemBus, standin: subprocess.Popen[bytes], interface: str, uid: int | None
) -> None:
    result = call(bus, interface, uid=uid)
    assert result.returncode != 0
    # The stand-in answers everything it receives, so a refusal can only
    # come from the bus.
    assert "Access denied" in result.stderr or "AccessDenied" in result.stderr, result.stderr
    assert standin.poll() is None


def test_unprivileged_call_activates_the_daemon(tmp_path: Path) -> None:
    script = tmp_path / "standin.py"
    script.write_text(STANDIN)
    with PrivateSystemBus(tmp_path, with_activation=[sys.executable, str(script)]) as bus:
        assert not bus.name_has_owner(DAEMON_BUS_NAME)
        result = call(bus, "org.vpnd.Manager1", uid=NOBODY)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == 's "org.vpnd.Manager1.Ping"'
        assert bus.name_has_owner(DAEMON_BUS_NAME)


# -- polkit ---------------------------------------------------------------------


def check_authorization(
    bus: PrivateSystemBus, action: str, pid: int, uid: int
) -> tuple[bool, bool]:
    """Ask polkitd about a process; return (is_authorized, is_challenge)."""
    authority = DBusAddress(
        "/org/freedesktop/PolicyKit1/Authority",
        bus_name="org.freedesktop.PolicyKit1",
        interface="org.freedesktop.PolicyKit1.Authority",
    )
    subject = ("unix-process", {"pid": ("u", pid), "start-time": ("t", 0), "uid": ("i", uid)})
    message = new_method_call(
        authority, "CheckAuthorization", "(sa{sv})sa{ss}us", (subject, action, {}, 0, "")
    )
    with bus.connect() as conn:
        authorized, challenge, _details = conn.send_and_get_reply(message, timeout=10).body[0]
    return bool(authorized), bool(challenge)


@pytest.fixture
def nobody_process() -> Iterator[subprocess.Popen[bytes]]:
    """A process of nobody's that lives until the test ends (it reads stdin until EOF)."""
    proc = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "cat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    yield proc
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=10)


def test_polkit_defaults_for_a_caller_without_a_session(
    bus: PrivateSystemBus, nobody_process: subprocess.Popen[bytes]
) -> None:
    require_polkitd()
    bus.start_polkitd()
    pid = nobody_process.pid
    # Not at the machine: connecting needs an administrator, own servers do not.
    assert check_authorization(bus, "org.vpnd.connect", pid, NOBODY) == (False, True)
    assert check_authorization(bus, "org.vpnd.manage-own-servers", pid, NOBODY) == (True, False)
    assert check_authorization(bus, "org.vpnd.manage-system-servers", pid, NOBODY) == (False, True)


def test_polkit_rules_can_grant_an_action(
    bus: PrivateSystemBus, nobody_process: subprocess.Popen[bytes]
) -> None:
    require_polkitd()
    bus.start_polkitd(
        rules="""
        polkit.addRule(function(action, subject) {
            if (action.id == "org.vpnd.manage-system-servers" && subject.user == "nobody") {
                return polkit.Result.YES;
            }
        });
        """
    )
    pid = nobody_process.pid
    assert check_authorization(bus, "org.vpnd.manage-system-servers", pid, NOBODY) == (True, False)
    assert check_authorization(bus, "org.vpnd.connect", pid, NOBODY) == (False, True)
