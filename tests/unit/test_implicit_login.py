"""API v1's implicit grant: the fragment comes back through the listener's page, nothing refreshes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from vpnd.auth.implicit import ImplicitLogin
from vpnd.errors import AuthorizationRequired, StateMismatch
from vpnd.protocols.eduvpn import Endpoints
from vpnd.protocols.oauth import Tokens
from vpnd.store.store import ServerRecord, Store

RECORD = ServerRecord("00112233445566aa", 1000, "https://old.example.org/", 1.0, "eduvpn-v1")
ENDPOINTS = Endpoints("", "https://old.example.org/portal/_oauth/authorize", "")


@pytest.fixture
def login(tmp_path: Path) -> ImplicitLogin:
    return ImplicitLogin(Store(tmp_path).secrets, "org.eduvpn.app.linux", timeout=10)


async def browser_posts(redirect_uri: str, fragment: str) -> int:
    """What the served page does: load, then post the fragment back."""
    port = urlsplit(redirect_uri).port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /callback HTTP/1.1\r\n\r\n")
    page = await reader.read()
    writer.close()
    assert b"window.location.hash" in page
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = fragment.encode()
    writer.write(f"POST /callback HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    reply = await reader.read()
    writer.close()
    return int(reply.split(b" ")[1])


async def test_a_token_from_the_fragment_is_kept(login: ImplicitLogin) -> None:
    pending = await login.begin(RECORD, ENDPOINTS, caller=1000)
    query = parse_qs(urlsplit(pending.url).query)
    assert query["response_type"] == ["token"] and query["scope"] == ["config"]
    fragment = urlencode(
        {"access_token": "tok", "token_type": "bearer", "expires_in": "3600",
         "state": query["state"][0]}
    )  # fmt: skip
    browser = asyncio.create_task(browser_posts(query["redirect_uri"][0], fragment))
    await pending.complete()
    assert await browser == 200
    pending.close()
    assert login.authorized(RECORD)
    assert await login.call(RECORD, ENDPOINTS, _echo) == "tok"


async def test_a_fragment_for_another_login_is_refused(login: ImplicitLogin) -> None:
    pending = await login.begin(RECORD, ENDPOINTS, caller=1000)
    redirect_uri = parse_qs(urlsplit(pending.url).query)["redirect_uri"][0]
    browser = asyncio.create_task(
        browser_posts(redirect_uri, "access_token=tok&state=someone-elses")
    )
    with pytest.raises(StateMismatch):
        await pending.complete()
    assert await browser == 400
    pending.close()
    assert not login.authorized(RECORD)


async def test_an_expired_or_refused_token_means_logging_in_again(login: ImplicitLogin) -> None:
    login.tokens.save(RECORD.owner, RECORD.server_id, Tokens("old", "", time.time() - 60))
    with pytest.raises(AuthorizationRequired, match="log in to it again"):
        await login.call(RECORD, ENDPOINTS, _echo)
    assert not login.authorized(RECORD)

    login.tokens.save(RECORD.owner, RECORD.server_id, Tokens("tok", "", 0.0))

    async def refused(token: str) -> str:
        raise AuthorizationRequired("401")

    with pytest.raises(AuthorizationRequired):
        await login.call(RECORD, ENDPOINTS, refused)
    assert not login.authorized(RECORD)


async def _echo(token: str) -> str:
    return token
