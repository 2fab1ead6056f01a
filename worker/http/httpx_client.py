"""The httpx transport (`http_client = "httpx"`; httpx comes with the `test` extra): a pooled httpx client.

httpx reads the environment's proxies itself (`trust_env`) and decodes gzip; this module gives it the
TLS context of worker/http/network.py and reads the body within `max_response_bytes`.
"""

from __future__ import annotations

import httpx

from worker.config import MAX_RESPONSE_BYTES
from worker.http.network import check_ca_bundle, ssl_context
from worker.http.transport import HttpResponse, timed_out, too_large, unreachable


class HttpxTransport:
    """A pooled httpx client."""

    def __init__(
        self,
        timeout_s: float,
        max_connections: int,
        *,
        ca_bundle: str = "",
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        check_ca_bundle(ca_bundle)
        self._timeout_s = timeout_s
        self._max_body = max_response_bytes
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            verify=ssl_context(ca_bundle),
            trust_env=True,
        )

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> HttpResponse:
        return await self._request("POST", url, headers, body)

    async def get(self, url: str, headers: dict[str, str]) -> HttpResponse:
        return await self._request("GET", url, headers, None)

    async def _request(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> HttpResponse:
        try:
            async with self._client.stream(method, url, content=body, headers=headers) as response:
                length = response.headers.get("content-length")  # of the encoded body
                if length is not None and length.isdigit() and int(length) > self._max_body:
                    raise too_large(url, f"the answer's Content-Length is {length} bytes, more than {self._max_body}")
                data = bytearray()
                async for chunk in response.aiter_bytes():  # decoded
                    data += chunk
                    if len(data) > self._max_body:
                        raise too_large(url, f"the answer is more than {self._max_body} bytes")
                return HttpResponse(status=response.status_code, headers=response.headers, body=bytes(data))
        except httpx.TimeoutException:
            raise timed_out(url, self._timeout_s) from None
        except httpx.HTTPError as exc:
            raise unreachable(url, exc) from None

    async def close(self) -> None:
        await self._client.aclose()
