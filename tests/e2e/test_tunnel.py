"""The openvpn child process: start, fail, stop, and real tunnels through the lab.

Every test checks what must be left behind: no process, no socket file, no
tun device. Real tunnels sign through the daemon (`--management-external-key`)
with EC, RSA and Ed25519 keys, over TLS 1.3 and TLS 1.2.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from tests.lab.netns import DATA_CIPHERS, OpenVPNLab, Remote, build_client_config
from tests.lab.pki import KeyType, LabPKI
from tests.lab.require import require_account, require_root, require_tool
from vpnd.errors import InvalidArgument, TunnelFailed
from vpnd.protocols.ovpnconfig import inline_block, sanitize, without
from vpnd.tunnel.events import Progress, PromptEvent, Traffic, TunnelEvent, TunnelExited, Up
from vpnd.tunnel.openvpn import DEFAULT_USER, Tunnel, TunnelSettings

pytestmark = pytest.mark.e2e

WAIT = 30.0  # the longest any step may take before the test gives up


@pytest.fixture
def needs_openvpn() -> None:
    require_root("openvpn's tun device")
    require_tool("openvpn", "openvpn")


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

    async def wait_for(
        self, predicate: Callable[[TunnelEvent], bool], after: int = 0
    ) -> TunnelEvent:
        """The first event from index `after` on that `predicate` accepts, once it comes."""
        async with asyncio.timeout(WAIT):
            while True:
                for event in self.events[after:]:
                    if predicate(event):
                        return event
                self._changed.clear()
                await self._changed.wait()

    async def exited(self) -> TunnelExited:
        event = await self.wait_for(lambda e: isinstance(e, TunnelExited))
        assert isinstance(event, TunnelExited)
        return event


class ConfiguredTunnel(Tunnel):
    """A Tunnel given its config when it is made, so that start() takes nothing."""

    def __init__(
        self,
        name: str,
        config: str,
        settings: TunnelSettings,
        on_event: Callable[[TunnelEvent], None],
        *,
        private_key: bytes | None = None,
        user_pass: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(name, settings, on_event)
        self.config, self.private_key, self.user_pass = config, private_key, user_pass

    async def start(self) -> None:  # type: ignore[override]
        await super().start(self.config, private_key=self.private_key, user_pass=self.user_pass)


class MakeTunnel:
    """Makes tunnels with their event recorders; the fixture stops whatever is left running."""

    def __init__(self) -> None:
        self.made: list[ConfiguredTunnel] = []

    def __call__(
        self,
        name: str,
        config: str,
        settings: TunnelSettings,
        *,
        private_key: bytes | None = None,
        user_pass: tuple[str, str] | None = None,
    ) -> tuple[ConfiguredTunnel, Recorder]:
        recorder = Recorder()
        self.made.append(
            ConfiguredTunnel(
                name, config, settings, recorder, private_key=private_key, user_pass=user_pass
            )
        )
        return self.made[-1], recorder


@pytest.fixture
async def make_tunnel() -> AsyncIterator[MakeTunnel]:
    """Tunnels with their event recorders; whatever a test leaves running is stopped after it."""
    make = MakeTunnel()
    yield make
    for tunnel in make.made:
        await tunnel.stop()


@pytest.fixture(scope="session")
def openvpn_user() -> str:
    """The account openvpn drops to; make deps creates it, tests never do."""
    return require_account(DEFAULT_USER).pw_name


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def settings(runtime_dir: Path, openvpn_user: str) -> TunnelSettings:
    return TunnelSettings(runtime_dir=runtime_dir)


def split_key(profile: str) -> tuple[str, bytes]:
    """The profile as the daemon hands it to a tunnel: sanitized, without its key; and the key."""
    config = sanitize(profile)
    key = inline_block(config, "key")
    assert key is not None
    return without(config, "key").render(), key.encode()


def key_body(key_pem: bytes) -> list[bytes]:
    """The base64 lines of a PEM key: what must never show up anywhere openvpn can read."""
    return [line for line in key_pem.splitlines() if line and not line.startswith(b"-----")]


def signed_algorithms(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The algorithms of the >PK_SIGN requests the tunnel answered, from its debug log."""
    return [
        str(record.args[1])
        for record in caplog.records
        if record.msg == "tunnel %s: signed for openvpn (%s)" and isinstance(record.args, tuple)
    ]


async def ping(address: str) -> bool:
    process = await asyncio.create_subprocess_exec(
        "ping", "-c", "1", "-W", "5", address,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    return await process.wait() == 0


async def connected(recorder: Recorder, after: int = 0) -> Up:
    """The first Up among the recorder's events from index `after` on."""
    event = await recorder.wait_for(lambda e: isinstance(e, Up), after)
    assert isinstance(event, Up)
    return event


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
    await recorder.wait_for(lambda e: isinstance(e, Progress | Up))

    await tunnel.stop()

    [exited] = recorder.exits
    assert exited == TunnelExited(returncode=0, reason="stopped", requested=True)
    assert recorder.events[-1] is exited
    assert_nothing_left(tunnel, runtime_dir)
    await tunnel.stop()
    assert len(recorder.exits) == 1


@pytest.mark.parametrize("ahead", [False, True], ids=["", "ahead"])
@pytest.mark.parametrize("yields", [0, 1, 3, 10, 30, 100, 300])
async def test_stop_at_any_point_of_start(
    unreachable_config: str,
    settings: TunnelSettings,
    runtime_dir: Path,
    yields: int,
    ahead: bool,
    make_tunnel: MakeTunnel,
) -> None:
    tunnel, recorder = make_tunnel("racing", unreachable_config, settings)
    if ahead:
        tunnel.prepare()
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


@pytest.mark.parametrize("ahead", [False, True], ids=["", "ahead"])
@pytest.mark.parametrize("yields", [1, 10, 100, 300])
async def test_cancelling_start_cleans_up(
    unreachable_config: str,
    settings: TunnelSettings,
    runtime_dir: Path,
    yields: int,
    ahead: bool,
    make_tunnel: MakeTunnel,
) -> None:
    tunnel, recorder = make_tunnel("cancelled", unreachable_config, settings)
    if ahead:
        # Cancelled while openvpn is being spawned ahead of its config, too.
        tunnel.prepare()
    starting = asyncio.create_task(tunnel.start())
    for _ in range(yields):
        await asyncio.sleep(0)

    if not starting.cancel():
        # start() was already done: nothing left to cancel.
        await tunnel.stop()

    with contextlib.suppress(asyncio.CancelledError):
        await starting
    if ahead:
        # The spawn under way was waited for, and its openvpn ended with it.
        assert tunnel.pid is not None
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


async def test_an_openvpn_started_ahead_of_its_config_connects_with_it(
    openvpn_lab: OpenVPNLab,
    client_profile_factory: Callable[..., str],
    settings: TunnelSettings,
    runtime_dir: Path,
    make_tunnel: MakeTunnel,
) -> None:
    config, key = split_key(client_profile_factory(key_type="ec"))
    tunnel, recorder = make_tunnel("ahead", config, settings, private_key=key)

    tunnel.prepare()
    # Spawned, and waiting for its config: no management connection yet.
    async with asyncio.timeout(WAIT):
        while tunnel.pid is None:
            await asyncio.sleep(0.01)
    assert not process_gone(tunnel.pid) and tunnel.socket_path.exists()
    spawned = tunnel.pid
    await bring_up_and_ping(
        tunnel, recorder, openvpn_lab.tunnel_subnet("udp"), openvpn_lab.tunnel_gateway_udp
    )
    assert tunnel.pid == spawned  # the same openvpn, not a second one
    await tunnel.stop()
    assert [exited.reason for exited in recorder.exits] == ["stopped"]
    assert_nothing_left(tunnel, runtime_dir)


async def test_an_openvpn_started_ahead_of_a_config_that_never_comes_is_ended(
    unreachable_config: str, settings: TunnelSettings, runtime_dir: Path, make_tunnel: MakeTunnel
) -> None:
    tunnel, recorder = make_tunnel("unused", unreachable_config, settings)
    tunnel.prepare()
    async with asyncio.timeout(WAIT):
        # Until openvpn, past its start-up, waits reading its config.
        while tunnel.pid is None or not Path(f"/proc/{tunnel.pid}/wchan").read_text().endswith(
            "pipe_read"
        ):
            await asyncio.sleep(0.01)

    await tunnel.stop()

    [exited] = recorder.exits
    assert exited.requested and exited.reason == "stopped"
    # Blocked reading its config, openvpn leaves SIGTERM pending: the end of
    # its input ends it, not the SIGKILL stop() resorts to in the end.
    assert exited.returncode != -signal.SIGKILL
    assert_nothing_left(tunnel, runtime_dir)
    with pytest.raises(TunnelFailed, match="stopped before openvpn started"):
        await tunnel.start()
    assert len(recorder.exits) == 1


async def test_a_missing_binary_started_ahead_fails_start(
    unreachable_config: str, runtime_dir: Path, make_tunnel: MakeTunnel
) -> None:
    settings = TunnelSettings(runtime_dir=runtime_dir, openvpn=str(runtime_dir / "no-openvpn"))
    tunnel, recorder = make_tunnel("nobinary", unreachable_config, settings)
    tunnel.prepare()
    await asyncio.sleep(0.1)  # the failure waits for start() to report it

    with pytest.raises(TunnelFailed, match="cannot run"):
        await tunnel.start()

    assert recorder.events == []
    assert_nothing_left(tunnel, runtime_dir)


def with_auth_user_pass(profile: str) -> str:
    """The profile asking for a user name and password, as Access Server's userlogin ones do."""
    return profile.replace("client\n", "client\nauth-user-pass\n", 1)


async def test_openvpn_gets_the_kept_user_name_and_password_once(
    openvpn_lab: OpenVPNLab,
    client_profile: str,
    settings: TunnelSettings,
    needs_openvpn: None,
    make_tunnel: MakeTunnel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The lab server does not check passwords: that openvpn asked and went on
    # is what shows the answer arrived, quoted as a password with blanks needs.
    caplog.set_level(logging.DEBUG, logger="vpnd.tunnel")
    tunnel, recorder = make_tunnel(
        "userpass", with_auth_user_pass(client_profile), settings,
        user_pass=("alice", 'correct "horse" battery'),
    )  # fmt: skip
    await tunnel.start()
    await recorder.wait_for(lambda e: isinstance(e, Up))
    assert "answering openvpn's question" in caplog.text
    assert "horse" not in caplog.text  # never logged
    await tunnel.stop()


async def test_openvpn_asking_for_a_password_nobody_keeps_asks_a_person(
    openvpn_lab: OpenVPNLab,
    client_profile: str,
    settings: TunnelSettings,
    needs_openvpn: None,
    make_tunnel: MakeTunnel,
) -> None:
    tunnel, recorder = make_tunnel("nopass", with_auth_user_pass(client_profile), settings)
    await tunnel.start()
    asked = await recorder.wait_for(lambda e: isinstance(e, PromptEvent))
    assert isinstance(asked, PromptEvent) and asked.question is not None
    assert [f.name for f in asked.question.fields] == ["username", "password"]
    with pytest.raises(InvalidArgument):
        tunnel.answer({"username": "bob"})  # incomplete: still asked
    tunnel.answer({"username": "bob", "password": "typed by a person"})
    await recorder.wait_for(lambda e: isinstance(e, Up))
    await tunnel.stop()


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
        connected = await recorder.wait_for(lambda e: isinstance(e, Up))
        assert isinstance(connected, Up)
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
            lambda e: isinstance(e, Traffic) and e.bytes_in > 0 and e.bytes_out > 0
        )
        assert isinstance(counted, Traffic)
    finally:
        await tunnel.stop()

    [exited] = recorder.exits
    assert exited.requested
    assert exited.reason == "stopped"
    assert_nothing_left(tunnel, runtime_dir)
    assert not Path("/sys/class/net", device).exists()


# --- the private key stays in the daemon: openvpn asks for signatures -------------


class ExtraServer:
    """One more openvpn server (UDP) in the lab's namespace, set up for TLS 1.2.

    `client_sigalgs` restricts the signatures it accepts from clients (OpenSSL's
    ClientSignatureAlgorithms): "RSA+SHA256" leaves a client nothing but
    PKCS#1 v1.5, as an older server would.
    """

    def __init__(
        self, lab: OpenVPNLab, workdir: Path, name: str, port: int, net: int,
        client_sigalgs: str | None = None,
    ) -> None:  # fmt: skip
        self.lab = lab
        self.port = port
        self.subnet = f"10.{net}.{lab.slot}.0"
        self.gateway = f"10.{net}.{lab.slot}.1"
        self.log_path = workdir / f"{name}.log"
        config = workdir / f"{name}.conf"
        pki = lab.pki
        config.write_text(
            "\n".join([
                f"dev {name}", "dev-type tun", "proto udp", f"local {lab.server_address}",
                f"port {port}", "topology subnet", f"server {self.subnet} 255.255.255.0",
                f'push "route {self.subnet} 255.255.255.0"', "dh none",
                f"ca {pki.ca_path}", f"cert {pki.server_cert_path}",
                f"key {pki.server_key_path}", f"tls-crypt {pki.tls_crypt_path}",
                "remote-cert-tls client", "tls-version-min 1.2", "tls-version-max 1.2",
                f"data-ciphers {DATA_CIPHERS}", "keepalive 10 60", "disable-dco", "verb 3",
            ]) + "\n"
        )  # fmt: skip
        env = dict(os.environ)
        if client_sigalgs is not None:
            openssl_conf = workdir / f"{name}-openssl.cnf"
            openssl_conf.write_text(
                "openssl_conf = init\n[init]\nssl_conf = ssl\n[ssl]\nsystem_default = tls\n"
                f"[tls]\nClientSignatureAlgorithms = {client_sigalgs}\n"
            )
            env["OPENSSL_CONF"] = str(openssl_conf)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", lab.netns, "openvpn", "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip

    def wait_ready(self) -> None:
        deadline = time.monotonic() + WAIT
        while "Initialization Sequence Completed" not in self.log_path.read_text(errors="replace"):
            assert self.process.poll() is None, self.log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, self.log_path.read_text(errors="replace")
            time.sleep(0.02)  # polling a log file with a deadline: nothing to await

    def client_config(self, cert_pem: str, key_pem: str) -> str:
        profile = build_client_config(
            ca_pem=self.lab.pki.ca_pem,
            cert_pem=cert_pem,
            key_pem=key_pem,
            tls_crypt_key=self.lab.pki.tls_crypt_key,
            remotes=[Remote(self.lab.server_address, self.port, "udp")],
        )
        return profile.replace("tls-version-min 1.3", "tls-version-min 1.2\ntls-version-max 1.2")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def tls12_servers(
    openvpn_lab: OpenVPNLab, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ExtraServer]]:
    """Two TLS 1.2 servers: one with OpenSSL's default signature algorithms, one PKCS#1-only."""
    workdir = tmp_path_factory.mktemp("tls12")
    servers = {
        "default": ExtraServer(openvpn_lab, workdir, "lab-tls12", 1195, 216),
        "pkcs1": ExtraServer(openvpn_lab, workdir, "lab-pkcs1", 1196, 217, "RSA+SHA256"),
    }
    try:
        for server in servers.values():
            server.wait_ready()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


async def bring_up_and_ping(tunnel: Tunnel, recorder: Recorder, subnet: str, gateway: str) -> Up:
    await tunnel.start()
    event = await connected(recorder)
    assert ipaddress.ip_address(event.local_ip) in ipaddress.ip_network(subnet)
    assert tun_device_with(event.local_ip) is not None
    assert await ping(gateway)
    return event


@pytest.mark.parametrize(
    ("key_type", "algorithm"),
    [
        ("ec", "ECDSA"),
        # TLS 1.3 allows RSA only with PSS.
        ("rsa", "RSA_PKCS1_PSS_PADDING,hashalg=SHA256,saltlen=digest"),
        ("ed25519", "ED25519,data=message"),
    ],
)
async def test_a_tunnel_signs_through_the_daemon(
    openvpn_lab: OpenVPNLab,
    client_profile_factory: Callable[..., str],
    settings: TunnelSettings,
    runtime_dir: Path,
    make_tunnel: MakeTunnel,
    caplog: pytest.LogCaptureFixture,
    key_type: KeyType,
    algorithm: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="vpnd.tunnel")
    config, key = split_key(client_profile_factory(key_type=key_type))
    tunnel, recorder = make_tunnel(f"ext-{key_type}", config, settings, private_key=key)

    event = await bring_up_and_ping(
        tunnel, recorder, openvpn_lab.tunnel_subnet("udp"), openvpn_lab.tunnel_gateway_udp
    )
    device = tun_device_with(event.local_ip)
    await tunnel.stop()

    # One handshake signs once; a retried one would sign again, the same way.
    assert set(signed_algorithms(caplog)) == {algorithm}
    [exited] = recorder.exits
    assert exited.reason == "stopped"
    assert_nothing_left(tunnel, runtime_dir)
    assert device is not None and not Path("/sys/class/net", device).exists()
    # Neither the key nor what was signed reaches the log.
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert not any(line.decode() in logged for line in key_body(key))


@pytest.mark.parametrize(
    ("server", "algorithm"),
    [
        # With both on offer openvpn (OpenSSL 3) picks PSS in TLS 1.2 too.
        ("default", "RSA_PKCS1_PSS_PADDING,hashalg=SHA256,saltlen=digest"),
        # A server that takes PKCS#1 v1.5 only gets a DigestInfo signed.
        ("pkcs1", "RSA_PKCS1_PADDING"),
    ],
)
async def test_an_rsa_key_over_tls_1_2(
    tls12_servers: dict[str, ExtraServer],
    lab_pki: LabPKI,
    settings: TunnelSettings,
    runtime_dir: Path,
    make_tunnel: MakeTunnel,
    caplog: pytest.LogCaptureFixture,
    server: str,
    algorithm: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="vpnd.tunnel")
    extra = tls12_servers[server]
    cert_pem, key_pem = lab_pki.issue_client(f"tls12-{server}", key_type="rsa")
    config, key = split_key(extra.client_config(cert_pem, key_pem))
    tunnel, recorder = make_tunnel(f"tls12-{server}", config, settings, private_key=key)

    await bring_up_and_ping(tunnel, recorder, f"{extra.subnet}/24", extra.gateway)
    await tunnel.stop()

    assert set(signed_algorithms(caplog)) == {algorithm}
    assert "TLSv1.2" in extra.log_path.read_text(errors="replace")
    assert_nothing_left(tunnel, runtime_dir)


async def test_a_config_with_a_key_is_refused_with_an_external_key(
    lab_pki: LabPKI, settings: TunnelSettings
) -> None:
    _cert_pem, key_pem = lab_pki.issue_client("both-keys")
    for key_line in (f"<key>\n{key_pem}</key>\n", "key /etc/client.key\n", "  --key x\n"):
        tunnel = Tunnel("both", settings, Recorder())
        with pytest.raises(ValueError, match="must not hold a key"):
            await tunnel.start("client\n" + key_line, private_key=key_pem.encode())
        assert tunnel.pid is None
    # A directive that merely starts with "key" is no key: the key itself is
    # looked at next (and this one cannot sign).
    with pytest.raises(TunnelFailed, match="private key cannot be read"):
        await Tunnel("fine", settings, Recorder()).start("client\nkeysize 256\n", private_key=b"x")


async def test_a_key_that_cannot_sign_fails_start_before_openvpn_runs(
    unreachable_config: str, settings: TunnelSettings, runtime_dir: Path, make_tunnel: MakeTunnel
) -> None:
    config, _key = split_key(unreachable_config)
    tunnel, recorder = make_tunnel("badkey", config, settings, private_key=b"not a key")

    with pytest.raises(TunnelFailed, match="private key cannot be read"):
        await tunnel.start()

    assert tunnel.pid is None
    assert recorder.events == []
    assert_nothing_left(tunnel, runtime_dir)


# --- a scripted stand-in for openvpn, for what a real server cannot be made to do ---

FAKE_OPENVPN = """\
import os, socket, sys, time

argv = sys.argv[1:]
# openvpn gets no environment from the daemon, so the scenario lies next to the script.
here = os.path.dirname(os.path.abspath(sys.argv[0]))
record = os.path.join(here, "record")
with open(os.path.join(here, "scenario")) as f:
    scenario, _, payload = f.read().partition("\\n")
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
if scenario == "pk-sign":
    # Each payload line is one request; the answers are recorded as they come.
    for request in payload.split("\\n"):
        send(b">PK_SIGN:" + request.encode())
        for raw in lines:
            with open(record + ".pksig", "a") as f:
                f.write(raw.decode())  # line by line: whatever came is on record
            if raw.strip() == b"END":
                break
        send(b"SUCCESS: pk-sign command succeeded")
    for raw in lines:
        if raw.startswith(b"signal"):
            send(b"SUCCESS: signal SIGTERM thrown")
            sys.exit(0)
"""


@pytest.fixture
def fake_openvpn(tmp_path: Path, openvpn_user: str) -> Callable[[str], Path]:
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
    # One refusal of a connection that answered nothing may be in passing:
    # openvpn's own exit on it tells how it ended.
    assert exited.returncode == 0
    assert not exited.requested
    assert exited.reason == "authentication failed"
    assert exited.error is None
    # EXITING is not passed on: the exit itself says how it ended.
    assert [e.step for e in recorder.events if isinstance(e, Progress)] == ["AUTH"]
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


async def test_external_key_argv_and_answered_signatures(
    fake_openvpn: Callable[[str], Path], tmp_path: Path, runtime_dir: Path, make_tunnel: MakeTunnel
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    digests = [hashlib.sha256(b"first").digest(), hashlib.sha384(b"second").digest()]
    requests = [base64.b64encode(d).decode() + ",ECDSA" for d in digests]
    script = fake_openvpn("pk-sign\n" + "\n".join(requests))
    settings = TunnelSettings(runtime_dir=runtime_dir, openvpn=str(script))
    tunnel, recorder = make_tunnel("fakesign", "client\n", settings, private_key=key_pem)

    await tunnel.start()
    record = tmp_path / "record.pksig"

    def answered() -> list[str]:
        return record.read_text().splitlines() if record.exists() else []

    async with asyncio.timeout(WAIT):
        while answered().count("END") < len(requests):
            await asyncio.sleep(0.01)  # the stand-in writes its record as it goes
    await tunnel.stop()

    argv = (tmp_path / "record.argv").read_text().split("\n")
    user = argv.index("--user")
    assert argv[user : user + 4] == ["--user", DEFAULT_USER, "--group", DEFAULT_USER]
    assert "--persist-tun" in argv
    # The external key is asked for in the config openvpn reads, after the
    # server's part: openvpn was started before anyone knew there is a key.
    assert "--management-external-key" not in argv
    config = (tmp_path / "record.config").read_text()
    assert config == "client\n\nmanagement-external-key pkcs1 pss\n"
    lines = answered()
    for value, hash_ in zip(digests, (hashes.SHA256(), hashes.SHA384()), strict=True):
        end = lines.index("END")
        head, body, lines = lines[0], lines[1:end], lines[end + 1 :]
        assert head == "pk-sig"
        signature = base64.b64decode("".join(body), validate=True)
        key.public_key().verify(signature, value, ec.ECDSA(Prehashed(hash_)))
    assert lines == []
    [exited] = recorder.exits
    assert exited.reason == "stopped"
    assert_nothing_left(tunnel, runtime_dir)


@pytest.mark.parametrize(
    "request_text",
    [
        "AAAA,RSA_NO_PADDING",
        base64.b64encode(bytes(32)).decode()
        + ",RSA_PKCS1_PSS_PADDING,hashalg=SHA256,saltlen=digest",
        "not base64,ECDSA",
        "AAAA",
    ],
)
async def test_a_signature_the_daemon_will_not_make_ends_openvpn(
    fake_openvpn: Callable[[str], Path],
    tmp_path: Path,
    runtime_dir: Path,
    make_tunnel: MakeTunnel,
    request_text: str,
) -> None:
    key_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    settings = TunnelSettings(runtime_dir=runtime_dir, openvpn=str(fake_openvpn(
        "pk-sign\n" + request_text)))  # fmt: skip
    tunnel, recorder = make_tunnel("refusing", "client\n", settings, private_key=key_pem)

    with contextlib.suppress(TunnelFailed):
        await tunnel.start()  # the request may come before start() returns
    exited = await recorder.exited()

    assert not exited.requested
    assert "does not make" in exited.reason
    # Nothing, not even an empty block, was sent in answer.
    assert not (tmp_path / "record.pksig").exists()
    assert_nothing_left(tunnel, runtime_dir)
