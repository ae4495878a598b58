"""What the eduVPN providers make of a server's answers before any API call."""

from __future__ import annotations

import pytest

from vpnd.http import Response
from vpnd.providers.base import NotThisFamily
from vpnd.providers.eduvpn_v3 import EduVPNv3Provider


class WellKnownServer:
    """A 2.x server's answer to the v3 discovery document: only api#2 in it."""

    async def get(self, url: str, *, headers: dict[str, str], follow_redirects: bool) -> Response:
        body = b'{"api": {"http://eduvpn.org/api#2": {"api_base_uri": "https://a/"}}}'
        return Response(200, {"content-type": "application/json"}, body, url)


async def test_a_discovery_document_without_v3_lets_the_older_generations_try() -> None:
    # It said "vpnd does not support API v2 yet" and ended the detection there.
    provider = EduVPNv3Provider(WellKnownServer())  # type: ignore[arg-type]
    with pytest.raises(NotThisFamily, match="API v2 only"):
        await provider.discover("https://old.example.org/")
