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
it, once inside an emulation of the sandbox `data/systemd/vpnd.service`
describes (`enter_unit_sandbox`): capability bounding set, no new
privileges, the system call filter, address families, W^X memory,
namespaces, a private /dev with only the tun device, /proc with other users'
processes hidden, a read-only system, a private /tmp, and the umask. PID 1
here is not systemd, so the unit itself cannot be started; this is the
closest check that vpnd and openvpn can live with it. Every setting of the
unit is either emulated or listed with the reason it is not, and the
confined daemon also has to stop an openvpn that answers nothing (CAP_KILL).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
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

from tests.lab.daemon import VpndProcess, ok, vpnctl
from tests.lab.dbus import PrivateSystemBus
from tests.lab.netns import OpenVPNLab
from tests.lab.pki import LabPKI
from tests.lab.portal import TestPortal

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "data" / "systemd" / "vpnd.service"

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


def openvpn_pid(daemon: VpndProcess) -> int:
    out = subprocess.run(
        ["pgrep", "-P", str(daemon.pid), "-x", "openvpn"],
        capture_output=True,
        text=True,
        check=False,
    )
    pids = [int(pid) for pid in out.stdout.split()]
    assert len(pids) == 1, f"openvpn children of vpnd: {pids}"
    return pids[0]


def ping(address: str) -> bool:
    return (
        subprocess.run(
            ["ping", "-c", "1", "-W", "3", address], capture_output=True, check=False
        ).returncode
        == 0
    )


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


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


# -- the unit's sandbox, emulated ----------------------------------------------

SANDBOX_ENV = "VPND_TEST_UNIT_SANDBOX"

# Settings of the unit that enter_unit_sandbox applies.
EMULATED = {
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "NoNewPrivileges",
    "RestrictAddressFamilies",
    "PrivateDevices",
    "BindReadOnlyPaths",
    "BindPaths",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateMounts",
    "PrivateIPC",
    "ProtectProc",
    "ProcSubset",
    "ProtectKernelTunables",
    "ProtectControlGroups",
    "RestrictNamespaces",
    "LockPersonality",
    "MemoryDenyWriteExecute",
    "SystemCallArchitectures",
    "SystemCallFilter",
    "SystemCallErrorNumber",
    "UMask",
}
# Settings it leaves out, and why that is acceptable.
NOT_EMULATED = {
    # The service manager's side: VpndProcess gives the daemon a notify
    # socket, its own directories and a stop signal the same way.
    "Type": "VpndProcess waits for READY=1 itself",
    "NotifyAccess": "VpndProcess's notify socket takes the main process's messages",
    "BusName": "only for bus activation",
    "ExecStart": "the test runs the daemon from the source tree",
    "Restart": "service manager policy",
    "RestartSec": "service manager policy",
    "TimeoutStopSec": "VpndProcess has its own stop timeout",
    "StateDirectory": "the test passes --state-dir (writable, as here)",
    "StateDirectoryMode": "the daemon's own mkdir uses 0700 as well",
    "RuntimeDirectory": "the test passes --runtime-dir (writable, as here)",
    "RuntimeDirectoryMode": "the daemon's own mkdir uses 0700 as well",
    "RuntimeDirectoryPreserve": "about restarts, which the test does not do",
    "ConfigurationDirectory": "the test passes --config",
    # Covered by other settings here, or not reproducible without systemd.
    "DevicePolicy": "the device cgroup needs systemd; the private /dev holds only allowed nodes",
    "DeviceAllow": "the device cgroup needs systemd; the private /dev holds only allowed nodes",
    "ProtectKernelModules": "no CAP_SYS_MODULE (bounding set) and @module is filtered",
    "ProtectKernelLogs": "no CAP_SYSLOG, no /dev/kmsg, /proc/kmsg hidden by ProcSubset",
    "ProtectClock": "no CAP_SYS_TIME and @clock is filtered",
    "ProtectHostname": "no CAP_SYS_ADMIN and sethostname is filtered",
    "KeyringMode": "the daemon uses no kernel keyring",
    "RestrictRealtime": "the scheduler calls are filtered with @resources",
    "RestrictSUIDSGID": "the daemon creates no set-id files; needs chmod argument filters",
}

_CAP_HEADER_VERSION_3 = 0x20080522
_PR_CAPBSET_READ = 23
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_NAMESPACE_FLAGS = (
    0x00000080,  # CLONE_NEWTIME
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_MOVE = 8192
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_MS_STRICTATIME = 1 << 24
_OPTION_FLAGS = {"nosuid": _MS_NOSUID, "nodev": _MS_NODEV, "noexec": _MS_NOEXEC}
_PROT_WRITE = 2
_PROT_EXEC = 4
_SHM_EXEC = 0o100000
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_CMP_EQ = 4
_SCMP_CMP_GE = 5
_SCMP_CMP_MASKED_EQ = 7
_SCMP_CMP_NE = 1
# What systemd's private /dev holds besides the nodes a unit binds in.
_PSEUDO_DEVICES = {
    "null": (1, 3),
    "zero": (1, 5),
    "full": (1, 7),
    "random": (1, 8),
    "urandom": (1, 9),
    "tty": (5, 0),
}


def _scmp_errno(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


class _ScmpArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def unit_service_settings(path: Path = UNIT) -> list[tuple[str, str]]:
    """The [Service] section of the unit as (key, value) pairs in order."""
    settings: list[tuple[str, str]] = []
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service":
            key, _, value = line.partition("=")
            settings.append((key.strip(), value.strip()))
    return settings


def syscall_groups() -> dict[str, list[str]]:
    """systemd's system call groups (`systemd-analyze syscall-filter`), members unexpanded."""
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        if not line.startswith((" ", "\t")):
            current = groups.setdefault(item, []) if item.startswith("@") else None
        elif current is not None:
            current.append(item)
    return groups


def allowed_syscalls(filters: list[str], groups: Mapping[str, list[str]]) -> set[str]:
    """The allow list systemd builds from SystemCallFilter= lines (an allow list first)."""

    def expand(name: str) -> set[str]:
        if not name.startswith("@"):
            return {name}
        return set().union(*(expand(member) for member in groups[name]))

    allowed: set[str] = set()
    for index, line in enumerate(filters):
        deny = line.startswith("~")
        names = line.removeprefix("~").split()
        if index == 0:
            assert not deny, "the emulation handles a unit whose first filter is an allow list"
            # systemd adds @default to an allow list by itself.
            allowed |= expand("@default")
        for name in names:
            if deny:
                allowed -= expand(name)
            else:
                allowed |= expand(name)
    return allowed


class _Sandbox:
    """The system calls enter_unit_sandbox makes, through libc, libcap and libseccomp."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]
        self.libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
        self.libcap = ctypes.CDLL(ctypes.util.find_library("cap") or "libcap.so.2", use_errno=True)
        self.libcap.cap_from_name.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)]
        seccomp = ctypes.CDLL(
            ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True
        )
        seccomp.seccomp_init.restype = ctypes.c_void_p
        seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
        seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        seccomp.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(_ScmpArgCmp),
        ]
        seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
        seccomp.seccomp_release.argtypes = [ctypes.c_void_p]
        self.seccomp = seccomp

    def check(self, result: int, what: str) -> None:
        if result < 0:
            number = ctypes.get_errno() or -result
            raise OSError(number, f"{what}: {os.strerror(number)}")

    def mount(
        self,
        source: str | None,
        target: str,
        fstype: str | None,
        flags: int,
        data: str | None = None,
    ) -> None:
        self.check(
            self.libc.mount(
                source.encode() if source else None,
                target.encode(),
                fstype.encode() if fstype else None,
                flags,
                data.encode() if data else None,
            ),
            f"mount {target}",
        )

    def prctl(self, option: int, arg: int = 0, what: str = "prctl") -> int:
        result = int(self.libc.prctl(option, arg, 0, 0, 0))
        self.check(result, what)
        return result

    def capability(self, name: str) -> int:
        value = ctypes.c_int()
        self.check(self.libcap.cap_from_name(name.lower().encode(), ctypes.byref(value)), name)
        return value.value

    def set_capabilities(self, keep: set[int]) -> None:
        """Bounding set, then effective/permitted, to `keep`; inheritable and ambient empty."""
        cap = 0
        while self.libc.prctl(_PR_CAPBSET_READ, cap, 0, 0, 0) >= 0:
            if cap not in keep:
                self.prctl(_PR_CAPBSET_DROP, cap, f"dropping capability {cap}")
            cap += 1
        self.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, "clearing ambient capabilities")
        mask = sum(1 << cap for cap in keep)
        header = (ctypes.c_uint32 * 2)(_CAP_HEADER_VERSION_3, 0)
        data = (ctypes.c_uint32 * 6)(
            mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, 0, mask >> 32, mask >> 32, 0
        )
        self.check(self.libc.capset(header, data), "capset")

    def load_filter(
        self, default: int, rules: list[tuple[int, str, list[tuple[int, int, int, int]]]]
    ) -> None:
        """One seccomp filter: `default` action, rules of (action, syscall, comparisons)."""
        context = self.seccomp.seccomp_init(default)
        if not context:
            raise OSError(errno.EINVAL, "seccomp_init failed")
        try:
            for action, name, comparisons in rules:
                number = self.seccomp.seccomp_syscall_resolve_name(name.encode())
                if number < 0:
                    continue  # not a system call of this architecture
                array = (_ScmpArgCmp * max(1, len(comparisons)))(
                    *(_ScmpArgCmp(arg, op, a, b) for arg, op, a, b in comparisons)
                )
                result = self.seccomp.seccomp_rule_add_array(
                    context, action, number, len(comparisons), array
                )
                self.check(result, f"seccomp rule for {name}")
            self.check(self.seccomp.seccomp_load(context), "seccomp_load")
        finally:
            self.seccomp.seccomp_release(context)


def _mount_table() -> list[tuple[str, set[str]]]:
    """(mount point, per-mount options) of every mount this process sees."""
    table = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = re.sub(r"\\([0-7]{3})", lambda match: chr(int(match[1], 8)), fields[4])
        table.append((point, set(fields[5].split(","))))
    return table


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def enter_unit_sandbox() -> None:
    """Confine this process (the daemon, before it starts) as the unit's [Service] says.

    Called from a sitecustomize module in the daemon's PYTHONPATH, with
    SANDBOX_ENV set to JSON: {"unit": path, "read_write": [directories the
    unit makes writable], "keep": [what the daemon needs from the test's
    /tmp]}. Every setting of the unit must be in EMULATED or NOT_EMULATED.
    """
    spec = json.loads(os.environ.pop(SANDBOX_ENV))
    settings = unit_service_settings(Path(spec["unit"]))
    read_write: list[str] = spec["read_write"]
    unknown = {key for key, _ in settings} - EMULATED - set(NOT_EMULATED)
    if unknown:
        raise RuntimeError(f"the emulation does not know these settings: {sorted(unknown)}")

    def last(key: str, default: str = "") -> str:
        found = [value for name, value in settings if name == key]
        return found[-1] if found else default

    def every(key: str) -> list[str]:
        return [value for name, value in settings if name == key]

    def yes(key: str) -> bool:
        return last(key, "no").lower() in {"yes", "true", "1", "on"}

    box = _Sandbox()
    groups = syscall_groups()  # systemd-analyze runs before anything is taken away
    staging_dirs: list[Path] = []

    def scratch(name: str) -> Path:
        """An empty directory outside /tmp and /dev to build a mount in before moving it."""
        path = Path(f"/run/vpnd-test-{name}-{os.getpid()}")
        path.mkdir(mode=0o755)
        staging_dirs.append(path)
        return path

    try:
        # Mounts: a private namespace, like every unit with file system settings.
        box.check(box.libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        box.mount(None, "/", None, _MS_REC | _MS_PRIVATE)
        if yes("PrivateIPC"):
            box.check(box.libc.unshare(_CLONE_NEWIPC), "unshare(CLONE_NEWIPC)")
        binds = [(path, True) for line in every("BindReadOnlyPaths") for path in line.split()]
        binds += [(path, False) for line in every("BindPaths") for path in line.split()]

        if yes("PrivateDevices"):
            staging = scratch("dev")
            box.mount(
                "tmpfs",
                str(staging),
                "tmpfs",
                _MS_NOSUID | _MS_NOEXEC | _MS_STRICTATIME,
                "mode=755",
            )
            for name, (major, minor) in _PSEUDO_DEVICES.items():
                os.mknod(staging / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            for name, target in {
                "fd": "/proc/self/fd",
                "stdin": "/proc/self/fd/0",
                "stdout": "/proc/self/fd/1",
                "stderr": "/proc/self/fd/2",
            }.items():
                os.symlink(target, staging / name)
            (staging / "shm").mkdir(mode=0o1777)
            for path, read_only in binds:
                if not _under(path, "/dev"):
                    continue
                target = staging / Path(path).relative_to("/dev")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
                box.mount(path, str(target), None, _MS_BIND)
                if read_only:
                    box.mount(None, str(target), None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY)
            box.mount(str(staging), "/dev", None, _MS_MOVE)
            staging.rmdir()
            box.mount(None, "/dev", None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NOEXEC)
            binds = [(path, read_only) for path, read_only in binds if not _under(path, "/dev")]
        for path, read_only in binds:
            box.mount(path, path, None, _MS_BIND)
            if read_only:
                box.mount(None, path, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY)

        private_tmp = ["/tmp", "/var/tmp"] if yes("PrivateTmp") else []
        if private_tmp:
            # A fresh /tmp, into which what the daemon needs from the test's
            # /tmp (its directories, the CA, the bus socket) is bound first.
            staging = scratch("tmp")
            box.mount("tmpfs", str(staging), "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=1777")
            for path in spec["keep"]:
                target = staging / Path(path).relative_to("/tmp")
                if Path(path).is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.touch()
                box.mount(path, str(target), None, _MS_BIND | _MS_REC)
            box.mount(str(staging), "/tmp", None, _MS_MOVE)
            staging.rmdir()
            box.mount("tmpfs", "/var/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=1777")

        # The capability numbers come from libcap, before /proc changes.
        keep = {
            box.capability(name) for line in every("CapabilityBoundingSet") for name in line.split()
        }

        proc_options = []
        if last("ProtectProc", "default") != "default":
            proc_options.append(f"hidepid={last('ProtectProc')}")
        if last("ProcSubset", "all") != "all":
            proc_options.append(f"subset={last('ProcSubset')}")
        if proc_options:
            box.mount(
                "proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, ",".join(proc_options)
            )

        hidden: list[str] = []
        if last("ProtectHome", "no") == "yes":
            # /root only when the interpreter does not live there (pyenv does);
            # an installed vpnd lives in /usr.
            prefixes = (sys.base_prefix, sys.prefix)
            hidden = [
                path
                for path in ("/home", "/root", "/run/user")
                if Path(path).is_dir() and not any(_under(prefix, path) for prefix in prefixes)
            ]
            for path in hidden:
                box.mount(
                    "tmpfs",
                    path,
                    "tmpfs",
                    _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
                    "mode=000",
                )

        if last("ProtectSystem", "no") == "strict":
            for path in read_write:
                box.mount(path, path, None, _MS_BIND)
            for point, options in _mount_table():
                if "ro" in options or point in read_write or point in hidden + private_tmp:
                    continue
                if _under(point, "/proc") or _under(point, "/dev"):
                    continue
                if _under(point, "/sys") and not yes("ProtectKernelTunables"):
                    continue
                flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY
                for option in options:
                    flags |= _OPTION_FLAGS.get(option, 0)
                box.mount(None, point, None, flags)
        elif yes("ProtectKernelTunables") or yes("ProtectControlGroups"):
            raise RuntimeError("the emulation covers /sys only together with ProtectSystem=strict")

        os.umask(int(last("UMask", "0022"), 8))

        box.set_capabilities(keep)
        if yes("NoNewPrivileges"):
            box.prctl(_PR_SET_NO_NEW_PRIVS, 1, "no_new_privs")

        # System calls: one filter per setting, as systemd installs them; the
        # strictest answer of all filters wins. The allow list goes last: it
        # takes seccomp() itself away.
        families = {getattr(socket, name) for name in last("RestrictAddressFamilies").split()}
        if families:
            refuse = _scmp_errno(errno.EAFNOSUPPORT)
            rules = [
                (refuse, "socket", [(0, _SCMP_CMP_EQ, family, 0)])
                for family in range(64)
                if family not in families
            ]
            rules.append((refuse, "socket", [(0, _SCMP_CMP_GE, 64, 0)]))
            box.load_filter(_SCMP_ACT_ALLOW, rules)
        refuse = _scmp_errno(errno.EPERM)
        if yes("MemoryDenyWriteExecute"):
            wx = _PROT_WRITE | _PROT_EXEC
            box.load_filter(
                _SCMP_ACT_ALLOW,
                [
                    (refuse, "mmap", [(2, _SCMP_CMP_MASKED_EQ, wx, wx)]),
                    (refuse, "mprotect", [(2, _SCMP_CMP_MASKED_EQ, _PROT_EXEC, _PROT_EXEC)]),
                    (refuse, "pkey_mprotect", [(2, _SCMP_CMP_MASKED_EQ, _PROT_EXEC, _PROT_EXEC)]),
                    (refuse, "shmat", [(2, _SCMP_CMP_MASKED_EQ, _SHM_EXEC, _SHM_EXEC)]),
                ],
            )
        if yes("RestrictNamespaces"):
            rules = [
                (refuse, call, [(arg, _SCMP_CMP_MASKED_EQ, flag, flag)])
                for flag in _NAMESPACE_FLAGS
                for call, arg in (("unshare", 0), ("clone", 0), ("setns", 1))
            ]
            rules.append((refuse, "setns", [(1, _SCMP_CMP_EQ, 0, 0)]))
            # clone3 passes its flags in memory a filter cannot read; systemd
            # answers ENOSYS so that the C library falls back to clone.
            rules.append((_scmp_errno(errno.ENOSYS), "clone3", []))
            box.load_filter(_SCMP_ACT_ALLOW, rules)
        if yes("LockPersonality"):
            box.load_filter(_SCMP_ACT_ALLOW, [(refuse, "personality", [(0, _SCMP_CMP_NE, 0, 0)])])
        error_number = getattr(errno, last("SystemCallErrorNumber", "EPERM"))
        allowed = allowed_syscalls(every("SystemCallFilter"), groups)
        box.load_filter(
            _scmp_errno(error_number), [(_SCMP_ACT_ALLOW, name, []) for name in sorted(allowed)]
        )
    finally:
        # What a failure left behind (the host's /run is the same directory).
        for path in staging_dirs:
            with contextlib.suppress(OSError):
                path.rmdir()


SITECUSTOMIZE = """\
import os, sys, traceback
try:
    from tests.e2e.test_secrets import enter_unit_sandbox
    enter_unit_sandbox()
except BaseException:
    # site.py would print and carry on, unconfined: stop here instead.
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(70)
"""


def expected_bounding_set() -> int:
    """The unit's CapabilityBoundingSet= as the mask /proc/PID/status shows."""
    box = _Sandbox()
    return sum(
        1 << box.capability(name)
        for key, value in unit_service_settings()
        if key == "CapabilityBoundingSet"
        for name in value.split()
    )


# -- fixtures ------------------------------------------------------------------


@contextlib.contextmanager
def running_daemon(
    kind: str, tmp_path: Path, private_bus: PrivateSystemBus, lab_pki: LabPKI
) -> Iterator[VpndProcess]:
    """vpnd as the other tests run it ("plain"), or inside the unit's sandbox ("unit-sandbox")."""
    workdir = tmp_path / "vpnd"
    env = private_bus.env({})
    read_write = [workdir / "state", workdir / "run"]
    if kind == "unit-sandbox":
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        # StateDirectory= and RuntimeDirectory= exist before the unit starts.
        for directory in read_write:
            directory.mkdir(mode=0o700, parents=True)
        env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])
        bus_socket = private_bus.address.removeprefix("unix:path=").split(",")[0]
        # The code itself too, when the checkout lies under /tmp (as CI's may).
        keep = [workdir, lab_pki.ca_path, Path(bus_socket).parent, REPO]
        env[SANDBOX_ENV] = json.dumps(
            {
                "unit": str(UNIT),
                "read_write": [str(path) for path in read_write],
                "keep": [str(path) for path in keep if path.is_relative_to("/tmp")],
            }
        )
    process = VpndProcess(workdir, env, ca_file=lab_pki.ca_path)
    # The directories the sandbox makes writable are the ones the daemon gets.
    assert [process.state_dir, process.runtime_dir] == read_write
    process.start()
    yield process
    status = process.stop()
    assert status == 0, process.log()
    assert "Traceback" not in process.log(), process.log()


@pytest.fixture(params=["plain", "unit-sandbox"])
def daemon(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    private_bus: PrivateSystemBus,
    lab_pki: LabPKI,
) -> Iterator[VpndProcess]:
    """vpnd as the other tests run it, and inside the emulation of the unit's sandbox."""
    with running_daemon(request.param, tmp_path, private_bus, lab_pki) as process:
        yield process


@pytest.fixture
def confined_daemon(
    tmp_path: Path, private_bus: PrivateSystemBus, lab_pki: LabPKI
) -> Iterator[VpndProcess]:
    """vpnd inside the emulation of the unit's sandbox."""
    with running_daemon("unit-sandbox", tmp_path, private_bus, lab_pki) as process:
        yield process


# -- the tests -----------------------------------------------------------------


def test_every_unit_setting_is_emulated_or_explained() -> None:
    keys = {key for key, _ in unit_service_settings()}
    assert not keys - EMULATED - set(NOT_EMULATED)
    assert not EMULATED & set(NOT_EMULATED)


def test_a_whole_session_leaks_no_secret(
    request: pytest.FixtureRequest,
    daemon: VpndProcess,
    portal: TestPortal,
    openvpn_lab: OpenVPNLab,
    lab_pki: LabPKI,
    private_bus: PrivateSystemBus,
    client_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    secrets = record_portal_secrets(portal, lab_pki, monkeypatch)
    capture = Capture()
    monitor = BusMonitor(private_bus.address)
    env = client_env
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
        pid = openvpn_pid(daemon)
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        capture.add("openvpn argv", argv)
        capture.add("openvpn environment", Path(f"/proc/{pid}/environ").read_bytes())
        capture.files("runtime dir while connected", daemon.runtime_dir)
        # The config reaches openvpn on a pipe, where this test cannot look;
        # the key is not in it: openvpn asks the daemon for signatures.
        assert b"\0--management-external-key\0" in argv, (
            "openvpn was given the private key itself (DESIGN.md: signatures only)"
        )
        if request.node.callspec.params["daemon"] == "unit-sandbox":
            assert_confined(daemon.pid, pid)
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


def assert_confined(vpnd_pid: int, openvpn_pid: int) -> None:
    """The sandbox is really in force, in the daemon and in openvpn."""
    bounding = expected_bounding_set()
    assert os.readlink(f"/proc/{vpnd_pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    mounts = {
        fields[4]: fields
        for fields in (
            line.split() for line in Path(f"/proc/{vpnd_pid}/mountinfo").read_text().splitlines()
        )
    }
    assert "ro" in mounts["/"][5].split(",")
    assert {"hidepid=invisible", "subset=pid"} <= set(mounts["/proc"][-1].split(","))
    assert set(os.listdir(f"/proc/{vpnd_pid}/root/dev/net")) == {"tun"}
    assert not Path(f"/proc/{vpnd_pid}/root/dev/kmsg").exists()
    for pid in (vpnd_pid, openvpn_pid):
        status = proc_status(pid)
        assert int(status["CapBnd"], 16) == bounding, (pid, status["CapBnd"])
        assert status["NoNewPrivs"] == "1", pid
        assert status["Seccomp"] == "2", pid
        assert int(status["CapEff"], 16) & ~bounding == 0, (pid, status["CapEff"])
    # openvpn switched to its own user and kept CAP_NET_ADMIN alone.
    status = proc_status(openvpn_pid)
    assert status["Uid"].split()[0] != "0", status["Uid"]
    net_admin = 1 << 12
    assert int(status["CapEff"], 16) == net_admin, status["CapEff"]


def test_the_confined_daemon_stops_a_frozen_openvpn(
    confined_daemon: VpndProcess, portal: TestPortal, client_env: dict[str, str]
) -> None:
    # openvpn runs as another user and answers nothing: only a signal ends
    # it, and only CAP_KILL lets the daemon send one.
    env = client_env
    ok(vpnctl(["add", portal.base_url], env))
    ok(vpnctl(["login", portal.host], env))
    ok(vpnctl(["connect", portal.host, "--profile", "employees"], env))
    pid = openvpn_pid(confined_daemon)
    assert proc_status(pid)["Uid"].split()[0] != "0"
    os.kill(pid, signal.SIGSTOP)
    try:
        ok(vpnctl(["disconnect"], env))
        assert not Path(f"/proc/{pid}").exists()
    finally:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
