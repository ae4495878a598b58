"""The Access Server family: the kept profile is what a connect starts from."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab.pki import LabPKI
from vpnd.auth.access_server import (
    _MAX_WAITING,
    CREDENTIALS,
    PROFILE,
    AccessServerLogin,
    device_id,
)
from vpnd.errors import AuthorizationRequired, InvalidArgument, NotFound
from vpnd.http import Response
from vpnd.protocols.eduvpn import Endpoints
from vpnd.providers.access_server import AccessServerProvider
from vpnd.providers.base import Session
from vpnd.store.store import ServerRecord, ServerSecrets, Store

CA = "<ca>\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n</ca>\n"


@pytest.fixture
def session(tmp_path: Path) -> Session:
    vault = ServerSecrets(Store(tmp_path / "state").secrets, 1000, "00112233445566aa")
    return Session(Endpoints("https://as.example.org/", "", ""), "", vault, "as.example.org")


def profile(pki: LabPKI, *extra: str) -> str:
    cert, key = pki.issue_client("alice", days=30)
    lines = ["client", "dev tun", "remote as.example.org 1194 udp",
             "remote as.example.org 443 tcp", *extra]  # fmt: skip
    return "\n".join(lines) + "\n" + CA + f"<cert>\n{cert}</cert>\n<key>\n{key}</key>\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPKI:
    return LabPKI.create(tmp_path_factory.mktemp("pki"))


async def test_an_autologin_profile_connects_with_its_key_apart(
    session: Session, pki: LabPKI
) -> None:
    session.vault.set(PROFILE, {"kind": "autologin", "text": profile(pki)})
    provider = AccessServerProvider()
    [only] = await provider.profiles(session)
    assert only.profile_id == "autologin"
    connectable = await provider.obtain(session, "autologin", prefer_tcp=True)
    text = connectable.config.render()
    assert connectable.private_key is not None and b"PRIVATE KEY" in connectable.private_key
    assert "PRIVATE KEY" not in text and "<cert>" in text
    assert text.index("443 tcp") < text.index("1194 udp")  # --tcp puts TCP first
    assert connectable.expires_at > 0  # the certificate's end


async def test_what_cannot_connect_is_named(session: Session, pki: LabPKI) -> None:
    provider = AccessServerProvider()
    with pytest.raises(AuthorizationRequired, match="sign in"):
        await provider.obtain(session, "autologin", prefer_tcp=False)
    session.vault.set(PROFILE, {"kind": "userlogin", "text": profile(pki, "auth-user-pass")})
    with pytest.raises(NotFound, match='"userlogin"'):
        await provider.obtain(session, "autologin", prefer_tcp=False)
    # openvpn asks for the password at every connect: with nothing kept the
    # tunnel asks a person for both, with the user name alone for the password.
    assert (await provider.obtain(session, "userlogin", prefer_tcp=False)).user_pass is None
    session.vault.set(CREDENTIALS, {"username": "alice", "password": ""})
    connectable = await provider.obtain(session, "userlogin", prefer_tcp=False)
    assert connectable.user_pass == ("alice", "")
    session.vault.set(CREDENTIALS, {"username": "alice", "password": "correct horse"})
    connectable = await provider.obtain(session, "userlogin", prefer_tcp=False)
    assert connectable.user_pass == ("alice", "correct horse")
    assert "correct horse" not in repr(connectable)


def test_the_device_id_is_stable_and_hides_the_machine_id(tmp_path: Path) -> None:
    machine = tmp_path / "machine-id"
    machine.write_text("0123456789abcdef0123456789abcdef\n")
    first = device_id(machine)
    assert first == device_id(machine) and first.startswith("vpnd-")
    assert "0123456789abcdef" not in first
    machine.write_text("fedcba9876543210fedcba9876543210\n")
    assert device_id(machine) != first
    assert device_id(tmp_path / "missing").startswith("vpnd-")


class QuestioningServer:
    """Stands in for the Access Server's REST API (the lab's real one is in the bus
    tests): every download is answered with a CRV1 question."""

    def __init__(self) -> None:
        self.gets = 0

    async def get(self, url: str, *, headers: dict[str, str]) -> Response:
        self.gets += 1
        body = (
            "<Error><Type>Authorization Required</Type><Message>"
            f"CRV1:R,E:state{self.gets}:dGVzdA==:What is 1 x 3?</Message></Error>"
        ).encode()
        return Response(401, {"content-type": "text/xml"}, body, url)


async def test_waiting_questions_are_bounded(tmp_path: Path) -> None:
    server = QuestioningServer()
    login = AccessServerLogin(server, Store(tmp_path / "state").secrets, "vpnd-test")  # type: ignore[arg-type]
    endpoints = Endpoints("https://as.example.org/", "", "")
    for n in range(_MAX_WAITING + 10):
        record = ServerRecord(f"{n:016x}", 1000, "https://as.example.org/", 1.0, "access-server")
        asked = await login.sign_in(record, endpoints, {"username": "u", "password": "p"})
        assert asked["challenge"] == "What is 1 x 3?"
    assert len(login._challenges) == _MAX_WAITING
    # The oldest were dropped: answering one of them starts over.
    oldest = ServerRecord(f"{0:016x}", 1000, "https://as.example.org/", 1.0, "access-server")
    with pytest.raises(InvalidArgument, match="no question"):
        await login.sign_in(oldest, endpoints, {"response": "3"})
