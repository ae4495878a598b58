"""Secrets stay in the daemon: a whole session, and everything it shows the world searched for them.

The secrets are taken where they are made, on the portal's side: every
access and refresh token it grants, every authorization code it issues, every
PKCE verifier it is sent, every client key it issues (the PEM, its base64 body
and each of its lines) and the tls-crypt key in the profiles. The session runs
through the real daemon, vpnctl, the portal and an openvpn server: add, a
login whose callback carries a forged state, a login, profiles, connect, ping,
status, a token refresh, revoked tokens, disconnect, remove. What is searched:

- the daemon's whole log at debug level;
- every message on the private bus, taken by a monitor connection
  (BecomeMonitor) opened before the session;
- what vpnctl printed, stdout and stderr, for every command (the lab browser
  it starts prints into the same streams);
- openvpn's arguments and environment while it is connected;
- the files in the runtime directory, and the state directory, which holds
  tokens only sealed.

The same session runs twice: once with the daemon as the other tests start
it, once as vpnd.service under a real systemd (tests/lab/vpnd_unit.py),
where the unit's whole sandbox is in force and openvpn runs in a transient
unit of its own; there the log is the daemon's journal and the bus is the
world's system bus. tests/e2e/test_systemd.py checks that sandbox itself.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from jeepney import DBusAddress, HeaderFields, MessageType, new_method_call, new_signal
from jeepney.io.blocking import DBusConnection, open_dbus_connection

from tests.lab.daemon import VpndProcess, ok, ping, vpnctl
from tests.lab.dbus import PrivateSystemBus
from tests.lab.netns import OpenVPNLab
from tests.lab.pki import LabPKI
from tests.lab.portal import TestPortal
from tests.lab.vpnd_unit import UnitDaemon

pytestmark = pytest.mark.e2e

# Windows this long out of every secret are searched too: a secret cut,
# wrapped, quoted or escaped still shows one of them.
WINDOW = 16


# -- the secrets, recorded where the portal makes them -------------------------


class Secrets:
    """Every secret the portal handed out or was sent during one test, by kind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_kind: dict[str, list[str]] = {}
        self._whole_only: set[str] = set()

    def add(self, kind: str, value: str) -> None:
        """Record one secret; blanks and repeats are ignored."""
        value = value.strip()
        if not value:
            return
        with self._lock:
            values = self.by_kind.setdefault(kind, [])
            if value not in values:
                values.append(value)

    def add_static_key(self, kind: str, text: str) -> None:
        """A key block whose every line is secret (openvpn's static keys): whole, joined, lines."""
        self.add(kind, text)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        body = [line for line in lines if not line.startswith(("-----", "#"))]
        self.add(f"{kind} (body)", "".join(body))
        for line in body:
            self.add(f"{kind} (body line)", line)

    def add_private_key(self, kind: str, pem: str) -> None:
        """A private key PEM: the whole text and base64 body, and the parts of it that are secret.

        Header lines and the public key inside a PKCS#8 key are not secret
        (the certificate carries the same bytes), so pieces are taken only
        from base64 text that encodes private numbers alone, whole lines or
        windows of them."""
        self._whole_only |= {kind, f"{kind} (base64 body)"}
        self.add(kind, pem)
        lines = [line.strip() for line in pem.splitlines() if line.strip()]
        body = [line for line in lines if not line.startswith("-----")]
        joined = "".join(body)
        self.add(f"{kind} (base64 body)", joined)
        der = base64.b64decode(joined)
        key = serialization.load_pem_private_key(pem.encode(), password=None)
        spans = []  # [start, end) in `joined` that encode private bytes only
        for private in _private_numbers(key):
            offset = der.find(private)
            assert offset >= 0, "a private number is not where PKCS#8 puts it"
            self.add(f"{kind} (private number, hex)", private.hex())
            first_group = -(-offset // 3)
            last_group = (offset + len(private)) // 3
            spans.append((first_group * 4, last_group * 4))
        for start, end in spans:
            for at in range(start, end - WINDOW + 1, WINDOW):
                self.add(f"{kind} (private part)", joined[at : at + WINDOW])
        line_start = 0
        for line in body:
            line_end = line_start + len(line)
            for start, end in spans:
                inside_start, inside_end = max(start, line_start), min(end, line_end)
                if inside_end - inside_start >= WINDOW:
                    self.add(f"{kind} (body line)", line)
                    piece = line[inside_start - line_start : inside_end - line_start]
                    for at in range(0, len(piece) - WINDOW + 1, WINDOW):
                        self.add(f"{kind} (private part of a line)", piece[at : at + WINDOW])
            line_start = line_end

    def count(self, kind: str) -> int:
        """How many secrets of `kind` were recorded."""
        with self._lock:
            return len(self.by_kind.get(kind, []))

    def needles(self) -> list[tuple[str, str]]:
        """(kind, text) to search for: each secret, URL-quoted, and windows of it."""
        with self._lock:
            items = [(kind, value) for kind, values in self.by_kind.items() for value in values]
        needles: dict[str, str] = {}
        for kind, value in items:
            needles.setdefault(value, kind)
            needles.setdefault(quote(value, safe=""), kind)
            # A private key's whole text and body hold public parts too: its
            # windows are recorded as such (add_private_key), not cut here.
            if len(value) >= WINDOW and kind not in self._whole_only:
                for start in (0, (len(value) - WINDOW) // 2, len(value) - WINDOW):
                    needles.setdefault(value[start : start + WINDOW], kind)
        return [(kind, needle) for needle, kind in needles.items()]


def _private_numbers(key: PrivateKeyTypes) -> list[bytes]:
    """The secret numbers of a private key, as big-endian bytes the way DER holds them."""

    def unsigned(number: int) -> bytes:
        return number.to_bytes(max(1, (number.bit_length() + 7) // 8), "big")

    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = (key.curve.key_size + 7) // 8
        return [key.private_numbers().private_value.to_bytes(size, "big")]
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.private_numbers()
        return [unsigned(numbers.d), unsigned(numbers.p), unsigned(numbers.q)]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return [key.private_bytes_raw()]
    raise TypeError(f"no private numbers known for {type(key).__name__}")


def record_portal_secrets(
    portal: TestPortal, lab_pki: LabPKI, monkeypatch: pytest.MonkeyPatch
) -> Secrets:
    """Wrap the portal's token, code and key issuers (on the instances) to record what they issue."""
    secrets = Secrets()
    secrets.add_static_key("tls-crypt key", lab_pki.tls_crypt_key)

    issue_client = portal.pki.issue_client

    def recording_issue_client(*args: Any, **kwargs: Any) -> tuple[str, str]:
        cert_pem, key_pem = issue_client(*args, **kwargs)
        secrets.add_private_key("client private key", key_pem)
        return cert_pem, key_pem

    authorize_decision = portal._authorize_decision

    def recording_authorize_decision(params: dict[str, str], headers: dict[str, str]) -> Any:
        reply = authorize_decision(params, headers)
        location = reply.headers.get("Location", "")
        for code in parse_qs(urlsplit(location).query).get("code", []):
            secrets.add("authorization code", code)
        return reply

    redeem_code = portal._redeem_code

    def recording_redeem_code(params: dict[str, str]) -> Any:
        secrets.add("authorization code", params.get("code", ""))
        secrets.add("PKCE verifier", params.get("code_verifier", ""))
        return redeem_code(params)

    redeem_refresh_token = portal._redeem_refresh_token

    def recording_redeem_refresh_token(params: dict[str, str]) -> Any:
        secrets.add("refresh token", params.get("refresh_token", ""))
        return redeem_refresh_token(params)

    token = portal._token

    def recording_token(params: dict[str, str], headers: dict[str, str]) -> Any:
        reply = token(params, headers)
        if reply.status == 200:
            document = json.loads(reply.body)
            secrets.add("access token", document["access_token"])
            secrets.add("refresh token", document["refresh_token"])
        return reply

    monkeypatch.setattr(portal.pki, "issue_client", recording_issue_client)
    monkeypatch.setattr(portal, "_authorize_decision", recording_authorize_decision)
    monkeypatch.setattr(portal, "_redeem_code", recording_redeem_code)
    monkeypatch.setattr(portal, "_redeem_refresh_token", recording_redeem_refresh_token)
    monkeypatch.setattr(portal, "_token", recording_token)
    return secrets


# -- everything the session shows ----------------------------------------------


class Capture:
    """Named texts to search: logs, bus traffic, command output, process details, files."""

    def __init__(self) -> None:
        self.sources: list[tuple[str, str]] = []

    def add(self, name: str, text: str | bytes) -> None:
        """Add one text; bytes are read as Latin-1 so that every byte survives."""
        if isinstance(text, bytes):
            text = text.decode("latin-1")
        self.sources.append((name, text))

    def vpnctl(self, args: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
        """Run vpnctl and keep what it printed."""
        result = vpnctl(args, env)
        command = "vpnctl " + " ".join(args)
        self.add(f"{command}: stdout", result.stdout)
        self.add(f"{command}: stderr", result.stderr)
        return result

    def files(self, label: str, directory: Path) -> None:
        """Names and contents of every regular file under `directory`."""
        for path in sorted(directory.rglob("*")):
            self.add(f"{label}: name", str(path.relative_to(directory)))
            if path.is_file() and not path.is_symlink():
                self.add(f"{label}: {path.relative_to(directory)}", path.read_bytes())

    def leaks(self, secrets: Secrets) -> list[str]:
        """Where a secret (or a window of one) shows: once per kind and source, masked."""
        needles = secrets.needles()
        found: dict[tuple[str, str], str] = {}
        for kind, needle in needles:
            for name, text in self.sources:
                at = text.find(needle)
                if at < 0 or (kind, name) in found:
                    continue
                context = text[max(0, at - 60) : at + len(needle) + 60]
                # Longest first, so a whole secret is masked before its windows.
                for other_kind, other in sorted(needles, key=lambda item: -len(item[1])):
                    context = context.replace(other, f"<{other_kind}>")
                found[(kind, name)] = f"{kind} in {name}: …{context!r}…"
        return list(found.values())


def _strings(value: Any) -> Iterator[str]:
    """Every string, byte string and number inside a message body, flattened."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, bytes | bytearray):
        yield bytes(value).decode("latin-1")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)
    else:
        yield str(value)


class BusMonitor:
    """Every message on a bus, seen through a monitor connection (BecomeMonitor)."""

    _MARKER_INTERFACE = "org.vpnd.Test.SecretsMonitor"

    def __init__(self, address: str) -> None:
        self._address = address
        self._connection: DBusConnection = open_dbus_connection(address)
        self.messages: list[tuple[str, str, str]] = []  # (type, member, flattened text)
        self._stop = threading.Event()
        self._marker = ""
        self._marker_seen = threading.Event()
        become = new_method_call(
            DBusAddress(
                "/org/freedesktop/DBus",
                bus_name="org.freedesktop.DBus",
                interface="org.freedesktop.DBus.Monitoring",
            ),
            "BecomeMonitor",
            "asu",
            ([], 0),
        )
        reply = self._connection.send_and_get_reply(become, timeout=10)
        if reply.header.message_type is MessageType.error:
            raise RuntimeError(f"BecomeMonitor failed: {reply.body}")
        # From the reply on, the bus copies every message here.
        self._thread = threading.Thread(target=self._run, name="bus-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._connection.receive(timeout=0.2)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = message.header.fields
            member = str(fields.get(HeaderFields.member, ""))
            text = "\n".join([*_strings(list(fields.values())), *_strings(message.body)])
            self.messages.append((message.header.message_type.name, member, text))
            if self._marker and fields.get(HeaderFields.member) == self._marker:
                self._marker_seen.set()

    def stop(self) -> None:
        """Send a marker signal, wait until the monitor has seen it, and close."""
        self._marker = f"Marker{os.getpid()}x{time.monotonic_ns()}"
        sender = open_dbus_connection(self._address)
        try:
            sender.send(
                new_signal(
                    DBusAddress("/org/vpnd/Test", interface=self._MARKER_INTERFACE), self._marker
                )
            )
            seen = self._marker_seen.wait(10)
        finally:
            sender.close()
            self._stop.set()
            self._thread.join(5)
            self._connection.close()
        assert seen, "the bus monitor did not see its own marker: it was not capturing"

    def text(self) -> str:
        """All captured messages, one block each."""
        return "\n\n".join(f"{kind} {member}\n{text}" for kind, member, text in self.messages)

    def calls(self, member: str) -> list[str]:
        """The flattened text of each method call named `member`."""
        return [
            text for kind, name, text in self.messages if kind == "method_call" and name == member
        ]


# -- helpers -------------------------------------------------------------------


def forging_browser(directory: Path, browser: str) -> Path:
    """A $BROWSER that changes the state in the authorization URL, then approves as usual.

    The portal echoes the forged state into the callback, so the daemon gets
    a callback with a valid code that does not belong to its request."""
    path = directory / "forging-browser"
    path.write_text(
        "#!/bin/sh\n"
        "url=$(printf '%s' \"$1\" | sed 's/\\([?&]state=\\)[^&]*/\\1forged-state/')\n"
        f'exec {browser} "$url"\n'
    )
    path.chmod(0o755)
    return path


# -- fixtures ------------------------------------------------------------------


@pytest.fixture(params=["plain", "systemd"])
def session(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    private_bus: PrivateSystemBus,
    lab_pki: LabPKI,
    client_env: dict[str, str],
) -> Iterator[tuple[VpndProcess | UnitDaemon, str, dict[str, str]]]:
    """(daemon, its bus address, vpnctl's environment): vpnd as the other tests
    run it, and as vpnd.service under a real systemd (tests/lab/vpnd_unit.py)."""
    if request.param == "systemd":
        unit_daemon: UnitDaemon = request.getfixturevalue("unit_daemon")
        yield unit_daemon, unit_daemon.bus_address, unit_daemon.env(client_env)
        return
    process = VpndProcess(tmp_path / "vpnd", private_bus.env({}), ca_file=lab_pki.ca_path)
    process.start()
    yield process, private_bus.address, client_env
    status = process.stop()
    assert status == 0, process.log()
    assert "Traceback" not in process.log(), process.log()


# -- the tests -----------------------------------------------------------------


def test_a_whole_session_leaks_no_secret(
    session: tuple[VpndProcess | UnitDaemon, str, dict[str, str]],
    portal: TestPortal,
    openvpn_lab: OpenVPNLab,
    lab_pki: LabPKI,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    daemon, bus_address, env = session
    secrets = record_portal_secrets(portal, lab_pki, monkeypatch)
    capture = Capture()
    monitor = BusMonitor(bus_address)
    host = portal.host
    try:
        ok(capture.vpnctl(["add", portal.base_url], env))

        # A callback with a real code and a forged state: refused before
        # the code is redeemed.
        forged = {**env, "BROWSER": str(forging_browser(tmp_path, env["BROWSER"]))}
        result = capture.vpnctl(["login", host], forged)
        assert result.returncode != 0, result.stdout
        assert "state" in result.stderr
        assert secrets.count("authorization code") == 1
        assert portal.token_grants == []

        ok(capture.vpnctl(["login", host], env))
        assert portal.token_grants == ["authorization_code"]
        ok(capture.vpnctl(["list", "--json"], env))
        ok(capture.vpnctl(["profiles", host], env))

        ok(capture.vpnctl(["connect", host, "--profile", "employees"], env))
        assert ping(openvpn_lab.tunnel_gateway_udp)
        ok(capture.vpnctl(["status", "--json"], env))
        ok(capture.vpnctl(["status"], env))
        pid = daemon.openvpn_pid()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        capture.add("openvpn argv", argv)
        capture.add("openvpn environment", Path(f"/proc/{pid}/environ").read_bytes())
        capture.files("runtime dir while connected", daemon.runtime_dir)
        # The config reaches openvpn on a pipe, where this test cannot look;
        # the key is not in it: openvpn asked the daemon for a signature.
        assert "signed for openvpn" in daemon.log(), (
            "openvpn was given the private key itself (DESIGN.md: signatures only)"
        )
        ok(capture.vpnctl(["disconnect"], env))

        # An expired access token is refreshed: the refresh token travels too.
        portal.expire_access_tokens()
        ok(capture.vpnctl(["profiles", host], env))
        assert portal.token_grants == ["authorization_code", "refresh_token"]

        # Revoked everything: the daemon asks for a new login.
        portal.revoke_all()
        result = capture.vpnctl(["profiles", host], env)
        assert result.returncode == 3, result.stderr  # 3: log in again
        result = capture.vpnctl(["connect", host, "--profile", "employees"], env)
        assert result.returncode == 3, result.stderr

        capture.files("runtime dir after the session", daemon.runtime_dir)
        state = Capture()
        state.files("state dir", daemon.state_dir)
        ok(capture.vpnctl(["remove", host], env))
    finally:
        monitor.stop()
    capture.add("vpnd log", daemon.log())
    if isinstance(daemon, UnitDaemon):
        # systemd's own messages about the daemon's and openvpn's units too.
        capture.add("the journal", daemon.world.journal())
    capture.add("D-Bus traffic", monitor.text())

    # The recording and the monitor really saw the session.
    assert secrets.count("access token") == 2
    assert secrets.count("refresh token") == 2
    assert secrets.count("authorization code") == 2
    assert secrets.count("PKCE verifier") == 1
    assert secrets.count("client private key") == 1
    assert secrets.count("client private key (private part)") >= 2
    assert any(portal.base_url in call for call in monitor.calls("AddServer"))
    assert monitor.calls("Authorize") and monitor.calls("Connect")
    assert "org.vpnd.Error.AuthorizationRequired" in monitor.text()

    leaks = capture.leaks(secrets)
    assert not leaks, "\n".join(leaks)
    # The state directory holds tokens only sealed (daemon/vpnd/store/):
    # neither a token nor key material may be readable in its files.
    sealed = state.leaks(secrets)
    assert not sealed, "\n".join(sealed)
