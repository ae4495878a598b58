"""OpenVPN Access Server through the real daemon: add, sign in, a question, and what fails.

The lab's Access Server (tests/lab/portal_as.py) speaks the REST profile API
over real TLS; vpnd and vpnctl run as people run them.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.lab.daemon import VpndProcess, failed, ok, state_files, vpnctl
from tests.lab.dbus import PrivateSystemBus
from tests.lab.pki import LabPKI
from tests.lab.portal_as import Challenge, TestAccessServer

pytestmark = pytest.mark.bus

DEST = "org.vpnd.Daemon"
PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def access_server_session(lab_pki: LabPKI) -> Iterator[TestAccessServer]:
    with TestAccessServer(lab_pki) as server:
        yield server


@pytest.fixture
def access_server(access_server_session: TestAccessServer) -> Iterator[TestAccessServer]:
    access_server_session.reset()
    yield access_server_session
    access_server_session.reset()


def add(server: TestAccessServer, env: dict[str, str], *extra: str, password: str = PASSWORD
        ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return vpnctl(
        ["add", "--access-server", server.base_url, "--user", "alice", "--password-stdin", *extra],
        env,
        stdin=password + "\n",
    )


def servers(env: dict[str, str]) -> list[dict[str, object]]:
    return list(json.loads(ok(vpnctl(["list", "--json"], env))))


def test_add_and_sign_in_keeps_the_profile_sealed(
    vpnd: VpndProcess, access_server: TestAccessServer, client_env: dict[str, str]
) -> None:
    out = ok(add(access_server, client_env, "--autologin"))
    assert "signed in" in out
    [server] = servers(client_env)
    assert server["kind"] == "access-server" and server["authorized"] is True
    [request] = access_server.requests
    assert request.path == "/rest/GetAutologin" and request.username == "alice"
    assert request.params["tls-cryptv2"] == "1" and request.params["action"] == "import"
    assert request.params["deviceID"].startswith("vpnd-")
    profiles = json.loads(ok(vpnctl(["profiles", "127.0.0.1", "--json"], client_env)))
    assert [p["profile_id"] for p in profiles] == ["autologin"]
    # The profile holds the client's key: nothing of it, nor the password, lies in the clear.
    key_lines = [line for line in access_server.issued_keys[-1].splitlines() if "-----" not in line]
    for path, data in state_files(vpnd).items():
        assert PASSWORD.encode() not in data, path
        for line in key_lines:
            assert line.encode() not in data, path
    # The password is not kept unless asked, and a second sign-in can keep it.
    ok(vpnctl(["login", "127.0.0.1", "--user", "alice", "--password-stdin", "--remember"],
              client_env, stdin=PASSWORD + "\n"))  # fmt: skip
    assert access_server.requests[-1].path == "/rest/GetUserlogin"


def test_a_wrong_password_is_named_and_nothing_is_kept(
    vpnd: VpndProcess, access_server: TestAccessServer, client_env: dict[str, str]
) -> None:
    before = state_files(vpnd)
    result = add(access_server, client_env, password="wrong")
    assert result.returncode != 0
    assert "user name" in result.stderr and "password" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert servers(client_env) == []
    # vpnctl adds the server, then removes it when signing in fails: the list
    # of servers may now exist, empty; no secret was written.
    after = state_files(vpnd)
    assert json.loads(after.pop("users/0/servers.json", b'{"servers": []}'))["servers"] == []
    assert after == before


def test_autologin_without_the_permission_is_named(
    vpnd: VpndProcess, access_server: TestAccessServer, client_env: dict[str, str]
) -> None:
    access_server.autologin_users = set()
    line = failed(add(access_server, client_env, "--autologin"))
    assert "autologin" in line
    assert servers(client_env) == []


def test_a_question_without_a_terminal_is_a_named_failure_not_a_hang(
    vpnd: VpndProcess, access_server: TestAccessServer, client_env: dict[str, str]
) -> None:
    access_server.challenge = Challenge(
        text="What is 1 x 3?", answer="3", echo=True, response_required=True
    )
    line = failed(add(access_server, client_env))
    assert "no terminal" in line and "What is 1 x 3?" in line
    assert servers(client_env) == []


def test_a_question_answered_over_the_bus(
    vpnd: VpndProcess,
    access_server: TestAccessServer,
    client_env: dict[str, str],
    private_bus: PrivateSystemBus,
) -> None:
    access_server.challenge = Challenge(
        text="What is 1 x 3?", answer="3", echo=True, response_required=True
    )
    busctl = ["busctl", f"--address={private_bus.address}", "--json=short"]
    added = subprocess.run(
        [*busctl, "call", DEST, "/org/vpnd/Daemon", "org.vpnd.Manager1", "AddServerWithOptions",
         "sa{sv}", access_server.base_url, "1", "kind", "s", "access-server"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    path = json.loads(added.stdout)["data"][0]

    def sign_in(*fields: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*busctl, "call", DEST, path, "org.vpnd.Server1", "SignIn", "a{ss}",
             str(len(fields) // 2), *fields],
            capture_output=True, text=True, check=False,
        )  # fmt: skip

    asked = json.loads(sign_in("username", "alice", "password", PASSWORD).stdout)["data"][0]
    assert asked["challenge"]["data"] == "What is 1 x 3?"
    assert asked["echo"]["data"] is True and asked["response_required"]["data"] is True
    wrong = sign_in("response", "4")
    assert wrong.returncode != 0 and "refused the user name or password" in wrong.stderr
    # The state of a question is used once: a second answer needs a new question.
    again = sign_in("response", "3")
    assert again.returncode != 0 and "no question" in again.stderr
    sign_in("username", "alice", "password", PASSWORD)
    assert json.loads(sign_in("response", "3").stdout)["data"][0] == {}
    [server] = servers(client_env)
    assert server["authorized"] is True


def test_eduvpn_servers_do_not_sign_in_with_a_password(
    vpnd: VpndProcess, access_server: TestAccessServer, client_env: dict[str, str]
) -> None:
    result = vpnctl(["add", "https://127.0.0.1:1/", "--access-server", "--user", "x",
                     "--password-stdin"], client_env, stdin="x\n")  # fmt: skip
    # The Access Server is added by name, then the sign-in cannot reach it.
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert servers(client_env) == []


def test_a_web_login_server_is_named_and_its_profile_link_imports_the_profile(
    vpnd: VpndProcess, access_server: TestAccessServer, client_env: dict[str, str]
) -> None:
    access_server.web_auth = "SAML,external"
    result = add(access_server, client_env)
    assert result.returncode == 3  # log in (on the web page)
    line = failed(result)
    assert "web page" in line and "--token-url" in line
    assert servers(client_env) == []
    # The web page's link, as the person copies it, signs in with no password.
    link = access_server.issue_profile_token("userlogin", "alice")
    ok(vpnctl(["add", "--access-server", access_server.base_url, "--token-url", link],
              client_env))  # fmt: skip
    [server] = servers(client_env)
    assert server["authorized"] is True
    request = access_server.requests[-1]
    assert request.path == "/rest/GetProfileViaToken" and request.username is None
    profiles = json.loads(ok(vpnctl(["profiles", "127.0.0.1", "--json"], client_env)))
    assert [p["profile_id"] for p in profiles] == ["userlogin"]
    # A link is good once; one to another server is not followed at all.
    used = failed(vpnctl(["login", "127.0.0.1", "--token-url", link], client_env))
    assert "token not found" in used
    elsewhere = link.replace("127.0.0.1", "localhost")
    before = len(access_server.requests)
    refused = vpnctl(["login", "127.0.0.1", "--token-url", elsewhere], client_env)
    assert refused.returncode == 2 and "must point to 127.0.0.1" in failed(refused)
    assert len(access_server.requests) == before
    assert servers(client_env)[0]["authorized"] is True  # what was imported stays
