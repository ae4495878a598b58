"""HTTPS to servers: bounded, deadline-limited, https-only, errors named for people.

Every exchange has one total deadline (a GET that follows redirects shares
one deadline across all of them), so a server that answers slowly, drips
bytes or never answers is cut off. A reply body is read raw, never
decompressed, and is refused past `max_body` bytes, whether or not its
Content-Length says so; vpnd asks for uncompressed replies. Header sizes
are bounded by the HTTP parser (100 KiB).

httpx is imported lazily: the daemon reaches READY without paying for it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from vpnd.errors import ServerError, ServerUnreachable

if TYPE_CHECKING:
    import httpx

MAX_BODY = 1 << 20
MAX_REDIRECTS = 5
USER_AGENT = "vpnd/0.1"


@dataclass(frozen=True)
class Response:
    """A complete, size-bounded reply."""

    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    url: str


def _host(url: str) -> str:
    return urlsplit(url).hostname or url


def _require_https(url: str) -> None:
    if urlsplit(url).scheme != "https":
        raise ServerError(f"refusing to talk to {url}: only https is allowed")


class HttpClient:
    """One connection pool for all servers; every call has a total deadline."""

    def __init__(self, *, ca_file: Path | None, timeout: float, max_body: int = MAX_BODY) -> None:
        self._ca_file = ca_file
        self._timeout = timeout
        self._max_body = max_body
        self._client: httpx.AsyncClient | None = None

    def _ssl_context(self) -> ssl.SSLContext:
        # The default context honours SSL_CERT_FILE / SSL_CERT_DIR; ca_file adds a private CA.
        context = ssl.create_default_context()
        if self._ca_file is not None:
            context.load_verify_locations(cafile=str(self._ca_file))
        return context

    def _get_client(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(
                verify=self._ssl_context(),
                timeout=httpx.Timeout(self._timeout),
                follow_redirects=False,
                # The body is read raw, so a compressed reply would be unreadable
                # (and decompressing one would lift the size bound).
                headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
                trust_env=False,
            )
        return self._client

    async def aclose(self) -> None:
        """Close pooled connections."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def get(
        self, url: str, *, headers: Mapping[str, str] | None = None, follow_redirects: bool = False
    ) -> Response:
        """GET `url`; with follow_redirects, follow up to 5 redirects, each to https only.

        The redirects share one deadline.
        """
        deadline = asyncio.get_running_loop().time() + self._timeout
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._request("GET", url, headers=headers, deadline=deadline)
            location = response.headers.get("location")
            if not follow_redirects or response.status not in (301, 302, 303, 307, 308):
                return response
            if not location:
                raise ServerError(f"{_host(url)} sent a redirect without a location")
            url = urljoin(url, location)
        raise ServerError(f"{_host(url)} redirected more than {MAX_REDIRECTS} times")

    async def post(
        self, url: str, *, data: Mapping[str, str], headers: Mapping[str, str] | None = None
    ) -> Response:
        """POST form-encoded `data` to `url`."""
        deadline = asyncio.get_running_loop().time() + self._timeout
        return await self._request("POST", url, headers=headers, data=data, deadline=deadline)

    async def _request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None,
        deadline: float,
        data: Mapping[str, str] | None = None,
    ) -> Response:
        _require_https(url)
        client = self._get_client()
        import httpx

        host = _host(url)
        try:
            async with asyncio.timeout_at(deadline):
                async with client.stream(
                    method, url, headers=dict(headers or {}), data=dict(data) if data else None
                ) as reply:
                    declared = reply.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > self._max_body:
                        raise ServerError(f"{host} sent a reply larger than {self._max_body} bytes")
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in reply.aiter_raw():
                        size += len(chunk)
                        if size > self._max_body:
                            raise ServerError(
                                f"{host} sent a reply larger than {self._max_body} bytes"
                            )
                        chunks.append(chunk)
                    return Response(
                        status=reply.status_code,
                        headers={k.lower(): v for k, v in reply.headers.items()},
                        body=b"".join(chunks),
                        url=url,
                    )
        except TimeoutError:
            raise ServerUnreachable(
                f"{host} did not answer within {self._timeout:g} seconds"
            ) from None
        except httpx.ConnectError as exc:
            if isinstance(exc.__cause__, ssl.SSLCertVerificationError) or "CERTIFICATE" in str(exc):
                raise ServerUnreachable(
                    f"the TLS certificate of {host} is not trusted"
                    " (set ca_file in /etc/vpnd/vpnd.toml for a private CA)"
                ) from None
            raise ServerUnreachable(f"cannot connect to {host}: {_reason(exc)}") from None
        except httpx.TimeoutException:
            raise ServerUnreachable(
                f"{host} did not answer within {self._timeout:g} seconds"
            ) from None
        except httpx.HTTPError as exc:
            raise ServerUnreachable(f"the exchange with {host} failed: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    # The parser's complaint may quote what the server sent: printable characters only.
    text = (str(exc) or type(exc).__name__).splitlines()[0]
    return "".join(ch for ch in text if ch.isprintable())[:200] or type(exc).__name__
