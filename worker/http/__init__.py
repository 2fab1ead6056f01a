"""HTTP for the provider adapters: one pooled client per provider, behind a small contract.

- transport.py: the contract (HttpResponse, the Transport protocol, the errors a transport raises);
- wire.py: HTTP/1.1 parsing, shared by the lean client and the simulator's server;
- network.py: the environment's proxies and the TLS context (system CAs, SSL_CERT_FILE, ca_bundle);
- lean.py (the default), aiohttp_client.py, httpx_client.py: the transports, chosen per provider by
  `http_client`. Each honours the environment's proxies, the provider's `ca_bundle`, takes gzip and
  refuses an answer over `max_response_bytes`. The lean client took the least CPU a call (`make
  bench`, section http_client), which is the worker's throughput at thousands of calls in flight.
"""

from __future__ import annotations

from worker.config import ProviderConfig
from worker.http.lean import LeanTransport
from worker.http.transport import HttpResponse, Transport

__all__ = ["HttpResponse", "Transport", "make_transport"]


def make_transport(provider: ProviderConfig) -> Transport:
    """The transport for a provider's `http_client`, `timeout_s`, `max_connections`, `ca_bundle` and
    `max_response_bytes`; ConfigError when its ca_bundle or the environment's proxies are wrong."""
    timeout_s, max_connections = provider.timeout_s, provider.max_connections
    ca_bundle, max_response_bytes = provider.ca_bundle, provider.max_response_bytes
    # The other clients are imported when chosen: httpx comes with the test extra only, and importing
    # aiohttp takes a third of a second of a start that does not use it.
    if provider.http_client == "httpx":
        from worker.http.httpx_client import HttpxTransport

        return HttpxTransport(timeout_s, max_connections, ca_bundle=ca_bundle, max_response_bytes=max_response_bytes)
    if provider.http_client == "aiohttp":
        from worker.http.aiohttp_client import AiohttpTransport

        return AiohttpTransport(timeout_s, max_connections, ca_bundle=ca_bundle, max_response_bytes=max_response_bytes)
    return LeanTransport(timeout_s, max_connections, ca_bundle=ca_bundle, max_response_bytes=max_response_bytes)
