"""A login in the user's browser, from the authorization URL to saved tokens.

Both browser flows (code with PKCE for API v2/v3, implicit for API v1) end
the same way: wait for the loopback redirect within the authorization
timeout, turn what the browser brought into tokens, keep them, and tell the
browser's page how it went. Only the middle step differs: `grant`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from vpnd.auth.loopback import LoopbackRedirect
from vpnd.auth.tokens import TokenKeeper
from vpnd.errors import AuthorizationFailed, InvalidArgument, VpndError
from vpnd.protocols.eduvpn import Endpoints
from vpnd.protocols.oauth import Tokens
from vpnd.store.store import ServerRecord, host_of

T = TypeVar("T")

# What the browser delivered (a query or a fragment) -> the server's tokens.
Grant = Callable[[str], Awaitable[Tokens]]


class TokenLogin:
    """What every browser login shares once it has tokens: they are kept per
    server and used through `tokens` (a TokenKeeper), renewed as it decides."""

    tokens: TokenKeeper

    def authorized(self, record: ServerRecord) -> bool:
        """Whether tokens are kept for the server."""
        return self.tokens.exist(record.owner, record.server_id)

    def forget(self, record: ServerRecord) -> None:
        """Drop the server's tokens: the next call needs a new login."""
        self.tokens.forget(record.owner, record.server_id)

    async def sign_in(
        self, record: ServerRecord, endpoints: Endpoints, fields: Mapping[str, str]
    ) -> dict[str, Any]:
        """These servers log in through the browser only."""
        raise InvalidArgument(
            f"{host_of(record)} logs in through the browser, not with a user name and password"
        )

    async def call(
        self,
        record: ServerRecord,
        endpoints: Endpoints,
        api_call: Callable[[str], Awaitable[T]],
    ) -> T:
        """Run `api_call(access_token)` with the server's tokens."""
        return await self.tokens.call(
            record.owner, record.server_id, host_of(record), endpoints, api_call
        )


class BrowserAuthorization:
    """One login in progress, waiting for the user's browser."""

    def __init__(
        self,
        url: str,
        redirect: LoopbackRedirect,
        record: ServerRecord,
        tokens: TokenKeeper,
        timeout: float,
        grant: Grant,
    ) -> None:
        self.url = url
        self._redirect = redirect
        self._record = record
        self._tokens = tokens
        self._timeout = timeout
        self._grant = grant

    async def complete(self) -> None:
        """Wait for the browser, obtain the tokens and keep them; raises VpndError."""
        host = host_of(self._record)
        try:
            try:
                async with asyncio.timeout(self._timeout):
                    answer = await self._redirect.callback()
            except TimeoutError:
                raise AuthorizationFailed(
                    f"the browser did not come back within {self._timeout:g} seconds;"
                    f" log in to {host} again"
                ) from None
            tokens = await self._grant(answer)
            self._tokens.save(self._record.owner, self._record.server_id, tokens)
        except Exception as exc:
            # The browser's page says it failed; the manager reports why to the caller.
            self._redirect.finish(
                False, exc.message if isinstance(exc, VpndError) else "The authorization failed."
            )
            raise
        self._redirect.finish(
            True, f"vpnd is now authorized for {host}. You can close this window."
        )

    def deliver(self, address: str) -> None:
        """The browser's final address, pasted by the user (headless login)."""
        self._redirect.deliver(address)

    def close(self) -> None:
        """Stop listening (idempotent)."""
        self._redirect.close()
