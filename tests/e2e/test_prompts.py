"""What a VPN server asks while the tunnel starts, answered end to end.

A real openvpn server in its own namespace checks users with a script
(tests/lab/auth_script.py): a password, a static challenge, a dynamic
challenge, a login in the browser, a text challenge and a blocked account.
The Access Server test portal hands out the userlogin profile for it; vpnd
connects with it and asks the person through its prompt channel: vpnctl on
a real terminal, or a second client over D-Bus.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab import auth_script
from tests.lab.daemon import VpndProcess, failed, ok, ping, status, vpnctl
from tests.lab.dbus import PrivateSystemBus
from tests.lab.netns import OpenVPNLab
from tests.lab.pki import LabPKI
from tests.lab.portal_as import TestAccessServer
from tests.lab.terminal import Terminal

from .conftest import require_lab

pytestmark = pytest.mark.e2e

USERS = {
    "alice": "correct horse",
    "sam": "sam-pass",
    "dora": "dora-pass",
    "wendy": "wendy-pass",
    "tess": "tess-pass",
    "mallory": "mallory-pass",
}


@pytest.fixture(scope="module")
def auth_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the server's user check leaves the control files of deferred logins."""
    return tmp_path_factory.mktemp("auth-state")


@pytest.fixture(scope="module")
def auth_lab(
    lab_pki: LabPKI, auth_state: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OpenVPNLab]:
    """openvpn servers that check every client's user name and password."""
    require_lab()
    workdir = tmp_path_factory.mktemp("auth-lab")
    script = f"{sys.executable} {Path(auth_script.__file__).resolve()}"
    lines = [
        "script-security 2",
        f'auth-user-pass-verify "{script} verify {auth_state}" via-file',
        f'client-crresponse "{script} crresponse {auth_state}"',
        f"tmp-dir {workdir}",
    ]
    with OpenVPNLab(lab_pki, workdir, "vpnd-auth", server_lines=lines) as lab:
        yield lab


@pytest.fixture(scope="module")
def access_server_session(lab_pki: LabPKI, auth_lab: OpenVPNLab) -> Iterator[TestAccessServer]:
    with TestAccessServer(lab_pki, auth_lab, users=USERS) as server:
        yield server


@pytest.fixture
def access_server(access_server_session: TestAccessServer) -> Iterator[TestAccessServer]:
    access_server_session.reset()
    yield access_server_session
    access_server_session.reset()


def sign_in(server: TestAccessServer, env: dict[str, str], user: str, *extra: str) -> None:
    ok(vpnctl(["add", "--access-server", server.base_url, "--user", user,
               "--password-stdin", *extra], env, stdin=USERS[user] + "\n"))  # fmt: skip


def connected(terminal: Terminal) -> None:
    terminal.expect("Connected to")
    assert terminal.wait() == 0, terminal.output


@contextlib.contextmanager
def bus_traffic(bus: PrivateSystemBus, into: list[str]) -> Iterator[None]:
    """Everything on the bus meanwhile, as dbus-monitor prints it, one message a
    string (into `into`)."""
    with tempfile.TemporaryFile("w+") as out:
        monitor = subprocess.Popen(
            ["dbus-monitor", "--address", bus.address], stdout=out, stderr=subprocess.STDOUT
        )
        try:
            time.sleep(0.5)  # it has no "listening" line to wait for
            yield
        finally:
            time.sleep(0.5)
            monitor.terminate()
            monitor.wait(5)
        out.seek(0)
        into += re.split(r"\n(?=\S)", out.read())


def wait_for_question(env: dict[str, str], timeout: float = 30.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = status(env)
        if now["prompt"]:
            assert now["state"] == "needs-input"
            return now
        assert now["state"] not in ("failed", "disconnected"), now
        time.sleep(0.1)
    raise AssertionError("no question came")


def test_a_password_typed_at_the_terminal(
    vpnd: VpndProcess,
    access_server: TestAccessServer,
    auth_lab: OpenVPNLab,
    client_env: dict[str, str],
) -> None:
    sign_in(access_server, client_env, "alice")  # the password is not kept
    with Terminal.vpnctl(["connect", "127.0.0.1"], client_env) as terminal:
        terminal.expect("password of alice")
        terminal.expect("Password: ")
        terminal.send("correct horse")
        connected(terminal)
        assert "correct horse" not in terminal.output  # typed without echo
    assert ping(auth_lab.tunnel_gateway_udp)
    ok(vpnctl(["disconnect"], client_env))
    # A wrong password is refused once, named, and not asked again and again.
    with Terminal.vpnctl(["connect", "127.0.0.1"], client_env) as terminal:
        terminal.expect("Password: ")
        terminal.send("battery staple")
        assert terminal.wait() == 1
        assert "refused the user name or password" in terminal.output
    assert status(client_env)["error"] == "org.vpnd.Error.AuthorizationFailed"
    log = vpnd.log()
    assert "correct horse" not in log and "battery staple" not in log


def test_a_static_challenge_asks_only_for_the_code(
    vpnd: VpndProcess,
    access_server: TestAccessServer,
    auth_lab: OpenVPNLab,
    client_env: dict[str, str],
) -> None:
    access_server.config_filter = lambda config: config.replace(
        "auth-user-pass\n", 'auth-user-pass\nstatic-challenge "Enter your PIN" 1\n'
    )
    sign_in(access_server, client_env, "sam", "--remember")
    with Terminal.vpnctl(["connect", "127.0.0.1"], client_env) as terminal:
        terminal.expect("Enter your PIN")
        terminal.expect("Answer: ")
        terminal.send("123456")
        connected(terminal)
    assert ping(auth_lab.tunnel_gateway_udp)
    ok(vpnctl(["disconnect"], client_env))
    assert "123456" not in vpnd.log() and "sam-pass" not in vpnd.log()


def test_a_dynamic_challenge_answered_by_a_second_client_over_d_bus(
    vpnd: VpndProcess,
    access_server: TestAccessServer,
    auth_lab: OpenVPNLab,
    client_env: dict[str, str],
    private_bus: PrivateSystemBus,
) -> None:
    sign_in(access_server, client_env, "dora", "--remember")
    traffic: list[str] = []
    with bus_traffic(private_bus, traffic):
        answer_over_the_bus(client_env, private_bus, auth_lab)
    assert any("Prompt" in message for message in traffic)  # the monitor saw the flow
    # The answer is in the calls that carry it (the test answers twice), and
    # nowhere else: not in a property, a signal, a reply or an error.
    carrying = [message for message in traffic if '"777"' in message]
    assert len(carrying) == 2
    assert all(m.startswith("method call") and "member=Answer" in m for m in carrying)
    assert not [message for message in traffic if "dora-pass" in message]
    assert "777" not in vpnd.log() and "dora-pass" not in vpnd.log()


def answer_over_the_bus(
    client_env: dict[str, str], private_bus: PrivateSystemBus, auth_lab: OpenVPNLab
) -> None:
    ok(vpnctl(["connect", "127.0.0.1", "--no-wait"], client_env))
    now = wait_for_question(client_env)
    prompt = now["prompt"]
    assert isinstance(prompt, dict)
    assert prompt["kind"] == "challenge" and prompt["message"] == "Enter the code we sent you"
    assert [f["name"] for f in prompt["fields"]] == ["response"]
    # A second client: busctl, answering once; the first valid answer wins.
    answer = [
        "busctl", f"--address={private_bus.address}", "call", "org.vpnd.Daemon",
        str(now["connection"]), "org.vpnd.Connection1", "Answer", "ua{ss}", str(prompt["id"]),
        "1", "response", "777",
    ]  # fmt: skip
    subprocess.run(answer, check=True, capture_output=True, timeout=10)
    again = subprocess.run(answer, capture_output=True, text=True, timeout=10)
    assert again.returncode != 0 and "no longer asked" in again.stderr
    deadline = time.monotonic() + 30
    while status(client_env)["state"] != "connected":
        assert time.monotonic() < deadline, status(client_env)
        time.sleep(0.1)
    assert ping(auth_lab.tunnel_gateway_udp)
    ok(vpnctl(["disconnect"], client_env))


def test_a_login_in_the_browser_waits_until_the_server_says_it_is_done(
    vpnd: VpndProcess,
    access_server: TestAccessServer,
    auth_lab: OpenVPNLab,
    auth_state: Path,
    client_env: dict[str, str],
) -> None:
    sign_in(access_server, client_env, "wendy", "--remember")
    control = auth_state / "wendy.control"
    control.unlink(missing_ok=True)
    with Terminal.vpnctl(["connect", "127.0.0.1", "--no-browser"], client_env) as terminal:
        terminal.expect("https://login.lab.test/sso?n=1")
        assert status(client_env)["state"] == "needs-input"
        # The person logs in at that address; the server then lets the client in.
        Path(control.read_text()).write_text("1")
        connected(terminal)
    assert ping(auth_lab.tunnel_gateway_udp)
    assert status(client_env)["prompt"] is None
    ok(vpnctl(["disconnect"], client_env))


def test_a_text_challenge_is_answered_at_the_terminal(
    vpnd: VpndProcess,
    access_server: TestAccessServer,
    auth_lab: OpenVPNLab,
    client_env: dict[str, str],
) -> None:
    sign_in(access_server, client_env, "tess", "--remember")
    with Terminal.vpnctl(["connect", "127.0.0.1"], client_env) as terminal:
        terminal.expect("Enter the code from the app")
        terminal.expect("Answer: ")
        terminal.send("424242")
        connected(terminal)
    assert ping(auth_lab.tunnel_gateway_udp)
    ok(vpnctl(["disconnect"], client_env))
    assert "424242" not in vpnd.log()


def test_a_blocked_account_is_named_and_not_retried(
    vpnd: VpndProcess, access_server: TestAccessServer, client_env: dict[str, str]
) -> None:
    sign_in(access_server, client_env, "mallory", "--remember")
    line = failed(vpnctl(["connect", "127.0.0.1"], client_env))
    assert "Your account is blocked" in line
    assert status(client_env)["error"] == "org.vpnd.Error.AuthorizationFailed"


def test_without_a_terminal_a_question_is_a_named_failure(
    vpnd: VpndProcess, access_server: TestAccessServer, client_env: dict[str, str]
) -> None:
    sign_in(access_server, client_env, "alice")
    result = vpnctl(["connect", "127.0.0.1"], client_env)
    assert result.returncode == 6
    assert "no terminal" in failed(result)
    # The question stays open for another client.
    assert wait_for_question(client_env)["state"] == "needs-input"
    ok(vpnctl(["disconnect"], client_env))
