"""Server families behind one seam: which kinds vpnd knows, and which one a server speaks."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from vpnd.errors import ServerError
from vpnd.providers.base import Family, NotThisFamily

if TYPE_CHECKING:
    from vpnd.auth.oauth_code import OAuthCodeLogin
    from vpnd.config import Settings
    from vpnd.http import HttpClient
    from vpnd.protocols.eduvpn import Endpoints
    from vpnd.providers.secure_internet import TemplateSource
    from vpnd.store.store import SecretStore


class LazyFamily:
    """A family made at its first use: its provider and login modules are loaded
    then, so that a start loads only the kinds of the servers it has."""

    def __init__(self, kind: str, make: Callable[[], Family], *, detected: bool = True) -> None:
        self.kind = kind
        self.detected = detected
        self._make = make
        self._family: Family | None = None

    def get(self) -> Family:
        """The family, made now if it was not yet."""
        if self._family is None:
            family = self._make()
            if family.kind != self.kind or family.detected != self.detected:
                raise RuntimeError(f"the family made for {self.kind} is {family.kind}")
            self._family = family
        return self._family


def _made(entry: Family | LazyFamily) -> Family:
    return entry.get() if isinstance(entry, LazyFamily) else entry


class Families:
    """The kinds of server this daemon speaks, in the order they are tried on a new server."""

    def __init__(self, families: Sequence[Family | LazyFamily]) -> None:
        self._order = tuple(families)
        self._by_kind = {family.kind: family for family in families}

    @property
    def kinds(self) -> list[str]:
        """Every kind this daemon speaks."""
        return [family.kind for family in self._order]

    def of(self, kind: str) -> Family:
        """The family of a stored server's kind."""
        try:
            return _made(self._by_kind[kind])
        except KeyError:
            raise ServerError(
                f"this server is of a kind this version of vpnd does not speak ({kind});"
                " a newer vpnd may"
            ) from None

    async def detect(self, base_url: str) -> tuple[Family, Endpoints]:
        """The first family whose API the server speaks, with its endpoints.

        The newest API is tried first. When the server speaks none, the error
        is the first family's: it names the document a current server has."""
        first: NotThisFamily | None = None
        for family in (_made(f) for f in self._order if f.detected):
            try:
                return family, await family.provider.discover(base_url)
            except NotThisFamily as exc:
                first = first or exc
        if first is None:
            raise ServerError("vpnd has no server family to try")
        raise first


def default_families(
    http: HttpClient,
    secrets: SecretStore,
    settings: Settings,
    template_for: TemplateSource | None = None,
) -> Families:
    """Every family this daemon speaks, newest API first. `template_for` gives
    a secure-internet home server's login shortcut (from the server list).

    Each is made at its first use (see `LazyFamily`)."""
    timeout = settings.authorization_timeout

    @functools.cache
    def code_login() -> OAuthCodeLogin:
        from vpnd.auth.oauth_code import OAuthCodeLogin

        return OAuthCodeLogin(http, secrets, settings.client_id, timeout)

    def eduvpn_v3() -> Family:
        from vpnd.providers.eduvpn_v3 import EduVPNv3Provider

        return Family(EduVPNv3Provider(http), code_login())

    def eduvpn_v2() -> Family:
        from vpnd.providers.eduvpn_v2 import EduVPNv2Provider

        return Family(EduVPNv2Provider(http), code_login())

    def eduvpn_v1() -> Family:
        from vpnd.auth.implicit import ImplicitLogin
        from vpnd.providers.eduvpn_v1 import EduVPNv1Provider

        return Family(EduVPNv1Provider(http), ImplicitLogin(secrets, settings.client_id, timeout))

    def access_server() -> Family:
        from vpnd.auth.access_server import AccessServerLogin
        from vpnd.providers.access_server import AccessServerProvider

        return Family(AccessServerProvider(), AccessServerLogin(http, secrets), detected=False)

    def secure_internet() -> Family:
        from vpnd.providers.secure_internet import SecureInternetLogin, SecureInternetProvider

        return Family(
            SecureInternetProvider(http),
            SecureInternetLogin(code_login(), template_for),
            detected=False,
        )

    return Families(
        [
            LazyFamily("eduvpn-v3", eduvpn_v3),
            LazyFamily("eduvpn-v2", eduvpn_v2),
            LazyFamily("eduvpn-v1", eduvpn_v1),
            LazyFamily("access-server", access_server, detected=False),
            LazyFamily("secure-internet", secure_internet, detected=False),
        ]
    )
