"""The loopback redirect: one OAuth callback on 127.0.0.1, then the listener closes.

The user's browser is sent to http://127.0.0.1:{port}/callback by the
authorization server. We answer that one request (after the daemon knows
whether the authorization worked, so the page can say so) and stop listening.
Other paths (a browser asking for /favicon.ico) get 404 and do not end it.

In the implicit grant (API v1) the token is in the redirect's fragment,
which a browser never sends. There `GET /callback` is answered with a page
whose script posts the fragment back as the body of `POST /callback`, and
that POST is the one callback.
"""

from __future__ import annotations

import asyncio
import html
import logging
from pathlib import Path

from vpnd.auth.peer import MAX_TABLE, socket_owner
from vpnd.errors import InvalidArgument

log = logging.getLogger("vpnd.auth")

_MAX_HEAD = 8192
# A posted fragment holds a token, a state and a few short fields.
_MAX_BODY = 8192
# /proc/self/net stays readable where the unit hides the rest of /proc (ProcSubset=pid).
_TCP_TABLE = Path("/proc/self/net/tcp")
_HEAD_TIMEOUT = 10.0
_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>vpnd</title></head>
<body><h1>{title}</h1><p>{text}</p></body></html>
"""


class LoopbackRedirect:
    """Serves `/callback` once on 127.0.0.1 and an ephemeral port."""

    def __init__(
        self,
        browser_uids: frozenset[int] | None = None,
        tcp_table: Path = _TCP_TABLE,
        *,
        fragment_page: str | None = None,
    ) -> None:
        """`fragment_page`: the page that posts the fragment back (implicit grant), or None."""
        # Only a browser of these users may deliver the callback: another local
        # user could otherwise end someone's login with a forged one.
        self._browser_uids = browser_uids
        self._fragment_page = fragment_page
        self._tcp_table = tcp_table
        self._server: asyncio.Server | None = None
        self._query: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._outcome: asyncio.Future[tuple[bool, str]] = asyncio.get_running_loop().create_future()
        self.port = 0

    @property
    def redirect_uri(self) -> str:
        """The redirect URI to register in the authorization request."""
        return f"http://127.0.0.1:{self.port}/callback"

    async def open(self) -> None:
        """Start listening."""
        self._server = await asyncio.start_server(self._serve, host="127.0.0.1", port=0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def callback(self) -> str:
        """The query string of the first /callback request (the posted fragment, with a
        fragment page)."""
        return await asyncio.shield(self._query)

    def deliver(self, address: str) -> None:
        """Take the callback as an address pasted by the user (headless login:
        the browser ran on another device, where the loopback address does
        not load). It must be this redirect's own address; it is then checked
        exactly as a callback the browser delivers. InvalidArgument otherwise."""
        address = address.strip()
        base, _, fragment = address.partition("#")
        target, _, query = base.partition("?")
        if target != self.redirect_uri or len(address) > _MAX_HEAD:
            raise InvalidArgument(
                "that is not the address this login sends the browser back to"
                f" ({self.redirect_uri}?…); paste the address from the browser's address bar"
            )
        if self._fragment_page is not None:
            query = fragment  # the implicit grant's answer is in the fragment
        if self._query.done():
            raise InvalidArgument("this login was already completed or cancelled; log in again")
        self._query.set_result(query)
        # Nobody waits on the loopback for the outcome page.
        self.finish(True, "")

    def finish(self, ok: bool, message: str) -> None:
        """Tell the waiting browser request how the authorization ended."""
        if not self._outcome.done():
            self._outcome.set_result((ok, message))

    def close(self) -> None:
        """Stop listening (idempotent). A browser still waiting is told it failed."""
        self.finish(False, "The authorization was cancelled.")
        if self._server is not None:
            self._server.close()
            self._server = None
        if not self._query.done():
            self._query.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            writer.close()
            return
        if len(head) > _MAX_HEAD:
            await _reply(writer, 431, "Request too large", "")
            return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        allowed = ("GET", "POST") if self._fragment_page is not None else ("GET",)
        if len(parts) != 3 or parts[0] not in allowed:
            await _reply(writer, 405, "Method not allowed", "")
            return
        path, _, query = parts[1].partition("?")
        if path != "/callback":
            await _reply(writer, 404, "Not found", "")
            return
        if self._fragment_page is not None:
            if parts[0] == "GET":
                # The page holds nothing secret; the token stays in the browser until posted.
                await _send(writer, 200, "OK", self._fragment_page.encode())
                return
            posted = await _read_body(reader, head)
            if posted is None:
                await _reply(writer, 400, "Bad request", "The login could not be read.")
                return
            query = posted
        if self._query.done():
            await _reply(writer, 410, "Already used", "This authorization link was already used.")
            return
        if not self._from_allowed_user(writer):
            log.warning("refused an authorization callback from another local user")
            await _reply(writer, 403, "Forbidden", "This login belongs to another user.")
            return
        self._query.set_result(query)
        try:
            ok, message = await asyncio.wait_for(asyncio.shield(self._outcome), timeout=60)
        except TimeoutError:
            ok, message = False, "The daemon did not finish the authorization in time."
        title = "Authorized" if ok else "Authorization failed"
        await _reply(writer, 200 if ok else 400, title, message)
        self.close()

    def _from_allowed_user(self, writer: asyncio.StreamWriter) -> bool:
        if self._browser_uids is None:
            return True
        ours, theirs = writer.get_extra_info("sockname"), writer.get_extra_info("peername")
        try:
            with self._tcp_table.open(encoding="ascii", errors="replace") as f:
                table = f.read(MAX_TABLE)
        except OSError as exc:
            log.error("cannot tell who sent the authorization callback: %s", exc)
            return False
        uid = socket_owner(table, (theirs[0], theirs[1]), (ours[0], ours[1]))
        return uid in self._browser_uids


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> str | None:
    """A POST's body (at most _MAX_BODY bytes of ASCII, as Content-Length says), or None."""
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = value.strip()
    if length is None or not length.isdigit() or int(length) > _MAX_BODY:
        return None
    try:
        async with asyncio.timeout(_HEAD_TIMEOUT):
            body = await reader.readexactly(int(length))
        return body.decode("ascii")
    except (TimeoutError, asyncio.IncompleteReadError, OSError, UnicodeDecodeError):
        return None


async def _reply(writer: asyncio.StreamWriter, status: int, title: str, text: str) -> None:
    body = _PAGE.format(title=html.escape(title), text=html.escape(text)).encode()
    await _send(writer, status, title, body)


async def _send(writer: asyncio.StreamWriter, status: int, title: str, body: bytes) -> None:
    head = (
        f"HTTP/1.1 {status} {title}\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        writer.write(head + body)
        await writer.drain()
    except OSError:
        log.debug("the browser went away before the callback page was sent")
    finally:
        writer.close()
