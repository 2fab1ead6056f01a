"""A lean HTTP/1.1 client on asyncio's protocols, the default transport: pooled keep-alive connections,
one request at a time each.

The worker's calls are all alike: a JSON POST to a few fixed URLs, a JSON answer with a length (or
chunked). aiohttp's general machinery (multidicts, signals, cookies, per-request timers and tasks)
costs several times this client's CPU a call (`make bench`, section http_client), and at thousands
of calls in flight on two cores the CPU a call is what the worker's throughput is made of. This
client keeps what the calls need:

- a pool capped at `max_connections` with a queue beyond it, and keep-alive reuse (a reused
  connection the server closed meanwhile is retried once on a new one);
- TLS for https, verified against the system's CAs (`SSL_CERT_FILE`, `SSL_CERT_DIR`) and the
  provider's `ca_bundle` (worker/http/network.py);
- the environment's proxies (`https_proxy`, `http_proxy`, `no_proxy`), reached over http:// (the
  aiohttp transport reaches https:// ones too): https through a CONNECT tunnel, http in absolute
  form to the proxy, basic Proxy-Authorization from the proxy URL;
- Content-Length, chunked and close-delimited bodies, `Accept-Encoding: gzip` and gzip decoding,
  and a cap on the body (`max_response_bytes`) checked as the bytes arrive and again as they decode,
  so an oversized or gzip-bomb answer is refused without being held;
- one timeout over the whole call (worker/timers.py: one timer for every call, up to 20 ms
  late), and the errors of the Transport contract (worker/http/transport.py).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from functools import partial
from typing import cast
from urllib.parse import urlsplit

from worker.config import MAX_RESPONSE_BYTES, ConfigError
from worker.http.network import Proxies, check_ca_bundle, ssl_context
from worker.http.transport import HttpResponse, timed_out, too_large, unreachable
from worker.http.wire import BodyTooLarge, ChunkedBody, gunzip, keeps_alive, parse_headers, take_head
from worker.timers import Deadlines


class _Target:
    """A URL split once: where to connect (directly or through a proxy) and the request's head."""

    __slots__ = ("connect", "head", "host", "key", "port", "proxy", "tls")

    def __init__(self, url: str, proxies: Proxies, method: str = "POST") -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.proxy = proxies.for_url(self.tls, self.host, self.port)
        self.key = (self.tls, self.host, self.port, self.proxy)
        authority = parts.netloc.rpartition("@")[2]  # host[:port] as written, an IPv6 address in brackets
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request_line = f"{method} {path} HTTP/1.1\r\n"
        proxy_authorization = ""
        self.connect = b""  # the CONNECT request that opens a tunnel through the proxy (https)
        if self.proxy is not None:
            if self.proxy.authorization:
                proxy_authorization = f"Proxy-Authorization: {self.proxy.authorization}\r\n"
            if self.tls:
                endpoint = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
                self.connect = f"CONNECT {endpoint} HTTP/1.1\r\nHost: {endpoint}\r\n{proxy_authorization}\r\n".encode(
                    "latin-1"
                )
                proxy_authorization = ""  # the tunnel's requests go to the server, not the proxy
            else:
                request_line = f"{method} {parts.scheme}://{authority}{path} HTTP/1.1\r\n"  # absolute form
        self.head = f"{request_line}Host: {authority}\r\n{proxy_authorization}Accept-Encoding: gzip\r\n".encode(
            "latin-1"
        )


class _Connection(asyncio.Protocol):
    """One keep-alive connection: a request written, its response parsed as the bytes arrive."""

    def __init__(self, max_body: int) -> None:
        # Made by the running loop (create_connection); kept, as asyncio.get_running_loop() costs a
        # getpid() system call on Python 3.11, and a connection serves many requests.
        self._loop = asyncio.get_running_loop()
        self._max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self.used = False  # served a response before: the server may have closed it while it sat idle
        self.received = False  # bytes of the current response came
        self._buffer = bytearray()
        self._waiter: asyncio.Future[HttpResponse] | None = None
        self._tunnel = False  # the request is a CONNECT: its answer is a head alone
        # status, headers, Content-Length (None: chunked, or until the connection closes)
        self._head: tuple[int, dict[str, str], int | None] | None = None
        self._chunked: ChunkedBody | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # create_connection's transports are streams

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self._head is not None and self._head[2] is None and self._chunked is None:
                try:
                    self._finish(bytes(self._buffer))  # a body that ends with the connection
                except (ValueError, BodyTooLarge) as error:
                    self._fail(error)
            else:
                waiter.set_exception(
                    ConnectionResetError(f"the server closed the connection{f': {exc}' if exc else ''}")
                )

    def eof_received(self) -> bool:
        return False  # close our side too: connection_lost follows

    def request(self, data: bytes, tunnel: bool = False) -> asyncio.Future[HttpResponse]:
        """Write a request; the future is its response (with an empty body, for a CONNECT)."""
        assert self.transport is not None
        self._waiter = self._loop.create_future()
        self.received = False
        self._tunnel = tunnel
        self.transport.write(data)
        return self._waiter

    def abort(self) -> None:
        self.closed = True
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.abort()  # bytes nobody asked for: the connection cannot be trusted
            return
        self.received = True
        self._buffer += data
        try:
            self._parse()
        except (ValueError, BodyTooLarge) as exc:
            self._fail(exc)

    def _fail(self, exc: ValueError | BodyTooLarge) -> None:
        self.abort()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(
                exc if isinstance(exc, BodyTooLarge) else ConnectionError(f"malformed HTTP response: {exc}")
            )

    def _parse(self) -> None:
        buffer = self._buffer
        while self._head is None:
            lines = take_head(buffer, "response")
            if lines is None:
                return
            version, _, rest = lines[0].partition(" ")
            status = int(rest[:3])
            if 100 <= status < 200:
                continue  # an interim response (100 Continue): the real one follows
            headers = parse_headers(lines[1:])
            if self._tunnel:  # TLS through the tunnel follows, or the connection is dropped
                assert self._waiter is not None
                self._tunnel = False
                self._waiter.set_result(HttpResponse(status=status, headers=headers, body=b""))
                return
            if not keeps_alive(version, headers):
                self.reusable = False
            length = None
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._chunked = ChunkedBody()
            elif "content-length" in headers:
                length = int(headers["content-length"])
                if length < 0:
                    raise ValueError("a negative Content-Length")
                if length > self._max_body:
                    raise BodyTooLarge(f"the answer's Content-Length is {length} bytes, more than {self._max_body}")
            else:
                self.reusable = False  # the body ends with the connection
            self._head = (status, headers, length)
        length = self._head[2]
        chunked = self._chunked
        if chunked is not None:
            del buffer[: chunked.feed(buffer)]
            if len(chunked.body) > self._max_body:
                raise BodyTooLarge(f"the answer is more than {self._max_body} bytes")
            if chunked.done:
                self._chunked = None
                self._finish(bytes(chunked.body))
        elif length is not None:
            if len(buffer) >= length:
                body = bytes(buffer[:length])
                del buffer[:length]
                self._finish(body)
        elif len(buffer) > self._max_body:
            raise BodyTooLarge(f"the answer is more than {self._max_body} bytes")

    def _finish(self, body: bytes) -> None:
        """The response is whole: decode its body and hand it over."""
        assert self._head is not None and self._waiter is not None
        status, headers, _ = self._head
        self._head = None
        self.used = True
        if self._buffer:
            self.reusable = False  # more than the response: out of step
        encoding = headers.get("content-encoding")
        if encoding is not None:
            encoding = encoding.strip().lower()
            if encoding in ("gzip", "x-gzip"):
                body = gunzip(body, self._max_body)
            elif encoding not in ("", "identity"):
                raise ValueError(f"the answer is in Content-Encoding {encoding!r}, which was not asked for")
        self._waiter.set_result(HttpResponse(status=status, headers=headers, body=body))


class LeanTransport:
    """The pooled client; see the module's docstring. Same contract as the aiohttp transport.

    The environment's proxies are read once, here; `ca_bundle`: CAs trusted besides the system's."""

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
        for proxy in (self._proxies.http, self._proxies.https):
            if proxy is not None and proxy.scheme != "http":
                raise ConfigError(
                    f"the proxy {proxy.url}: the lean HTTP client reaches proxies over http:// only"
                    ' (http_client = "aiohttp" reaches https:// ones)'
                )
        self._timeout_s = timeout_s
        self._timeouts = Deadlines(timeout_s)  # one timer for every call's timeout
        self._max = max_connections
        self._new_connection = partial(_Connection, max_response_bytes)
        self._ca_bundle = ca_bundle
        self._open = 0
        self._idle: dict[tuple, deque[_Connection]] = {}
        self._queue: deque[asyncio.Future[None]] = deque()  # calls waiting for a connection
        self._targets: dict[str, _Target] = {}  # POST, by URL
        self._get_targets: dict[str, _Target] = {}
        self._headers: tuple[dict[str, str], bytes] | None = None
        self._ssl: ssl.SSLContext | None = None  # made at the first https connection (it takes tens of ms)
        self._closed = False

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> HttpResponse:
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = _Target(url, self._proxies)
        data = b"".join((target.head, self._header_lines(headers), b"Content-Length: %d\r\n\r\n" % len(body), body))
        return await self._call(url, target, data)

    async def get(self, url: str, headers: dict[str, str]) -> HttpResponse:
        target = self._get_targets.get(url)
        if target is None:
            target = self._get_targets[url] = _Target(url, self._proxies, "GET")
        return await self._call(url, target, b"".join((target.head, self._header_lines(headers), b"\r\n")))

    def _header_lines(self, headers: dict[str, str]) -> bytes:
        """The headers as request lines, encoded once per dict (an adapter passes the same dict every call)."""
        cached = self._headers
        if cached is None or cached[0] is not headers:
            cached = self._headers = (headers, "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1"))
        return cached[1]

    async def _call(self, url: str, target: _Target, data: bytes) -> HttpResponse:
        """Send a whole request (`data`) to `target` on a pooled connection; its response."""
        timeout = self._timeouts.start()
        try:
            for retry in (False, True):
                connection = await self._connection(target)
                try:
                    response = await connection.request(data)
                except (ConnectionError, OSError) as exc:
                    connection.abort()
                    self._release(target, connection)
                    if connection.used and not connection.received and not retry:
                        continue  # the server closed it while it sat idle: once more on a new one
                    raise unreachable(url, exc) from None
                except BodyTooLarge as exc:
                    self._release(target, connection)  # aborted already
                    raise too_large(url, str(exc)) from None
                except BaseException:
                    connection.abort()  # cut off mid-call: the connection is out of step
                    self._release(target, connection)
                    raise
                self._release(target, connection)
                return response
            raise AssertionError("unreachable")
        except asyncio.CancelledError:
            if timeout.timed_out():
                raise timed_out(url, self._timeout_s) from None
            raise
        except (ConnectionError, OSError) as exc:  # connecting (or the tunnel, or TLS) failed
            raise unreachable(url, exc) from None
        finally:
            self._timeouts.end(timeout)

    async def _connection(self, target: _Target) -> _Connection:
        """An idle connection to the target, else a new one within the cap, else wait for one."""
        while True:
            idle = self._idle.get(target.key)
            while idle:
                connection = idle.pop()
                if not connection.closed:
                    return connection
                self._open -= 1
            if self._open >= self._max:
                self._close_idle()  # a slot held by an idle connection to another host
            if self._open < self._max:
                self._open += 1
                try:
                    return await self._connect(target)
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
            waiter = asyncio.get_running_loop().create_future()
            self._queue.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # pass the turn on
                raise

    def _close_idle(self) -> None:
        for idle in self._idle.values():
            if idle:
                idle.popleft().abort()
                self._open -= 1
                return

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl_context(self._ca_bundle)
        return self._ssl

    async def _connect(self, target: _Target) -> _Connection:
        if self._closed:
            raise ConnectionError("the transport is closed")
        loop = asyncio.get_running_loop()
        proxy = target.proxy
        if proxy is None:
            tls = self._tls() if target.tls else None
            _, connection = await loop.create_connection(
                self._new_connection, target.host, target.port, ssl=tls, server_hostname=target.host if tls else None
            )
            return connection
        _, connection = await loop.create_connection(self._new_connection, proxy.host, proxy.port)
        if target.tls:
            try:
                answer = await connection.request(target.connect, tunnel=True)
                if not 200 <= answer.status < 300:
                    raise ConnectionError(
                        f"the proxy {proxy.url} answered CONNECT {target.host}:{target.port} with {answer.status}"
                    )
                assert connection.transport is not None
                tunnelled = await loop.start_tls(
                    connection.transport, connection, self._tls(), server_hostname=target.host
                )
                if tunnelled is None:
                    raise ConnectionError(f"no TLS through the proxy {proxy.url}")
                connection.transport = tunnelled
            except BaseException:
                connection.abort()
                raise
        return connection

    def _release(self, target: _Target, connection: _Connection) -> None:
        if connection.closed or not connection.reusable or self._closed:
            if not connection.closed:
                connection.abort()
            self._open -= 1
        else:
            self._idle.setdefault(target.key, deque()).append(connection)
        self._wake()

    def _wake(self) -> None:
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.abort()
        self._idle.clear()
