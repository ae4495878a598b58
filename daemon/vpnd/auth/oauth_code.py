"""OAuth 2 authorization code with PKCE and a loopback redirect: eduVPN API v2 and v3.

The login opens a one-shot listener on 127.0.0.1, hands the authorization
URL to the caller (whose browser goes there), exchanges the code that comes
back for tokens and keeps them. `call` then runs API calls with the saved
tokens, refreshing them as `TokenKeeper` decides.
"""

from __future__ import annotations

import time

from vpnd.auth.browser_login import BrowserAuthorization, TokenLogin
from vpnd.auth.loopback import LoopbackRedirect
from vpnd.auth.tokens import TokenKeeper
from vpnd.http import HttpClient
from vpnd.protocols import oauth, pkce
from vpnd.protocols.eduvpn import Endpoints
from vpnd.protocols.oauth import Tokens
from vpnd.store.store import SecretStore, ServerRecord


class OAuthCodeLogin(TokenLogin):
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

    async def begin(
        self, record: ServerRecord, endpoints: Endpoints, caller: int
    ) -> BrowserAuthorization:
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

        async def exchange(query: str) -> Tokens:
            code = oauth.parse_callback(query, state)
            form = oauth.code_grant(
                code,
                verifier=verifier,
                redirect_uri=redirect.redirect_uri,
                client_id=self._client_id,
            )
            return await self._token_request(endpoints, form, None)

        return BrowserAuthorization(url, redirect, record, self.tokens, self._timeout, exchange)
