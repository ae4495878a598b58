"""docs/dbus-api.md's examples and docs/applet-example.py, run against the real daemon.

Every ```sh block of the page runs, in page order, as a person would type
them into one terminal (a variable an example sets is there for the next
ones), with the page's vpn.example.org replaced by the lab portal. Blocks
marked `follow` run in the background while something changes; blocks
marked `fails` must fail with a named error. Real pieces: a private system
bus with vpnd's policy, the daemon, the lab portal over TLS, busctl, gdbus
and the scripted browser. The examples run as root here (no polkitd).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from jeepney import DBusAddress, HeaderFields, MatchRule, new_method_call
from jeepney.io.blocking import DBusConnection, open_dbus_connection

from tests.lab.browser import approve
from tests.lab.daemon import REPO, VpndProcess, ok, vpnctl
from tests.lab.dbus import PrivateSystemBus
from tests.lab.pki import LabPKI
from tests.lab.portal import TestPortal

pytestmark = pytest.mark.bus

PAGE = REPO / "docs" / "dbus-api.md"
APPLET = REPO / "docs" / "applet-example.py"
ROOT = "/org/vpnd/Daemon"
EXAMPLE_URL, EXAMPLE_HOST = "https://vpn.example.org/", "vpn.example.org"
BLOCK = re.compile(r"^```sh(?: (\w+))?\n(.*?)^```$", re.MULTILINE | re.DOTALL)
# How long a background example may take to show a change (a bound, not a measurement).
FOLLOW_TIMEOUT = 20.0


def examples() -> list[tuple[str, str]]:
    """(mark, text) of every sh block of the page, in order."""
    return [(m.group(1) or "", m.group(2)) for m in BLOCK.finditer(PAGE.read_text())]


class Terminal:
    """Runs examples as one shell session would: variables set by one are there for the next."""

    def __init__(self, workdir: Path, env: dict[str, str], portal: TestPortal) -> None:
        self._state = workdir / "shell-state"
        self._env = env
        self._portal = portal

    def script(self, text: str) -> str:
        text = text.replace(EXAMPLE_URL, self._portal.base_url)
        text = text.replace(EXAMPLE_HOST, self._portal.host)
        keep = f"declare -p SERVER CONNECTION > {self._state} 2>/dev/null || true"
        return f"set -e -o pipefail\n[ ! -f {self._state} ] || . {self._state}\n{text}\n{keep}\n"

    def run(self, text: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", self.script(text)],
            env=self._env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def start(self, text: str) -> Follower:
        return Follower(["bash", "-c", self.script(text)], self._env)


class Follower:
    """A command that runs until stopped; its output lines as they come."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self._proc = subprocess.Popen(
            command,
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_for(self, pattern: str) -> str:
        """The first line from now on that matches `pattern` (a regular expression)."""
        while True:
            try:
                line = self._lines.get(timeout=FOLLOW_TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"no line matches {pattern!r}; seen: {self.seen}") from None
            if line is None:
                raise AssertionError(f"ended before a line matched {pattern!r}: {self.seen}")
            self.seen.append(line)
            if re.search(pattern, line):
                return line

    def stop(self) -> None:
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGINT)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()


class Signals:
    """A bus connection of the test's own that has called vpnd, so that it gets root's signals."""

    def __init__(self, bus: PrivateSystemBus) -> None:
        self._conn: DBusConnection = open_dbus_connection(bus.address)
        self._filter = self._conn.filter(MatchRule(type="signal"), bufsize=10000)
        self._queue = self._filter.__enter__()
        manager = DBusAddress(ROOT, "org.vpnd.Daemon", "org.vpnd.Manager1")
        self._conn.send_and_get_reply(new_method_call(manager, "ListServers"), timeout=30)

    def wait_for(self, member: str) -> list[object]:
        """The body of the next signal called `member`."""
        while True:
            message = self._conn.recv_until_filtered(self._queue, timeout=FOLLOW_TIMEOUT)
            if message.header.fields.get(HeaderFields.member) == member:
                return list(message.body)

    def close(self) -> None:
        self._filter.__exit__(None, None, None)
        self._conn.close()


@pytest.fixture
def env(client_env: dict[str, str]) -> dict[str, str]:
    """A root terminal on the private bus; `python3` is the one with jeepney."""
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return {**client_env, "PATH": path, "HOME": os.environ.get("HOME", "/root")}


@pytest.fixture
def signals(vpnd: VpndProcess, private_bus: PrivateSystemBus) -> Iterator[Signals]:
    watcher = Signals(private_bus)
    yield watcher
    watcher.close()


def test_every_example_on_the_page_works(
    vpnd: VpndProcess,
    portal: TestPortal,
    env: dict[str, str],
    lab_pki: LabPKI,
    signals: Signals,
    tmp_path: Path,
) -> None:
    terminal = Terminal(tmp_path, env, portal)
    blocks = examples()
    assert len(blocks) >= 10
    # What each example must print, by what it calls.
    expected = {
        "AddServer": "/org/vpnd/Daemon/servers/",
        "FindServer vpn": "/org/vpnd/Daemon/servers/",
        "ListServers": portal.host,
        "GetManagedObjects": "org.vpnd.Server1",
        "GetProfiles": "employees",
        "Server1.Connect": "/org/vpnd/Daemon/connections/",
        "State Error": 's "',
        "GetAll": "'State'",
    }
    for mark, text in blocks:
        if "Connect" in text and "Disconnect" not in text:
            # The last example's connection has ended (no tunnel here) or ends now.
            ok(vpnctl(["disconnect"], env))
        if mark == "follow":
            follower = terminal.start(text)
            try:
                follower.wait_for(r"Monitoring bus message stream|following vpnd")
                ok(vpnctl(["add", f"https://localhost:{portal.port}/"], env))
                ok(vpnctl(["remove", "localhost"], env))
                follower.wait_for(r"InterfacesRemoved|removed /org/vpnd/Daemon/servers/")
            finally:
                follower.stop()
            continue
        result = terminal.run(text)
        if mark == "fails":
            assert result.returncode != 0, (text, result.stdout)
            assert "org.vpnd.Error.NotFound" in result.stderr, (text, result.stderr)
            continue
        assert result.returncode == 0, (text, result.stdout, result.stderr)
        for call, printed in expected.items():
            if call in text:
                assert printed in result.stdout, (text, result.stdout)
        if "Authorize" in text:
            [url] = re.findall(r'"(https://[^"]+)"', result.stdout)
            approve(url, ca_file=str(lab_pki.ca_path))
            assert signals.wait_for("AuthorizationFinished")[0] is True
    # The last example removed the server.
    assert ok(vpnctl(["list", "--json"], env)).count(portal.base_url) == 0


def test_the_applet_example_follows_servers_and_connections(
    vpnd: VpndProcess,
    portal: TestPortal,
    env: dict[str, str],
    lab_pki: LabPKI,
) -> None:
    ok(vpnctl(["add", f"https://localhost:{portal.port}/"], env))
    applet = Follower([sys.executable, str(APPLET)], env)
    try:
        applet.wait_for(r"^have /org/vpnd/Daemon/servers/\w+ server localhost authorized=False$")
        applet.wait_for(r"^following vpnd: 1 objects$")
        ok(vpnctl(["add", portal.base_url], env))
        server = applet.wait_for(rf"^added /org/vpnd/Daemon/servers/\w+ server {portal.host} ")
        path = server.split()[1]
        ok(vpnctl(["login", portal.host], env))
        applet.wait_for(rf"^changed {path} .*AuthorizationPending=True")
        applet.wait_for(rf"^changed {path} .*Authorized=True")
        # No openvpn server answers on the bus lab; the applet is followed while
        # the daemon keeps trying, so vpnctl need not wait for the end.
        vpnctl(["connect", portal.host, "--profile", "employees", "--timeout", "1"], env)
        applet.wait_for(rf"^added /org/vpnd/Daemon/connections/1 connection {portal.base_url} ")
        applet.wait_for(r"^changed /org/vpnd/Daemon ActiveConnection='/org/vpnd/Daemon/conn")
        applet.wait_for(r"^changed /org/vpnd/Daemon/connections/1 .*State='(connecting|failed)'")
        ok(vpnctl(["remove", "localhost"], env))
        applet.wait_for(r"^removed /org/vpnd/Daemon/servers/\w+$")
    finally:
        applet.stop()
