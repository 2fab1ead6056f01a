"""The simulator's HTTP/1.1 server on asyncio's protocols: keep-alive, one request at a time a connection.

aiohttp's server (router, middlewares, request and response machinery) took about 250 µs of CPU a
request at 5,000 requests in flight, more than the simulated provider's own work, and the benchmark
runs the simulator on the same two cores as the worker and the broker. This server parses the
request line, headers and a Content-Length (or chunked) body, hands a small request object to the
Simulator's handlers (headers, `match_info`, `query`, `read()`, as aiohttp's request has them), and
writes their Response (status, headers, body) with its length.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import parse_qsl, unquote

from worker.http.wire import dechunk, keeps_alive, parse_headers, take_head
from worker.observability.logs import get_logger

log = get_logger("simulator")

Handler = Callable[[Any], Awaitable["Response"]]
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
    529: "Overloaded",
}
MAX_BODY_BYTES = 512 * 1024 * 1024  # OpenAI's files reach 512 MB (its batches 200 MB, Anthropic's 256 MB)


class Response:
    """A handler's answer: status, headers (names as written) and body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.status = status
        self.headers = headers if headers is not None else {}
        self.body = body


def json_response(body: bytes, status: int = 200) -> Response:
    """A JSON answer from already encoded bytes."""
    return Response(status, {"content-type": "application/json"}, body)


class Request:
    """What the handlers read of a request (as of aiohttp's): headers, path parameters, query, body."""

    __slots__ = ("_body", "arrived", "headers", "match_info", "method", "path", "query")

    def __init__(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        query: dict[str, str],
        body: bytes,
        arrived: float | None = None,
    ) -> None:
        self.arrived = time.monotonic() if arrived is None else arrived  # when its last byte was read
        self.method = method
        self.path = path
        self.headers = headers
        self.match_info: dict[str, str] = {}
        self.query = query
        self._body = body

    async def read(self) -> bytes:
        return self._body


class Routes:
    """Exact paths first (a dict), then patterns in order."""

    def __init__(self) -> None:
        self._exact: dict[tuple[str, str], Handler] = {}
        self._patterns: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        if "{" not in path:
            self._exact[(method, path)] = handler
            return
        # aiohttp's syntax: {name} or {name:regex}
        pattern = re.sub(r"\{(\w+)(?::([^}]+))?\}", lambda m: f"(?P<{m.group(1)}>{m.group(2) or '[^/]+'})", path)
        self._patterns.append((method, re.compile(f"^{pattern}$"), handler))

    def find(self, method: str, path: str) -> tuple[Handler | None, dict[str, str], bool]:
        """The handler and path parameters; whether the path exists under another method."""
        handler = self._exact.get((method, path))
        if handler is not None:
            return handler, {}, True
        other = any(p == path for _, p in self._exact)
        for want, pattern, handler in self._patterns:
            match = pattern.match(path)
            if match:
                if want == method:
                    return handler, {k: unquote(v) for k, v in match.groupdict().items()}, True
                other = True
        return None, {}, other


class _Connection(asyncio.Protocol):
    def __init__(self, server: LeanServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._head: tuple[str, str, str, dict[str, str], int | None, bool, bool] | None = None
        self._requests: deque[tuple[Request, bool]] = deque()
        self._busy = False
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a stream server's connection: a full Transport
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._server.connections.discard(self)

    def close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            while self._parse():
                pass
        except ValueError as exc:
            self._write(400, {"content-type": "text/plain"}, f"bad request: {exc}".encode(), keep_alive=False)
            self.close()

    def _parse(self) -> bool:
        """Take one whole request off the buffer, if there is one."""
        buffer = self._buffer
        if self._head is None:
            lines = take_head(buffer, "request")
            if lines is None:
                return False
            method, target, version = lines[0].split(" ", 2)
            headers = parse_headers(lines[1:])  # names lower-cased, as the handlers ask for them
            path, _, query = target.partition("?")
            keep_alive = keeps_alive(version, headers)
            chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            length = int(headers.get("content-length", "0")) if not chunked else None
            if length is not None and length > MAX_BODY_BYTES:
                raise ValueError("the body is too large")
            self._head = (method, path, query, headers, length, chunked, keep_alive)
        method, path, query, headers, length, chunked, keep_alive = self._head
        if chunked:
            body = dechunk(buffer)
            if body is None:
                return False
        else:
            assert length is not None
            if len(buffer) < length:
                return False
            body = bytes(buffer[:length])
            del buffer[:length]
        self._head = None
        self._requests.append((Request(method, unquote(path), headers, dict(parse_qsl(query)), body), keep_alive))
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().create_task(self._serve())
        return True

    async def _serve(self) -> None:
        """Answer the connection's requests in the order they came."""
        try:
            while self._requests and not self._closing:
                request, keep_alive = self._requests.popleft()
                handler, params, exists = self._server.routes.find(request.method, request.path)
                if handler is None:
                    status = 405 if exists else 404
                    self._write(status, {"content-type": "text/plain"}, REASONS[status].encode(), keep_alive)
                else:
                    request.match_info = params
                    try:
                        response = await handler(request)
                        self._write(response.status, response.headers, response.body, keep_alive)
                    except Exception:  # a bug in a handler: a 500, as aiohttp would answer
                        log.exception("simulator handler failed", extra={"path": request.path})
                        self._write(500, {"content-type": "text/plain"}, b"internal error", keep_alive)
                if not keep_alive:
                    self.close()
        finally:
            self._busy = False

    def _write(self, status: int, headers: dict[str, str], body: bytes, keep_alive: bool) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"]
        for name, value in headers.items():
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                lines.append(f"{name}: {value}\r\n")
        lines.append(f"Content-Length: {len(body)}\r\n")
        if not keep_alive:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        self._transport.write("".join(lines).encode("latin-1") + body)


class LeanServer:
    """Serves `routes` on host:port in the running loop."""

    def __init__(self, routes: Routes) -> None:
        self.routes = routes
        self.connections: set[_Connection] = set()
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port."""
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(self), host, port, backlog=4096, reuse_address=True
        )
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for connection in list(self.connections):
                connection.close()
            await self._server.wait_closed()
            self._server = None
