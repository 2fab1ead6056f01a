"""The aiohttp transport (`http_client = "aiohttp"`): a pooled aiohttp session.

aiohttp decodes gzip (and deflate) itself; this module gives it the environment's proxies as
worker/http/network.py reads them, once (aiohttp's own `trust_env` reads the environment and ~/.netrc
again for every request, each in a thread hop), https:// proxies included, the TLS context of
network.py, and reads the body within `max_response_bytes`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp

from worker.config import MAX_RESPONSE_BYTES
from worker.http.network import Proxies, Proxy, check_ca_bundle, ssl_context
from worker.http.transport import HttpResponse, timed_out, too_large, unreachable


class AiohttpTransport:
    """A pooled aiohttp session, created on first use (it needs the running loop)."""

    def __init__(
        self,
        timeout_s: float,
        max_connections: int,
        *,
        ca_bundle: str = "",
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        check_ca_bundle(ca_bundle)
        self._proxies = Proxies.from_env()
        self._proxy_of: dict[str, Proxy | None] = {}  # by URL
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._ca_bundle = ca_bundle
        self._max_body = max_response_bytes
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=self._max_connections,
            keepalive_timeout=30,
            ttl_dns_cache=300,
            ssl=ssl_context(self._ca_bundle),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            skip_auto_headers=("User-Agent",),
        )
        return self._session

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> HttpResponse:
        return await self._request("POST", url, headers, body)

    async def get(self, url: str, headers: dict[str, str]) -> HttpResponse:
        return await self._request("GET", url, headers, None)

    async def _request(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> HttpResponse:
        session = self._session or self._open()
        try:
            proxy = self._proxy_of[url]
        except KeyError:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            proxy = self._proxy_of[url] = self._proxies.for_url(parts.scheme == "https", parts.hostname or "", port)
        proxy_url = proxy_headers = None
        if proxy is not None:
            proxy_url = proxy.url
            proxy_headers = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else None
        try:
            async with session.request(
                method, url, data=body, headers=headers, proxy=proxy_url, proxy_headers=proxy_headers
            ) as response:
                length = response.content_length  # of the encoded body
                if length is not None and length > self._max_body:
                    raise too_large(url, f"the answer's Content-Length is {length} bytes, more than {self._max_body}")
                data = bytearray()
                while chunk := await response.content.readany():  # decoded
                    data += chunk
                    if len(data) > self._max_body:
                        raise too_large(url, f"the answer is more than {self._max_body} bytes")
                return HttpResponse(status=response.status, headers=response.headers, body=bytes(data))
        except TimeoutError:
            raise timed_out(url, self._timeout_s) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise unreachable(url, exc) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
