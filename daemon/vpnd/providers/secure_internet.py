"""eduVPN secure internet: one login at the organization's home server, the
VPN at any location of the federation.

A secure-internet server is added by organization: its record's `url` is
the organization's home server and `location` the base URL of the server
whose API is used ("" for the home server itself). Every location speaks API
v3. The login is the home server's: its authorization and token endpoints
are used for logging in and refreshing, wherever the tunnel goes, and a
location's own OAuth endpoints are never called. The token the home server
issues is valid at every location, so switching locations needs no login.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from vpnd.protocols.discovery import authentication_url
from vpnd.protocols.documents import normalize_base_url
from vpnd.protocols.eduvpn import Endpoints
from vpnd.providers.base import Login, PendingAuthorization
from vpnd.providers.eduvpn_v3 import EduVPNv3Provider
from vpnd.store.store import ServerRecord

T = TypeVar("T")

#: Where the server list's login shortcut for a home server comes from.
TemplateSource = Callable[[str], Awaitable[str]]


class SecureInternetProvider(EduVPNv3Provider):
    """API v3 at the chosen location, with the home server's login endpoints."""

    kind = "secure-internet"

    async def discover(self, base_url: str, record: ServerRecord | None = None) -> Endpoints:
        """The home server's endpoints, or, with a location chosen, the
        location's API and the home server's authorization and token endpoints."""
        home = await super().discover(base_url)
        location = record.location if record is not None else ""
        if not location or normalize_base_url(location) == normalize_base_url(base_url):
            return home
        there = await super().discover(location)
        return dataclasses.replace(
            there,
            authorization_endpoint=home.authorization_endpoint,
            token_endpoint=home.token_endpoint,
        )


class SecureInternetLogin:
    """The home server's OAuth login (`inner`), which skips the chooser of
    identity providers when the server list gives the home server a template."""

    def __init__(self, inner: Login, template_for: TemplateSource | None = None) -> None:
        self._inner = inner
        self._template_for = template_for

    def authorized(self, record: ServerRecord) -> bool:
        """Whether the home server's tokens are kept."""
        return self._inner.authorized(record)

    def forget(self, record: ServerRecord) -> None:
        """Drop the home server's tokens."""
        self._inner.forget(record)

    async def begin(
        self, record: ServerRecord, endpoints: Endpoints, caller: int
    ) -> PendingAuthorization:
        """The home server's authorization, through its login shortcut if it has one."""
        pending = await self._inner.begin(record, endpoints, caller)
        if record.org_id and self._template_for is not None:
            template = await self._template_for(record.url)
            if template:
                pending.url = authentication_url(template, pending.url, record.org_id)
        return pending

    async def sign_in(
        self, record: ServerRecord, endpoints: Endpoints, fields: Mapping[str, str]
    ) -> dict[str, Any]:
        """As the home server's login: it takes no typed credentials."""
        return await self._inner.sign_in(record, endpoints, fields)

    async def call(
        self,
        record: ServerRecord,
        endpoints: Endpoints,
        api_call: Callable[[str], Awaitable[T]],
    ) -> T:
        """An API call at the location with the home server's token (refreshed there)."""
        return await self._inner.call(record, endpoints, api_call)
