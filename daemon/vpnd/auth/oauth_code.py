"""OAuth 2 authorization code with PKCE and a loopback redirect: eduVPN API v2 and v3.

The login opens a one-shot listener on 127.0.0.1, hands the authorization
URL to the caller (whose browser goes there), exchanges the code that comes
back for tokens and keeps them. `call` then runs API calls with the saved
tokens, refreshing them as `TokenKeeper` decides.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from vpnd.auth.loopback import LoopbackRedirect
from vpnd.auth.tokens import TokenKeeper
from vpnd.errors import AuthorizationFailed, VpndError
from vpnd.http import HttpClient
from vpnd.protocols import oauth, pkce
from vpnd.protocols.eduvpn import Endpoints
from vpnd.protocols.oauth import Tokens
from vpnd.store.store import SecretStore, ServerRecord, host_of

log = logging.getLogger("vpnd.auth")

T = TypeVar("T")


class OAuthCodeLogin:
    """Code flow with PKCE S256; tokens per server, refreshed once on expiry or refusal."""

    def __init__(
        self, http: HttpClient, secrets: SecretStore, client_id: str, timeout: float
    ) -> None:
        self._http = http
        self._client_id = client_id
        self._timeout = timeout
        self.tokens = TokenKeeper(secrets, client_id, self._token_request)

    async def _token_request(
        self, endpoints: Endpoints, form: dict[str, str], previous_refresh: str | None
    ) -> Tokens:
        reply = await self._http.post(
            endpoints.token_endpoint, data=form, headers={"Accept": "application/json"}
        )
        return oauth.parse_token_response(
            reply.status, reply.body, now=time.time(), previous_refresh_token=previous_refresh
        )

    def authorized(self, record: ServerRecord) -> bool:
        """Whether tokens are kept for the server."""
        return self.tokens.exist(record.owner, record.server_id)

    async def begin(
        self, record: ServerRecord, endpoints: Endpoints, caller: int
    ) -> _CodeAuthorization:
        """Open the loopback listener and build the authorization URL."""
        # The callback must come from the browser of the caller or the owner
        # (or root's, which could read the daemon's memory anyway).
        redirect = LoopbackRedirect(frozenset({caller, record.owner, 0}))
        await redirect.open()
        verifier = pkce.new_verifier()
        state = pkce.new_state()
        url = oauth.authorization_url(
            endpoints.authorization_endpoint,
            client_id=self._client_id,
            redirect_uri=redirect.redirect_uri,
            state=state,
            code_challenge=pkce.challenge_s256(verifier),
        )
        return _CodeAuthorization(self, record, endpoints, redirect, url, state, verifier)

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


class _CodeAuthorization:
    """One login in progress: waits for the callback, then exchanges the code."""

    def __init__(
        self,
        login: OAuthCodeLogin,
        record: ServerRecord,
        endpoints: Endpoints,
        redirect: LoopbackRedirect,
        url: str,
        state: str,
        verifier: str,
    ) -> None:
        self._login = login
        self._record = record
        self._endpoints = endpoints
        self._redirect = redirect
        self.url = url
        self._state = state
        self._verifier = verifier

    async def complete(self) -> None:
        """Wait for the browser, exchange the code and keep the tokens."""
        login, record, redirect = self._login, self._record, self._redirect
        host = host_of(record)
        try:
            try:
                async with asyncio.timeout(login._timeout):
                    query = await redirect.callback()
            except TimeoutError:
                raise AuthorizationFailed(
                    f"the browser did not come back within {login._timeout:g} seconds;"
                    f" log in to {host} again"
                ) from None
            code = oauth.parse_callback(query, self._state)
            tokens = await login._token_request(
                self._endpoints,
                oauth.code_grant(
                    code,
                    verifier=self._verifier,
                    redirect_uri=redirect.redirect_uri,
                    client_id=login._client_id,
                ),
                None,
            )
            login.tokens.save(record.owner, record.server_id, tokens)
        except Exception as exc:
            # The browser's page says it failed; the manager reports why to the caller.
            redirect.finish(
                False, exc.message if isinstance(exc, VpndError) else "The authorization failed."
            )
            raise
        redirect.finish(True, f"vpnd is now authorized for {host}. You can close this window.")

    def close(self) -> None:
        """Stop listening."""
        self._redirect.close()
