"""Server families behind one seam: which kinds vpnd knows, and which one a server speaks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from vpnd.errors import ServerError
from vpnd.protocols.eduvpn import Endpoints
from vpnd.providers.base import Family, NotThisFamily

if TYPE_CHECKING:
    from vpnd.config import Settings
    from vpnd.http import HttpClient
    from vpnd.providers.secure_internet import TemplateSource
    from vpnd.store.store import SecretStore


class Families:
    """The kinds of server this daemon speaks, in the order they are tried on a new server."""

    def __init__(self, families: Sequence[Family]) -> None:
        self._order = tuple(families)
        self._by_kind = {family.kind: family for family in families}

    @property
    def kinds(self) -> list[str]:
        """Every kind this daemon speaks."""
        return [family.kind for family in self._order]

    def of(self, kind: str) -> Family:
        """The family of a stored server's kind."""
        try:
            return self._by_kind[kind]
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
        for family in (f for f in self._order if f.detected):
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
    a secure-internet home server's login shortcut (from the server list)."""
    from vpnd.auth.access_server import AccessServerLogin
    from vpnd.auth.implicit import ImplicitLogin
    from vpnd.auth.oauth_code import OAuthCodeLogin
    from vpnd.providers.access_server import AccessServerProvider
    from vpnd.providers.eduvpn_v1 import EduVPNv1Provider
    from vpnd.providers.eduvpn_v2 import EduVPNv2Provider
    from vpnd.providers.eduvpn_v3 import EduVPNv3Provider
    from vpnd.providers.secure_internet import SecureInternetLogin, SecureInternetProvider

    timeout = settings.authorization_timeout
    code_login = OAuthCodeLogin(http, secrets, settings.client_id, timeout)
    return Families(
        [
            Family(EduVPNv3Provider(http), code_login),
            Family(EduVPNv2Provider(http), code_login),
            Family(EduVPNv1Provider(http), ImplicitLogin(secrets, settings.client_id, timeout)),
            Family(AccessServerProvider(), AccessServerLogin(http, secrets), detected=False),
            Family(
                SecureInternetProvider(http),
                SecureInternetLogin(code_login, template_for),
                detected=False,
            ),
        ]
    )
