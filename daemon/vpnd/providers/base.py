"""The interface every server family implements for the manager."""

from __future__ import annotations

from typing import Protocol

from vpnd.protocols.eduvpn import Endpoints, IssuedConfig, Profile
from vpnd.protocols.oauth import Tokens


class Provider(Protocol):
    """One server family: endpoints, profiles, configs, release, tokens."""

    async def discover(self, base_url: str) -> Endpoints:
        """Where the server's API and OAuth endpoints are (fetched fresh every time)."""
        ...

    async def profiles(self, endpoints: Endpoints, access_token: str) -> list[Profile]:
        """The profiles the user may connect to."""
        ...

    async def connect(
        self, endpoints: Endpoints, access_token: str, profile_id: str, *, prefer_tcp: bool
    ) -> IssuedConfig:
        """A fresh configuration for a profile."""
        ...

    async def disconnect(self, endpoints: Endpoints, access_token: str) -> None:
        """Release server-side resources of the session."""
        ...

    async def token(
        self, endpoints: Endpoints, form: dict[str, str], previous_refresh: str | None
    ) -> Tokens:
        """Exchange a grant (code or refresh token) at the token endpoint."""
        ...
