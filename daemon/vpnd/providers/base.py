"""The interface every server family implements for the manager.

A family (eduVPN API v3, v2, v1, later Access Server) is a `Provider` for
its API and a `Login` for how a server of that kind is authorized. The
manager never asks which family a server is: it asks the provider for
profiles and a connectable configuration, and the login for a credential.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from vpnd.errors import AuthorizationRequired, ServerError
from vpnd.store.store import ServerRecord

if TYPE_CHECKING:
    from vpnd.protocols.eduvpn import Endpoints, Profile
    from vpnd.protocols.eduvpn_v2 import Message
    from vpnd.protocols.ovpnconfig import SanitizedConfig

T = TypeVar("T")


async def all_of(*calls: Awaitable[Any]) -> list[Any]:
    """Await independent calls together; raise the first failure once all have ended.

    Every call runs to its end, so no failure goes unretrieved. A refused
    credential wins over other failures: the login then renews it and the
    provider's caller tries the whole step again."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    for failure in failures:
        if isinstance(failure, AuthorizationRequired):
            raise failure
    if failures:
        raise failures[0]
    return results


class NotThisFamily(ServerError):
    """The server does not speak this family's API (its discovery document is absent)."""


@dataclass(frozen=True)
class Connectable:
    """What a tunnel starts from: the allow-listed configuration without key material,
    and the private key (PEM) apart, which the tunnel uses to sign and never hands on.

    `expires_at` is when the server ends the session (Unix time, 0 when not known).
    """

    protocol: str  # "openvpn"; WireGuard comes with its own tunnel kind
    config: SanitizedConfig
    private_key: bytes | None
    expires_at: float = 0.0
    # The user name and password openvpn asks for (`auth-user-pass`), when kept.
    user_pass: tuple[str, str] | None = field(default=None, repr=False)


class Vault(Protocol):
    """One server's own secret records (key pairs and the like), sealed by the store."""

    def get(self, name: str) -> dict[str, Any] | None:
        """One named record, or None."""
        ...

    def set(self, name: str, value: dict[str, Any]) -> None:
        """Store or replace one named record."""
        ...

    def delete(self, name: str) -> None:
        """Forget one named record."""
        ...


@dataclass(frozen=True)
class Session:
    """What a provider needs for calls on one server's behalf."""

    endpoints: Endpoints
    access_token: str
    vault: Vault
    label: str  # the server's host name, for messages
    url: str = ""  # the server's base URL, where its web portal is


class Provider(Protocol):
    """One server family's API."""

    kind: str

    async def discover(self, base_url: str, record: ServerRecord | None = None) -> Endpoints:
        """Where the server's API and login endpoints are (fetched fresh every time).

        `record` is the added server's (None while it is being added), for a
        family whose API and login live at different servers (secure
        internet: the login at the home server, the API at a location).
        Raises NotThisFamily when the server does not speak this family's API."""
        ...

    async def profiles(self, session: Session) -> list[Profile]:
        """The profiles the user may connect to."""
        ...

    async def obtain(self, session: Session, profile_id: str, *, prefer_tcp: bool) -> Connectable:
        """A configuration for a profile that a tunnel can start from."""
        ...

    async def messages(self, session: Session, languages: Sequence[str]) -> list[Message]:
        """The server's notices for everyone and for this user, in `languages` where it can."""
        ...

    async def release(self, session: Session) -> None:
        """Release what the server set aside for the session (best effort)."""
        ...


class PendingAuthorization(Protocol):
    """A login waiting for the user's browser."""

    url: str

    async def complete(self) -> None:
        """Wait for the browser, obtain the credential and keep it; raises VpndError."""
        ...

    def deliver(self, address: str) -> None:
        """The address the browser was finally sent to, pasted by the user
        (headless login); checked as the browser's own callback would be."""
        ...

    def close(self) -> None:
        """Stop waiting (idempotent)."""
        ...


class Login(Protocol):
    """How servers of a family are authorized and how a usable credential is had."""

    def authorized(self, record: ServerRecord) -> bool:
        """Whether a credential is kept for the server (it is not checked with the server)."""
        ...

    def forget(self, record: ServerRecord) -> None:
        """Drop the server's credential: using the server needs a new login."""
        ...

    async def begin(
        self, record: ServerRecord, endpoints: Endpoints, caller: int
    ) -> PendingAuthorization:
        """Start a login on behalf of `caller`; the URL goes to the user's browser."""
        ...

    async def sign_in(
        self, record: ServerRecord, endpoints: Endpoints, fields: Mapping[str, str]
    ) -> dict[str, Any]:
        """Log in with what the user typed (a user name and password, an answer).

        Returns {} when done, or what the server asks next. InvalidArgument for
        a family that logs in through the browser instead."""
        ...

    async def call(
        self,
        record: ServerRecord,
        endpoints: Endpoints,
        api_call: Callable[[str], Awaitable[T]],
    ) -> T:
        """Run `api_call(credential)`, renewing the credential once if the server refuses it.

        Raises AuthorizationRequired when the user has to log in again."""
        ...


@dataclass(frozen=True)
class Family:
    """A server kind: its provider and its login.

    `detected`: tried on a server added without a kind (the eduVPN
    generations, which a discovery document announces); others are added by
    name."""

    provider: Provider
    login: Login
    detected: bool = True

    @property
    def kind(self) -> str:
        """The kind stored with each server record (`eduvpn-v3`, …)."""
        return self.provider.kind
