"""One pooled HTTP client per provider, behind a small interface so the client library can be chosen.

`lean` (lean_http.py, on asyncio's protocols) is the default: against the simulator it took a
fraction of aiohttp's CPU a call, and httpx took more than either (`make bench`, section
`http_client`); aiohttp and httpx stay selectable per provider (`http_client`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from msgspec import Struct

from worker.errors import ProviderError


class HttpResponse(Struct, frozen=True):
    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes


class Transport(Protocol):
    """POSTs JSON bodies; raises ProviderError("timeout") on a timeout and ("server") when unreachable."""

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> HttpResponse: ...

    async def close(self) -> None: ...


class AiohttpTransport:
    """A pooled aiohttp session, created on first use (it needs the running loop)."""

    def __init__(self, timeout_s: float, max_connections: int) -> None:
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._session = None

    def _open(self):
        import aiohttp

        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=self._max_connections, keepalive_timeout=30, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout_s), skip_auto_headers=("User-Agent",)
        )
        return self._session

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> HttpResponse:
        import aiohttp

        session = self._session or self._open()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                return HttpResponse(response.status, response.headers, await response.read())
        except TimeoutError:
            raise ProviderError("timeout", f"no answer from {url} within {self._timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise ProviderError("server", f"{url}: {type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpxTransport:
    """A pooled httpx client."""

    def __init__(self, timeout_s: float, max_connections: int) -> None:
        import httpx

        self._timeout_s = timeout_s
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> HttpResponse:
        import httpx

        try:
            response = await self._client.post(url, content=body, headers=headers)
        except httpx.TimeoutException:
            raise ProviderError("timeout", f"no answer from {url} within {self._timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise ProviderError("server", f"{url}: {type(exc).__name__}: {exc}") from None
        return HttpResponse(response.status_code, response.headers, response.content)

    async def close(self) -> None:
        await self._client.aclose()


def make_transport(client: str, timeout_s: float, max_connections: int) -> Transport:
    """The transport for a provider's `http_client` setting."""
    if client == "httpx":
        return HttpxTransport(timeout_s, max_connections)
    if client == "lean":
        from worker.http.lean import LeanTransport

        return LeanTransport(timeout_s, max_connections)
    return AiohttpTransport(timeout_s, max_connections)
