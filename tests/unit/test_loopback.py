"""The loopback redirect on a real socket: one callback, then it closes."""

from __future__ import annotations

import asyncio
import os

import pytest

from vpnd.auth.loopback import LoopbackRedirect


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
