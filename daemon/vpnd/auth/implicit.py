"""The OAuth implicit grant of eduVPN API v1.

The token comes back in the redirect's fragment: the loopback listener
serves a page whose script posts it back (see `loopback`), and the state is
checked as in the code flow. There is no token endpoint and no refresh
token, so an expired or refused token means logging in again.
"""

from __future__ import annotations

import time

from vpnd.auth.browser_login import BrowserAuthorization, TokenLogin
from vpnd.auth.loopback import LoopbackRedirect
from vpnd.auth.tokens import TokenKeeper
from vpnd.protocols import eduvpn_v1, pkce
from vpnd.protocols.eduvpn import Endpoints
from vpnd.protocols.oauth import Tokens
from vpnd.store.store import SecretStore, ServerRecord


class ImplicitLogin(TokenLogin):
    """response_type=token; tokens per server, never refreshed."""

    def __init__(self, secrets: SecretStore, client_id: str, timeout: float) -> None:
        self._client_id = client_id
        self._timeout = timeout
        self.tokens = TokenKeeper(secrets, client_id, None)

    async def begin(
        self, record: ServerRecord, endpoints: Endpoints, caller: int
    ) -> BrowserAuthorization:
        """Open the loopback listener with its fragment page and build the authorization URL."""
        redirect = LoopbackRedirect(
            frozenset({caller, record.owner, 0}), fragment_page=eduvpn_v1.CALLBACK_PAGE
        )
        await redirect.open()
        state = pkce.new_state()
        url = eduvpn_v1.authorization_url(
            endpoints.authorization_endpoint,
            client_id=self._client_id,
            redirect_uri=redirect.redirect_uri,
            state=state,
        )

        async def read_token(fragment: str) -> Tokens:
            return eduvpn_v1.parse_fragment(fragment, state, now=time.time())

        return BrowserAuthorization(url, redirect, record, self.tokens, self._timeout, read_token)
