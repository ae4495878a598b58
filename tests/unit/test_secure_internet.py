"""Secure internet's login: the home server's, through the list's shortcut (unit level)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from vpnd.protocols.discovery import authentication_url
from vpnd.protocols.eduvpn import Endpoints
from vpnd.providers.secure_internet import SecureInternetLogin
from vpnd.store.store import ServerRecord

HOME = "https://home.example.org/"
AUTHORIZE = f"{HOME}oauth/authorize?client_id=org.eduvpn.app.linux&state=x y"


class Pending:
    def __init__(self, url: str) -> None:
        self.url = url

    async def complete(self) -> None:
        return None

    def close(self) -> None:
        return None


class InnerLogin:
    def authorized(self, record: ServerRecord) -> bool:
        return True

    def forget(self, record: ServerRecord) -> None:
        return None

    async def begin(self, record: ServerRecord, endpoints: Endpoints, caller: int) -> Pending:
        return Pending(AUTHORIZE)

    async def sign_in(
        self, record: ServerRecord, endpoints: Endpoints, fields: Mapping[str, str]
    ) -> dict[str, Any]:
        return {}

    async def call(
        self, record: ServerRecord, endpoints: Endpoints, api_call: Callable[[str], Awaitable[Any]]
    ) -> Any:
        return await api_call("token")


def record(org_id: str) -> ServerRecord:
    return ServerRecord("0123456789abcdef", 1000, HOME, 0.0, "secure-internet", org_id=org_id)


ENDPOINTS = Endpoints(api_endpoint=HOME, authorization_endpoint=HOME, token_endpoint=HOME)


def test_the_template_gets_both_values_url_encoded() -> None:
    url = authentication_url(
        "https://home.example.org/_saml/login?ReturnTo=@RETURN_TO@&IdP=@ORG_ID@",
        AUTHORIZE,
        "https://idp.uni.example/a b",
    )
    assert url == (
        "https://home.example.org/_saml/login?ReturnTo="
        "https%3A%2F%2Fhome.example.org%2Foauth%2Fauthorize%3Fclient_id%3Dorg.eduvpn.app.linux"
        "%26state%3Dx%20y&IdP=https%3A%2F%2Fidp.uni.example%2Fa%20b"
    )


@given(st.text(max_size=50), st.text(max_size=50))
def test_what_is_filled_in_cannot_add_parameters(return_to: str, org_id: str) -> None:
    url = authentication_url("https://h/?a=@RETURN_TO@&b=@ORG_ID@", return_to, org_id)
    assert url.count("&") == 1 and url.count("=") == 2 and url.count("?") == 1


async def test_the_login_takes_the_shortcut_for_its_organization() -> None:
    asked: list[str] = []

    async def template_for(base_url: str) -> str:
        asked.append(base_url)
        return f"{HOME}_saml/login?ReturnTo=@RETURN_TO@&IdP=@ORG_ID@"

    login = SecureInternetLogin(InnerLogin(), template_for)
    pending = await login.begin(record("https://idp.uni.example"), ENDPOINTS, 1000)
    assert pending.url.startswith(f"{HOME}_saml/login?ReturnTo=https%3A")
    assert pending.url.endswith("IdP=https%3A%2F%2Fidp.uni.example")
    assert asked == [HOME]


async def test_without_a_template_or_an_organization_the_plain_login() -> None:
    async def none(base_url: str) -> str:
        return ""

    assert (await SecureInternetLogin(InnerLogin(), none).begin(record("o"), ENDPOINTS, 1)).url == (
        AUTHORIZE
    )
    plain = SecureInternetLogin(InnerLogin(), None)
    assert (await plain.begin(record("o"), ENDPOINTS, 1)).url == AUTHORIZE
