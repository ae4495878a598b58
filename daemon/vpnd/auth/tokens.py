"""Saved authorizations: use, refresh once on expiry or 401, forget when refused.

Tokens are scoped per server (per owner). The store keeps them; this module
decides when to refresh and when the user has to log in again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from vpnd.errors import AuthorizationRequired
from vpnd.protocols import oauth
from vpnd.protocols.eduvpn import Endpoints
from vpnd.protocols.oauth import Tokens
from vpnd.store.store import SecretStore

log = logging.getLogger("vpnd.auth")

T = TypeVar("T")

# (endpoints, form, the refresh token the form spends or None) -> the server's new tokens
TokenRequest = Callable[[Endpoints, dict[str, str], str | None], Awaitable[Tokens]]

SECRET_NAME = "oauth"  # noqa: S105 (the name of a record, not a secret)
# Refresh a little before the server would refuse the access token.
_EXPIRY_MARGIN = 30.0


class TokenKeeper:
    """Calls the API with a server's saved tokens, refreshing them as needed."""

    def __init__(self, secrets: SecretStore, client_id: str, request: TokenRequest | None) -> None:
        """`request` reaches the token endpoint; None where there is none (API v1),
        so that expired or refused tokens mean logging in again."""
        self._secrets = secrets
        self._client_id = client_id
        self._request = request

    def load(self, owner: int, server_id: str) -> Tokens | None:
        """The saved tokens of a server, if any."""
        data = self._secrets.get(owner, server_id, SECRET_NAME)
        return oauth.tokens_from_dict(data) if data is not None else None

    def exist(self, owner: int, server_id: str) -> bool:
        """Whether tokens are saved for a server (they are not read or checked)."""
        return self._secrets.has(owner, server_id, SECRET_NAME)

    def save(self, owner: int, server_id: str, tokens: Tokens) -> None:
        """Keep new tokens."""
        self._secrets.set(owner, server_id, SECRET_NAME, oauth.tokens_to_dict(tokens))

    def forget(self, owner: int, server_id: str) -> None:
        """Throw the tokens away: the next use needs a new authorization."""
        self._secrets.delete(owner, server_id, SECRET_NAME)

    async def call(
        self,
        owner: int,
        server_id: str,
        server_label: str,
        endpoints: Endpoints,
        api_call: Callable[[str], Awaitable[T]],
    ) -> T:
        """Run `api_call(access_token)`; on expiry or a 401 refresh once and retry."""
        tokens = self.load(owner, server_id)
        if tokens is None:
            raise AuthorizationRequired(
                f"vpnd has no authorization for {server_label}; log in to it first"
            )
        # One refresh per call: on expiry before the call, or after a 401.
        may_refresh = True
        if tokens.expires_at and tokens.expires_at - _EXPIRY_MARGIN < time.time():
            tokens = await self._refresh(owner, server_id, server_label, endpoints, tokens)
            may_refresh = False
        while True:
            try:
                return await api_call(tokens.access_token)
            except AuthorizationRequired:
                if not may_refresh:
                    self.forget(owner, server_id)
                    raise AuthorizationRequired(
                        f"{server_label} refused the saved authorization; log in to it again"
                    ) from None
            log.info("%s refused the access token; refreshing once", server_label)
            tokens = await self._refresh(owner, server_id, server_label, endpoints, tokens)
            may_refresh = False

    async def _refresh(
        self,
        owner: int,
        server_id: str,
        server_label: str,
        endpoints: Endpoints,
        tokens: Tokens,
    ) -> Tokens:
        if self._request is None or not tokens.refresh_token:
            self.forget(owner, server_id)
            raise AuthorizationRequired(
                f"the authorization for {server_label} has expired; log in to it again"
            )
        try:
            fresh = await self._request(
                endpoints,
                oauth.refresh_grant(tokens.refresh_token, client_id=self._client_id),
                tokens.refresh_token,
            )
        except AuthorizationRequired:
            # Refresh tokens are single-use and can be revoked: what we hold is worthless now.
            self.forget(owner, server_id)
            raise AuthorizationRequired(
                f"{server_label} refused the saved authorization (it expired or was revoked);"
                " log in to it again"
            ) from None
        self.save(owner, server_id, fresh)
        return fresh
