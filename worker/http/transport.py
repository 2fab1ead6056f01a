"""The transport contract: how a provider adapter calls its API (POST, and GET for batches) and what comes back.

Every transport (worker/http/lean.py, the default; aiohttp_client.py; httpx_client.py) pools its
connections per provider, honours the environment's proxies and the CAs it is told to trust
(worker/http/network.py), takes answers gzip-encoded, and refuses an answer larger than
`max_response_bytes`, decoded. Its failures are ProviderErrors built here, so they read alike.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping
from typing import Protocol

from msgspec import Struct

from worker.errors import ProviderError


class HttpResponse(Struct, frozen=True, kw_only=True):
    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes  # decoded (no Content-Encoding left)


class Transport(Protocol):
    """POSTs bodies (JSON, or a batch API's file upload) and GETs (a batch's state and results); raises
    ProviderError("timeout") on a timeout and ("server") when unreachable, when the answer is malformed or
    larger than its limit."""

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> HttpResponse: ...

    async def get(self, url: str, headers: dict[str, str]) -> HttpResponse: ...

    async def close(self) -> None: ...


def timed_out(url: str, seconds: float) -> ProviderError:
    """The error of a call that got no whole answer within its timeout."""
    return ProviderError("timeout", f"no answer from {url} within {seconds:g} s")


def unreachable(url: str, exc: BaseException) -> ProviderError:
    """The error of a call that could not be made or answered (refused, reset, TLS, proxy, malformed)."""
    message = f"{url}: {type(exc).__name__}: {exc}"
    if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in message:  # or wrapped
        message += " (trust the server's CA with the provider's ca_bundle, or SSL_CERT_FILE / SSL_CERT_DIR)"
    return ProviderError("server", message, connect_failed=_connect_failed(exc))


# The transports' own names for a connection that could not be made (aiohttp, httpx).
_CONNECT_ERRORS = frozenset({"ClientConnectorError", "ClientConnectorDNSError", "ConnectError"})


def _connect_failed(exc: BaseException) -> bool:
    """Whether `exc` says no connection could be made: refused, or the host name did not resolve."""
    if isinstance(exc, ssl.SSLError):
        return False
    return isinstance(exc, (ConnectionRefusedError, socket.gaierror)) or type(exc).__name__ in _CONNECT_ERRORS


def too_large(url: str, detail: str) -> ProviderError:
    """The error of an answer over the provider's `max_response_bytes`."""
    return ProviderError("server", f"{url}: {detail} (the provider's max_response_bytes)")
