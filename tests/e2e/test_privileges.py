"""openvpn runs with the fewest privileges it can, and never holds the private key.

Checked on real tunnels through the lab: after CONNECTED openvpn is the
unprivileged `vpnd-openvpn` with CAP_NET_ADMIN alone; the key is in none of
its input, arguments, environment, open files or memory; and it still tears
down, dies when killed and reconnects after the drop.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import signal
import stat
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.e2e import test_tunnel
from tests.e2e.test_tunnel import (
    MakeTunnel,
    bring_up_and_ping,
    connected,
    key_body,
    ping,
    process_gone,
    signed_algorithms,
    split_key,
    tun_device_with,
)
from tests.lab.daemon import proc_status
from tests.lab.netns import OpenVPNLab
from vpnd.errors import TunnelFailed
from vpnd.tunnel.events import Lost
from vpnd.tunnel.openvpn import TunnelSettings

pytestmark = pytest.mark.e2e

CAP_NET_ADMIN = 12

# The tunnel tests' fixtures, shared by name.
make_tunnel = test_tunnel.make_tunnel
openvpn_user = test_tunnel.openvpn_user
runtime_dir = test_tunnel.runtime_dir
settings = test_tunnel.settings


def secrets_of(key_pem: bytes) -> list[bytes]:
    """Byte strings only the key holds: its PEM lines and its secret number in both byte orders."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    needles = [line for line in key_body(key_pem) if len(line) >= 32]
    if isinstance(key, ec.EllipticCurvePrivateKey):
        value = key.private_numbers().private_value
    elif isinstance(key, rsa.RSAPrivateKey):
        value = key.private_numbers().d
    else:
        raise AssertionError(f"no secret number known for {type(key).__name__}")
    size = (value.bit_length() + 7) // 8
    # OpenSSL keeps big numbers as little-endian words: look for both orders.
    return [*needles, value.to_bytes(size, "big"), value.to_bytes(size, "little")]


def memory_holds(pid: int, needles: Iterable[bytes]) -> set[bytes]:
    """Which of `needles` are anywhere in the process's readable memory."""
    wanted = list(needles)
    found: set[bytes] = set()
    with (
        open(f"/proc/{pid}/maps") as maps,
        open(f"/proc/{pid}/mem", "rb", buffering=0) as memory,
    ):
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or fields[-1] in ("[vvar]", "[vsyscall]"):
                continue
            start, end = (int(part, 16) for part in fields[0].split("-"))
            try:
                memory.seek(start)
                chunk = memory.read(end - start)
            except OSError:
                continue  # a mapping that cannot be read (a guard page)
            found.update(needle for needle in wanted if needle in chunk)
    return found


def readable_files(pid: int) -> dict[str, bytes]:
    """Every regular file openvpn has open, with its content."""
    files = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        path = f"/proc/{pid}/fd/{fd}"
        # Sockets, pipes and the tun device have nothing to read back.
        if os.path.isfile(path):
            files[os.readlink(path)] = Path(path).read_bytes()
    return files


@pytest.fixture
def recording_openvpn(tmp_path: Path) -> Path:
    """An `openvpn` that keeps what it gets on stdin, then becomes the real one (same pid)."""
    script = tmp_path / "openvpn"
    script.write_text(
        f'#!/bin/sh\ncat > "{tmp_path}/stdin"\nexec openvpn "$@" < "{tmp_path}/stdin"\n'
    )
    script.chmod(0o755)
    return script


async def test_openvpn_runs_unprivileged_with_net_admin_only(
    openvpn_lab: OpenVPNLab,
    client_profile_factory: Callable[..., str],
    settings: TunnelSettings,
    openvpn_user: str,
    make_tunnel: MakeTunnel,
) -> None:
    config, key = split_key(client_profile_factory())
    tunnel, recorder = make_tunnel("dropped", config, settings, private_key=key)

    await bring_up_and_ping(
        tunnel, recorder, openvpn_lab.tunnel_subnet("udp"), openvpn_lab.tunnel_gateway_udp
    )

    assert tunnel.pid is not None
    status = proc_status(tunnel.pid)
    user = pwd.getpwnam(openvpn_user)
    group = grp.getgrnam(openvpn_user)
    assert user.pw_uid != 0 and group.gr_gid != 0
    assert status["Uid"].split() == [str(user.pw_uid)] * 4  # real, effective, saved, fs
    assert status["Gid"].split() == [str(group.gr_gid)] * 4
    assert set(status["Groups"].split()) <= {str(group.gr_gid)}  # root's groups are gone
    assert int(status["CapEff"], 16) == 1 << CAP_NET_ADMIN
    assert int(status["CapPrm"], 16) == 1 << CAP_NET_ADMIN
    assert int(status["CapInh"], 16) == 0
    assert int(status["CapAmb"], 16) == 0
    # Nothing left for it to reconnect to: the socket is gone, its directory root's alone.
    assert not tunnel.socket_path.exists()
    assert stat.S_IMODE(tunnel.socket_path.parent.stat().st_mode) == 0o700


async def test_the_key_is_nowhere_openvpn_can_read_it(
    openvpn_lab: OpenVPNLab,
    client_profile_factory: Callable[..., str],
    runtime_dir: Path,
    openvpn_user: str,
    recording_openvpn: Path,
    tmp_path: Path,
    make_tunnel: MakeTunnel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="vpnd.tunnel")
    settings = TunnelSettings(runtime_dir=runtime_dir, openvpn=str(recording_openvpn))
    profile = client_profile_factory(key_type="ec")
    config, key = split_key(profile)
    needles = secrets_of(key)
    external, external_events = make_tunnel("nokey", config, settings, private_key=key)
    # The control: the same kind of tunnel with the key in its config, whose
    # memory the same search must find it in (else the search proves nothing).
    inline_profile = client_profile_factory(key_type="ec")
    _config, inline_key = split_key(inline_profile)
    plain = TunnelSettings(runtime_dir=runtime_dir)
    inline, inline_events = make_tunnel("inline", inline_profile, plain)

    for tunnel, events in ((external, external_events), (inline, inline_events)):
        await bring_up_and_ping(
            tunnel, events, openvpn_lab.tunnel_subnet("udp"), openvpn_lab.tunnel_gateway_udp
        )
    assert external.pid is not None and inline.pid is not None
    pid = external.pid

    stdin = (tmp_path / "stdin").read_bytes()
    # The config, as the daemon wrote it, asking for signatures ...
    assert stdin.decode() == config + "\nmanagement-external-key pkcs1 pss\n"
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    files = readable_files(pid)
    for needle in needles:
        assert needle not in stdin  # ... without the key
        assert needle not in cmdline
        assert needle not in environ
        assert not any(needle in content for content in files.values())
    assert memory_holds(pid, needles) == set()
    assert memory_holds(inline.pid, secrets_of(inline_key)) != set()
    assert signed_algorithms(caplog)  # it did sign, through the daemon


async def test_teardown_after_the_drop_removes_routes_and_device(
    openvpn_lab: OpenVPNLab,
    client_profile_factory: Callable[..., str],
    settings: TunnelSettings,
    runtime_dir: Path,
    make_tunnel: MakeTunnel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="vpnd.tunnel")
    config, key = split_key(client_profile_factory())
    tunnel, recorder = make_tunnel("teardown", config, settings, private_key=key)
    event = await bring_up_and_ping(
        tunnel, recorder, openvpn_lab.tunnel_subnet("udp"), openvpn_lab.tunnel_gateway_udp
    )
    device = tun_device_with(event.local_ip)
    assert device is not None
    subnet = openvpn_lab.tunnel_subnet("udp")
    assert f"dev {device}" in routes_to(subnet)

    await tunnel.stop()

    [exited] = recorder.exits
    assert exited.returncode == 0 and exited.reason == "stopped"
    assert not Path("/sys/class/net", device).exists()
    assert routes_to(subnet) == ""
    openvpn_lines = [r.getMessage() for r in caplog.records if r.msg.startswith("openvpn[")]
    assert any("net_route_v4_del" in line for line in openvpn_lines)
    assert not any("Operation not permitted" in line for line in openvpn_lines)
    assert process_gone(tunnel.pid)
    assert list(runtime_dir.iterdir()) == []


def routes_to(subnet: str) -> str:
    return subprocess.run(
        ["ip", "-4", "route", "show", subnet], capture_output=True, text=True, check=True
    ).stdout.strip()


async def test_a_dropped_openvpn_that_does_not_listen_is_killed(
    openvpn_lab: OpenVPNLab,
    client_profile_factory: Callable[..., str],
    settings: TunnelSettings,
    runtime_dir: Path,
    make_tunnel: MakeTunnel,
) -> None:
    config, key = split_key(client_profile_factory())
    tunnel, recorder = make_tunnel("frozen", config, settings, private_key=key)
    event = await bring_up_and_ping(
        tunnel, recorder, openvpn_lab.tunnel_subnet("udp"), openvpn_lab.tunnel_gateway_udp
    )
    device = tun_device_with(event.local_ip)
    assert tunnel.pid is not None and device is not None
    os.kill(tunnel.pid, signal.SIGSTOP)

    await tunnel.stop(timeout=1.0)

    [exited] = recorder.exits
    assert exited.returncode == -signal.SIGKILL
    # The kernel closes the device with the process, routes and all.
    assert not Path("/sys/class/net", device).exists()
    assert process_gone(tunnel.pid)
    assert list(runtime_dir.iterdir()) == []


async def test_a_dropped_openvpn_reconnects_and_signs_again(
    openvpn_lab: OpenVPNLab,
    client_profile_factory: Callable[..., str],
    settings: TunnelSettings,
    runtime_dir: Path,
    make_tunnel: MakeTunnel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="vpnd.tunnel")
    config, key = split_key(client_profile_factory(key_type="rsa"))
    tunnel, recorder = make_tunnel("restart", config, settings, private_key=key)
    first = await bring_up_and_ping(
        tunnel, recorder, openvpn_lab.tunnel_subnet("udp"), openvpn_lab.tunnel_gateway_udp
    )
    device = tun_device_with(first.local_ip)
    signed = len(signed_algorithms(caplog))
    assert tunnel.pid is not None and device is not None

    mark = len(recorder.events)
    os.kill(tunnel.pid, signal.SIGUSR1)
    await recorder.wait_for(lambda e: isinstance(e, Lost), mark)
    again = await connected(recorder, mark)

    # --persist-tun: the same device, which the unprivileged openvpn could not make again.
    assert tun_device_with(again.local_ip) == device
    assert await ping(openvpn_lab.tunnel_gateway_udp)
    assert len(signed_algorithms(caplog)) > signed  # a new handshake, a new signature
    assert not recorder.exits
    await tunnel.stop()
    assert not Path("/sys/class/net", device).exists()
    assert process_gone(tunnel.pid)
    assert list(runtime_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("user", "group", "says"),
    [
        ("vpnd-no-such-user", "vpnd-openvpn", "useradd --system"),
        ("vpnd-openvpn", "vpnd-no-such-group", "groupadd --system"),
        ("root", "vpnd-openvpn", "unprivileged user, not root"),
        ("vpnd-openvpn", "root", "group of its own, not root"),
    ],
)
async def test_a_missing_or_privileged_account_fails_start(
    client_profile_factory: Callable[..., str],
    runtime_dir: Path,
    openvpn_user: str,
    make_tunnel: MakeTunnel,
    user: str,
    group: str,
    says: str,
) -> None:
    settings = TunnelSettings(runtime_dir=runtime_dir, user=user, group=group)
    config, key = split_key(client_profile_factory())
    tunnel, recorder = make_tunnel("nouser", config, settings, private_key=key)

    with pytest.raises(TunnelFailed) as raised:
        await tunnel.start()

    assert says in raised.value.message
    assert tunnel.pid is None
    assert recorder.events == []
    assert list(runtime_dir.iterdir()) == []


def test_a_group_without_a_user_is_a_programming_error(runtime_dir: Path) -> None:
    with pytest.raises(ValueError, match="root"):
        TunnelSettings(runtime_dir=runtime_dir, user=None, group="vpnd-openvpn")
    assert TunnelSettings(runtime_dir=runtime_dir, user=None, group=None).user is None
