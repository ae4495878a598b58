"""The openvpn child process: start, fail, stop, and a real tunnel through the lab.

Every test checks what must be left behind: no process, no socket file, no
tun device.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.lab.netns import DATA_CIPHERS, OpenVPNLab, Remote, build_client_config
from tests.lab.pki import LabPKI
from vpnd.errors import TunnelFailed
from vpnd.protocols.management import ByteCountEvent, StateEvent
from vpnd.tunnel.openvpn import Tunnel, TunnelEvent, TunnelExited, TunnelSettings

pytestmark = pytest.mark.e2e

WAIT = 30.0  # the longest any step may take before the test gives up


@pytest.fixture
def needs_openvpn() -> None:
    if os.geteuid() != 0:
        pytest.skip("openvpn needs root for its tun device")
    if shutil.which("openvpn") is None:
        pytest.skip("openvpn is not installed")


class Recorder:
    """Collects a tunnel's events and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[TunnelEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: TunnelEvent) -> None:
        self.events.append(event)
        self._changed.set()

    @property
    def exits(self) -> list[TunnelExited]:
        return [e for e in self.events if isinstance(e, TunnelExited)]

    async def wait_for(self, predicate: Callable[[TunnelEvent], bool]) -> TunnelEvent:
        async with asyncio.timeout(WAIT):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                self._changed.clear()
                await self._changed.wait()

    async def exited(self) -> TunnelExited:
        event = await self.wait_for(lambda e: isinstance(e, TunnelExited))
        assert isinstance(event, TunnelExited)
        return event


MakeTunnel = Callable[[str, str, TunnelSettings], tuple[Tunnel, Recorder]]


@pytest.fixture
async def make_tunnel() -> AsyncIterator[MakeTunnel]:
    """Tunnels with their event recorders; whatever a test leaves running is stopped after it."""
    made: list[Tunnel] = []

    def make(name: str, config: str, settings: TunnelSettings) -> tuple[Tunnel, Recorder]:
        recorder = Recorder()
        made.append(Tunnel(name, config, settings, recorder))
        return made[-1], recorder

    yield make
    for tunnel in made:
        await tunnel.stop()


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def settings(runtime_dir: Path) -> TunnelSettings:
    return TunnelSettings(runtime_dir=runtime_dir)


def unused_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def unreachable_config(lab_pki: LabPKI, needs_openvpn: None) -> str:
    """A valid profile whose server does not exist: openvpn keeps trying to connect."""
    cert_pem, key_pem = lab_pki.issue_client("tunnel-test")
    return build_client_config(
        ca_pem=lab_pki.ca_pem,
        cert_pem=cert_pem,
        key_pem=key_pem,
        tls_crypt_key=lab_pki.tls_crypt_key,
        remotes=[Remote("127.0.0.1", unused_udp_port(), "udp")],
    )


def process_gone(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def assert_nothing_left(tunnel: Tunnel, runtime_dir: Path) -> None:
    assert process_gone(tunnel.pid)
    assert not tunnel.socket_path.exists()
    assert list(runtime_dir.iterdir()) == []


def tun_device_with(address: str) -> str | None:
    for entry in Path("/sys/class/net").iterdir():
        if not (entry / "tun_flags").exists():
            continue
        out = subprocess.run(
            ["ip", "-o", "-4", "addr", "show", "dev", entry.name],
            capture_output=True,
            text=True,
            check=False,
        )
        if f" {address}/" in out.stdout:
            return entry.name
    return None


async def test_a_config_openvpn_rejects_fails_start(
    unreachable_config: str, settings: TunnelSettings, runtime_dir: Path, make_tunnel: MakeTunnel
) -> None:
    config = unreachable_config.replace(DATA_CIPHERS, "FOO-BAR")
    tunnel, recorder = make_tunnel("rejected", config, settings)

    with pytest.raises(TunnelFailed) as raised:
        await tunnel.start()

    assert "data-ciphers" in raised.value.message
    [exited] = recorder.exits
    assert exited.returncode != 0
    assert not exited.requested
    assert "data-ciphers" in exited.reason
    assert_nothing_left(tunnel, runtime_dir)
    await tunnel.stop()
    assert len(recorder.exits) == 1


async def test_a_fatal_error_after_the_hold_is_reported(
    unreachable_config: str, settings: TunnelSettings, runtime_dir: Path, make_tunnel: MakeTunnel
) -> None:
    # A CA block that is not a certificate fails once openvpn sets up TLS.
    start = unreachable_config.index("<ca>\n") + len("<ca>\n-----BEGIN CERTIFICATE-----\n")
    config = unreachable_config[:start] + "AAAA" + unreachable_config[start + 4 :]
    tunnel, recorder = make_tunnel("badca", config, settings)

    try:
        await tunnel.start()
    except TunnelFailed as error:
        assert "CA certificate" in error.message
    exited = await recorder.exited()

    assert exited.returncode != 0
    assert not exited.requested
    assert "CA certificate" in exited.reason
    assert_nothing_left(tunnel, runtime_dir)


async def test_stop_while_connecting(
    unreachable_config: str, settings: TunnelSettings, runtime_dir: Path, make_tunnel: MakeTunnel
) -> None:
    tunnel, recorder = make_tunnel("connecting", unreachable_config, settings)
    await tunnel.start()
    assert tunnel.pid is not None and not process_gone(tunnel.pid)
    # The socket file is gone as soon as openvpn has connected to it.
    assert not tunnel.socket_path.exists()
    await recorder.wait_for(lambda e: isinstance(e, StateEvent))

    await tunnel.stop()

    [exited] = recorder.exits
    assert exited == TunnelExited(returncode=0, reason="stopped", requested=True)
    assert recorder.events[-1] is exited
    assert_nothing_left(tunnel, runtime_dir)
    await tunnel.stop()
    assert len(recorder.exits) == 1


@pytest.mark.parametrize("yields", [0, 1, 3, 10, 30, 100, 300])
async def test_stop_at_any_point_of_start(
    unreachable_config: str,
    settings: TunnelSettings,
    runtime_dir: Path,
    yields: int,
    make_tunnel: MakeTunnel,
) -> None:
    tunnel, recorder = make_tunnel("racing", unreachable_config, settings)
    starting = asyncio.create_task(tunnel.start())
    for _ in range(yields):
        await asyncio.sleep(0)  # let start() get that far, without waiting for time

    await tunnel.stop()

    try:
        await starting
    except TunnelFailed as error:
        assert "stopped" in error.message
    if tunnel.pid is None:
        assert recorder.exits == []
    else:
        [exited] = recorder.exits
        assert exited.requested
    assert_nothing_left(tunnel, runtime_dir)


@pytest.mark.parametrize("yields", [1, 10, 100, 300])
async def test_cancelling_start_cleans_up(
    unreachable_config: str,
    settings: TunnelSettings,
    runtime_dir: Path,
    yields: int,
    make_tunnel: MakeTunnel,
) -> None:
    tunnel, recorder = make_tunnel("cancelled", unreachable_config, settings)
    starting = asyncio.create_task(tunnel.start())
    for _ in range(yields):
        await asyncio.sleep(0)

    if not starting.cancel():
        # start() was already done: nothing left to cancel.
        await tunnel.stop()

    with contextlib.suppress(asyncio.CancelledError):
        await starting
    if tunnel.pid is not None:
        await recorder.exited()
        assert len(recorder.exits) == 1
    assert_nothing_left(tunnel, runtime_dir)


async def test_stop_kills_an_openvpn_that_does_not_listen(
    unreachable_config: str, settings: TunnelSettings, runtime_dir: Path, make_tunnel: MakeTunnel
) -> None:
    tunnel, recorder = make_tunnel("frozen", unreachable_config, settings)
    await tunnel.start()
    assert tunnel.pid is not None
    os.kill(tunnel.pid, signal.SIGSTOP)

    await tunnel.stop(timeout=1.0)

    [exited] = recorder.exits
    assert exited.returncode == -signal.SIGKILL
    assert exited.requested
    assert_nothing_left(tunnel, runtime_dir)


async def test_an_openvpn_killed_from_outside_is_reported(
    unreachable_config: str, settings: TunnelSettings, runtime_dir: Path, make_tunnel: MakeTunnel
) -> None:
    tunnel, recorder = make_tunnel("killed", unreachable_config, settings)
    await tunnel.start()
    assert tunnel.pid is not None
    os.kill(tunnel.pid, signal.SIGKILL)

    exited = await recorder.exited()

    assert exited.returncode == -signal.SIGKILL
    assert not exited.requested
    assert "signal 9" in exited.reason
    assert_nothing_left(tunnel, runtime_dir)
    await tunnel.stop()
    assert len(recorder.exits) == 1


async def test_a_missing_binary_fails_start(
    unreachable_config: str, runtime_dir: Path, make_tunnel: MakeTunnel
) -> None:
    settings = TunnelSettings(runtime_dir=runtime_dir, openvpn=str(runtime_dir / "no-openvpn"))
    tunnel, recorder = make_tunnel("nobinary", unreachable_config, settings)

    with pytest.raises(TunnelFailed, match="cannot run"):
        await tunnel.start()

    assert recorder.events == []
    assert_nothing_left(tunnel, runtime_dir)


async def test_a_real_tunnel_carries_packets(
    openvpn_lab: OpenVPNLab,
    client_profile: str,
    settings: TunnelSettings,
    runtime_dir: Path,
    needs_openvpn: None,
    make_tunnel: MakeTunnel,
) -> None:
    tunnel, recorder = make_tunnel("lab", client_profile, settings)
    await tunnel.start()
    try:
        connected = await recorder.wait_for(
            lambda e: isinstance(e, StateEvent) and e.name == "CONNECTED"
        )
        assert isinstance(connected, StateEvent)
        assert connected.detail == "SUCCESS"
        assert ipaddress.ip_address(connected.local_ip) in ipaddress.ip_network(
            openvpn_lab.tunnel_subnet("udp")
        )
        assert connected.remote_ip == openvpn_lab.server_address
        device = tun_device_with(connected.local_ip)
        assert device is not None

        ping = await asyncio.create_subprocess_exec(
            "ping", "-c", "1", "-W", "5", openvpn_lab.tunnel_gateway_udp,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert await ping.wait() == 0

        counted = await recorder.wait_for(
            lambda e: isinstance(e, ByteCountEvent) and e.bytes_in > 0 and e.bytes_out > 0
        )
        assert isinstance(counted, ByteCountEvent)
    finally:
        await tunnel.stop()

    [exited] = recorder.exits
    assert exited.requested
    assert exited.reason == "stopped"
    assert_nothing_left(tunnel, runtime_dir)
    assert not Path("/sys/class/net", device).exists()


# --- a scripted stand-in for openvpn, for what a real server cannot be made to do ---

FAKE_OPENVPN = """\
import os, socket, sys, time

argv = sys.argv[1:]
# openvpn gets no environment from the daemon, so the scenario lies next to the script.
here = os.path.dirname(os.path.abspath(sys.argv[0]))
record = os.path.join(here, "record")
with open(os.path.join(here, "scenario")) as f:
    scenario = f.read()
with open(record + ".argv", "w") as f:
    f.write("\\n".join(argv))
with open(record + ".config", "w") as f:
    f.write(sys.stdin.read())
path = argv[argv.index("--management") + 1]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(path)
lines = sock.makefile("rb")

def send(*out):
    sock.sendall(b"".join(line + b"\\r\\n" for line in out))

send(b">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info",
     b">HOLD:Waiting for hold release:0")
commands = []
for raw in lines:
    command = raw.decode().strip()
    commands.append(command)
    with open(record + ".commands", "w") as f:
        f.write("\\n".join(commands))
    if command == "version 4":
        send(b"SUCCESS: Management client version set to 4")  # as later openvpn versions do
    elif command == "pid":
        send(b">BYTECOUNT:0,0", b"SUCCESS: pid=%d" % os.getpid())
    elif command.startswith("signal"):
        send(b"SUCCESS: signal SIGTERM thrown")
        sys.exit(0)
    else:
        send(b"SUCCESS: ok")
    if command == "hold release":
        break
if scenario == "auth-failure":
    send(b">STATE:1700000000,AUTH,,,,,,",
         b">PASSWORD:Verification Failed: 'Auth'",
         b">STATE:1700000001,EXITING,auth-failure,,,,,")
    print("AUTH: Received control message: AUTH_FAILED", flush=True)
    sys.exit(0)
if scenario == "violation":
    send(b">INFO:\\xff")
    time.sleep(60)  # until the daemon side ends it
"""


@pytest.fixture
def fake_openvpn(tmp_path: Path) -> Callable[[str], Path]:
    """Install the stand-in; returns a function that picks its scenario and gives the script."""
    script = tmp_path / "fake-openvpn"
    script.write_text(f"#!{sys.executable}\n{FAKE_OPENVPN}")
    script.chmod(0o755)

    def scenario(name: str) -> Path:
        (tmp_path / "scenario").write_text(name)
        return script

    return scenario


async def test_handshake_config_and_authentication_failure(
    fake_openvpn: Callable[[str], Path], tmp_path: Path, runtime_dir: Path, make_tunnel: MakeTunnel
) -> None:
    script = fake_openvpn("auth-failure")
    settings = TunnelSettings(runtime_dir=runtime_dir, openvpn=str(script))
    config = "client\nremote vpn.example.org 1194\n<key>\nsecret\n</key>\n"
    tunnel, recorder = make_tunnel("fake", config, settings)

    await tunnel.start()
    exited = await recorder.exited()

    record = tmp_path / "record"
    assert record.with_suffix(".config").read_text() == config
    argv = record.with_suffix(".argv").read_text().split("\n")
    assert argv[:2] == ["--config", "/dev/stdin"]
    assert argv[argv.index("--script-security") + 1] == "1"
    assert argv[argv.index("--auth-retry") + 1] == "interact"
    assert record.with_suffix(".commands").read_text().split("\n") == [
        "version 4",
        "pid",
        "state on",
        "bytecount 1",
        "hold off",
        "hold release",
    ]
    assert exited.returncode == 0
    assert not exited.requested
    assert exited.reason == "authentication failed"
    assert [e.name for e in recorder.events if isinstance(e, StateEvent)] == ["AUTH", "EXITING"]
    assert_nothing_left(tunnel, runtime_dir)


async def test_a_protocol_violation_ends_openvpn(
    fake_openvpn: Callable[[str], Path], runtime_dir: Path, make_tunnel: MakeTunnel
) -> None:
    settings = TunnelSettings(runtime_dir=runtime_dir, openvpn=str(fake_openvpn("violation")))
    tunnel, recorder = make_tunnel("violation", "client\n", settings)

    try:
        await tunnel.start()
    except TunnelFailed as error:
        # The bad line can arrive together with the reply to `hold release`.
        assert "UTF-8" in error.message
    exited = await recorder.exited()

    assert not exited.requested
    assert "UTF-8" in exited.reason
    assert_nothing_left(tunnel, runtime_dir)
