"""A lean HTTP/1.1 client on asyncio's protocols: pooled keep-alive connections, one POST at a time each.

The worker's calls are all alike: a JSON POST to a few fixed URLs, a JSON answer with a length (or
chunked). aiohttp's general machinery (multidicts, signals, cookies, per-request timers and tasks)
cost about 330 µs of CPU a call at 5,000 calls in flight (`make bench`, section http_client); this
transport does the same calls for a fraction of that. It keeps what the calls need: a pool capped at
`max_connections` with a queue beyond it, keep-alive reuse (a reused connection the server closed
meanwhile is retried once on a new one), TLS for https, Content-Length and chunked bodies, one timeout
over the whole call (worker/execution/deadlines.py: one timer for every call, up to 20 ms late), and the errors of the Transport protocol (`timeout`, `server`). It sends no
Accept-Encoding, so answers come uncompressed, and uses no proxy.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from urllib.parse import urlsplit

from worker.errors import ProviderError
from worker.execution.deadlines import Deadlines
from worker.http.transport import HttpResponse

MAX_HEAD_BYTES = 64 * 1024


def take_head(buffer: bytearray, what: str) -> list[str] | None:
    """The head of a request or response (its first line, then its header lines) taken off `buffer`,
    or None until all of it came; ValueError when it grows past MAX_HEAD_BYTES."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_HEAD_BYTES:
            raise ValueError(f"the {what} head is too large")
        return None
    lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    del buffer[: end + 4]
    return lines


def parse_headers(lines: list[str]) -> dict[str, str]:
    """Header lines as a dict of lower-cased names; a repeated header's values joined with ", "."""
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return headers


def keeps_alive(version: str, headers: dict[str, str]) -> bool:
    """Whether the connection stays open after this message (HTTP/1.1 unless `close`; 1.0 only with `keep-alive`)."""
    connection = headers.get("connection", "").lower()
    return connection != "close" and (version != "HTTP/1.0" or connection == "keep-alive")


class _Target:
    """A URL split once: where to connect and what the request line and Host header say."""

    __slots__ = ("head", "host", "key", "port", "tls")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.key = (self.tls, self.host, self.port)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default_port = self.port == (443 if self.tls else 80)
        host = self.host if default_port else f"{self.host}:{self.port}"
        self.head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\n".encode("latin-1")


class _Connection(asyncio.Protocol):
    """One keep-alive connection: a request written, its response parsed as the bytes arrive."""

    def __init__(self) -> None:
        # Made by the running loop (create_connection); kept, as asyncio.get_running_loop() costs a
        # getpid() system call on Python 3.11, and a connection serves many requests.
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self.used = False  # served a response before: the server may have closed it while it sat idle
        self.received = False  # bytes of the current response came
        self._buffer = bytearray()
        self._waiter: asyncio.Future[HttpResponse] | None = None
        self._head: tuple[int, dict[str, str], int | None, bool] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self._head is not None and self._head[2] is None and not self._head[3]:
                self._complete(bytes(self._buffer))  # a body that ends with the connection
            else:
                waiter.set_exception(
                    ConnectionResetError(f"the server closed the connection{f': {exc}' if exc else ''}")
                )

    def eof_received(self) -> bool:
        return False  # close our side too: connection_lost follows

    def request(self, data: bytes) -> asyncio.Future[HttpResponse]:
        assert self.transport is not None
        self._waiter = self._loop.create_future()
        self.received = False
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
        except ValueError as exc:
            self.abort()
            if not self._waiter.done():
                self._waiter.set_exception(ConnectionError(f"malformed HTTP response: {exc}"))

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
            if not keeps_alive(version, headers):
                self.reusable = False
            chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            length = headers.get("content-length")
            if length is None and not chunked:
                self.reusable = False  # the body ends with the connection
            self._head = (status, headers, int(length) if length is not None and not chunked else None, chunked)
        _, _, length, chunked = self._head
        if chunked:
            body = dechunk(buffer)
            if body is not None:
                self._complete(body)
        elif length is not None and len(buffer) >= length:
            body = bytes(buffer[:length])
            del buffer[:length]
            self._complete(body)

    def _complete(self, body: bytes) -> None:
        assert self._head is not None and self._waiter is not None
        status, headers, _, _ = self._head
        self._head = None
        self.used = True
        if self._buffer:
            self.reusable = False  # more than the response: out of step
        self._waiter.set_result(HttpResponse(status, headers, body))


def dechunk(buffer: bytearray) -> bytes | None:
    """The whole body of a chunked response, consumed from `buffer`, or None until all of it came."""
    body = bytearray()
    at = 0
    while True:
        end = buffer.find(b"\r\n", at)
        if end < 0:
            return None
        size = int(bytes(buffer[at:end]).split(b";", 1)[0].strip() or b"0", 16)
        at = end + 2
        if size == 0:
            # Trailers, if any, then an empty line.
            while True:
                end = buffer.find(b"\r\n", at)
                if end < 0:
                    return None
                if end == at:
                    del buffer[: end + 2]
                    return bytes(body)
                at = end + 2
        if len(buffer) < at + size + 2:
            return None
        body += buffer[at : at + size]
        at += size + 2


class LeanTransport:
    """The pooled client; see the module's docstring. Same contract as the aiohttp transport."""

    def __init__(self, timeout_s: float, max_connections: int) -> None:
        self._timeout_s = timeout_s
        self._deadlines = Deadlines(timeout_s)  # one timer for every call's timeout
        self._max = max_connections
        self._open = 0
        self._idle: dict[tuple, deque[_Connection]] = {}
        self._queue: deque[asyncio.Future[None]] = deque()  # calls waiting for a connection
        self._targets: dict[str, _Target] = {}
        self._headers: tuple[dict[str, str], bytes] | None = None
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> HttpResponse:
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = _Target(url)
        cached = self._headers
        if cached is None or cached[0] is not headers:  # an adapter passes the same dict every call
            cached = self._headers = (headers, "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1"))
        data = b"".join((target.head, cached[1], b"Content-Length: %d\r\n\r\n" % len(body), body))
        deadline = self._deadlines.start()
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
                    raise ProviderError("server", f"{url}: {type(exc).__name__}: {exc}") from None
                except BaseException:
                    connection.abort()  # cut off mid-call: the connection is out of step
                    self._release(target, connection)
                    raise
                self._release(target, connection)
                return response
            raise AssertionError("unreachable")
        except asyncio.CancelledError:
            if deadline.timed_out():
                raise ProviderError("timeout", f"no answer from {url} within {self._timeout_s:g} s") from None
            raise
        except (ConnectionError, OSError) as exc:  # connecting failed
            raise ProviderError("server", f"{url}: {type(exc).__name__}: {exc}") from None
        finally:
            self._deadlines.end(deadline)

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

    async def _connect(self, target: _Target) -> _Connection:
        if self._closed:
            raise ConnectionError("the transport is closed")
        tls = None
        if target.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = self._ssl
        _, connection = await asyncio.get_running_loop().create_connection(
            _Connection, target.host, target.port, ssl=tls, server_hostname=target.host if tls else None
        )
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
