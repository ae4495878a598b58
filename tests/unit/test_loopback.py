"""The loopback redirect on a real socket: one callback, then it closes."""

from __future__ import annotations

import asyncio
import os

import pytest

from vpnd.auth.loopback import LoopbackRedirect
from vpnd.errors import InvalidArgument


async def fetch(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split(" ")[1]), body


async def test_one_callback_then_closed() -> None:
    redirect = LoopbackRedirect()
    await redirect.open()
    assert redirect.redirect_uri == f"http://127.0.0.1:{redirect.port}/callback"
    assert (await fetch(redirect.port, "/favicon.ico"))[0] == 404
    browser = asyncio.create_task(fetch(redirect.port, "/callback?code=c&state=s"))
    assert await redirect.callback() == "code=c&state=s"
    redirect.finish(True, "All <done>")
    status, body = await browser
    assert status == 200
    assert "All &lt;done&gt;" in body
    with pytest.raises(OSError):
        await fetch(redirect.port, "/callback?code=again")


async def test_failure_is_shown_to_the_browser() -> None:
    redirect = LoopbackRedirect()
    await redirect.open()
    browser = asyncio.create_task(fetch(redirect.port, "/callback?state=wrong"))
    await redirect.callback()
    redirect.finish(False, "state mismatch")
    status, body = await browser
    assert status == 400 and "state mismatch" in body


async def test_other_methods_are_refused() -> None:
    redirect = LoopbackRedirect()
    await redirect.open()
    assert (await fetch(redirect.port, "/callback?code=x", method="POST"))[0] == 405
    redirect.close()


async def test_close_cancels_a_waiter() -> None:
    redirect = LoopbackRedirect()
    await redirect.open()
    waiter = asyncio.create_task(redirect.callback())
    await asyncio.sleep(0)
    redirect.close()
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_a_callback_from_another_user_is_refused_and_the_login_goes_on() -> None:
    redirect = LoopbackRedirect(frozenset({os.getuid() + 12345}))
    await redirect.open()
    status, body = await fetch(redirect.port, "/callback?code=forged&state=forged")
    assert status == 403
    assert "another user" in body
    assert not redirect._query.done()  # still waiting for the right browser
    redirect.close()


async def test_a_callback_from_the_owner_is_taken() -> None:
    redirect = LoopbackRedirect(frozenset({os.getuid()}))
    await redirect.open()
    browser = asyncio.create_task(fetch(redirect.port, "/callback?code=c&state=s"))
    assert await redirect.callback() == "code=c&state=s"
    redirect.finish(True, "ok")
    assert (await browser)[0] == 200


async def post(port: int, path: str, body: bytes, length: int | None = None) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    size = len(body) if length is None else length
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {size}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, text = data.decode().partition("\r\n\r\n")
    return int(head.split(" ")[1]), text


async def test_a_fragment_page_is_served_and_the_posted_fragment_is_the_callback() -> None:
    redirect = LoopbackRedirect(fragment_page="<p>post the fragment</p>")
    await redirect.open()
    # The page may be loaded more than once (a reload); it ends nothing.
    for _ in range(2):
        assert await fetch(redirect.port, "/callback") == (200, "<p>post the fragment</p>")
    browser = asyncio.create_task(post(redirect.port, "/callback", b"access_token=t&state=s"))
    assert await redirect.callback() == "access_token=t&state=s"
    redirect.finish(True, "logged in")
    status, body = await browser
    assert status == 200 and "logged in" in body
    with pytest.raises(OSError):
        await fetch(redirect.port, "/callback")


@pytest.mark.parametrize(
    ("body", "length"),
    [(b"x" * 8193, None), (b"access_token=t", 100), (b"\xff\xfe", None)],
    ids=["too-long", "short-body", "not-ascii"],
)
async def test_a_bad_posted_fragment_is_refused_and_the_listener_waits_on(
    body: bytes, length: int | None
) -> None:
    redirect = LoopbackRedirect(fragment_page="page")
    await redirect.open()
    if length is not None:
        # The body ends before Content-Length says: the read gives up at end of stream.
        reader, writer = await asyncio.open_connection("127.0.0.1", redirect.port)
        writer.write(
            f"POST /callback HTTP/1.1\r\nContent-Length: {length}\r\n\r\n".encode() + body
        )
        writer.write_eof()
        data = await reader.read()
        writer.close()
        assert data.startswith(b"HTTP/1.1 400")
    else:
        assert (await post(redirect.port, "/callback", body))[0] == 400
    # Nothing was delivered: a good post still ends the login.
    browser = asyncio.create_task(post(redirect.port, "/callback", b"access_token=t"))
    assert await redirect.callback() == "access_token=t"
    redirect.finish(True, "ok")
    assert (await browser)[0] == 200


async def test_a_pasted_address_is_the_callback_once() -> None:
    redirect = LoopbackRedirect()
    await redirect.open()
    try:
        for wrong in (
            "https://evil.example/callback?code=x",
            f"http://127.0.0.1:{redirect.port + 1}/callback?code=x",
            f"http://127.0.0.1:{redirect.port}/other?code=x",
            "",
        ):
            with pytest.raises(InvalidArgument, match="not the address"):
                redirect.deliver(wrong)
        redirect.deliver(f"  {redirect.redirect_uri}?code=abc&state=s1\n")
        assert await redirect.callback() == "code=abc&state=s1"
        with pytest.raises(InvalidArgument, match="already"):
            redirect.deliver(f"{redirect.redirect_uri}?code=again&state=s1")
    finally:
        redirect.close()


async def test_a_pasted_address_of_the_implicit_grant_carries_its_fragment() -> None:
    redirect = LoopbackRedirect(fragment_page="<html></html>")
    await redirect.open()
    try:
        redirect.deliver(f"{redirect.redirect_uri}#access_token=t&state=s2")
        assert await redirect.callback() == "access_token=t&state=s2"
    finally:
        redirect.close()
