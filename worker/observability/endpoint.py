"""The worker's HTTP endpoint (`worker.http_port`): /metrics, /healthz and /readyz.

- `/metrics`: every metric the worker records, in Prometheus text format, collected at the scrape.
- `/healthz`: 200 when the process and its event loop answer (the answer is written by the loop).
- `/readyz`: 200 when the worker is ready (what ready means is the readiness callable's: the worker's
  is in worker/pipeline/consume.py), else 503 with the reason in the body.

A small HTTP/1.1 server on asyncio's streams: one request a connection (`Connection: close`), GET
and HEAD only, the request's head bounded in size and time, so that a slow or broken client costs
little and cannot hold the worker up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from worker.config import ConfigError
from worker.observability.logs import get_logger

log = get_logger("endpoint")

Readiness = Callable[[], Awaitable[str | None]]  # None when ready, else why not

HEAD_LIMIT = 16 * 1024
HEAD_TIMEOUT_S = 5.0
READINESS_TIMEOUT_S = 5.0
TEXT = "text/plain; charset=utf-8"
METRICS_OFF = b"# metrics off: OTEL_SDK_DISABLED=true\n"

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


class Answer:
    """What one request gets: a status, a content type and a body."""

    __slots__ = ("body", "content_type", "status")

    def __init__(self, status: int, body: bytes, content_type: str = TEXT) -> None:
        self.status, self.body, self.content_type = status, body, content_type


def request_line(head: bytes) -> tuple[str, str] | None:
    """The method and path (without its query) of a request's head; None when it is not an HTTP/1 request."""
    line, _, _ = head.partition(b"\r\n")
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    path = parts[1].decode("latin-1").partition("?")[0]
    return parts[0].decode("latin-1"), path


def response(answer: Answer, with_body: bool = True) -> bytes:
    """The bytes of an HTTP/1.1 response closing its connection."""
    head = (
        f"HTTP/1.1 {answer.status} {REASONS[answer.status]}\r\n"
        f"Content-Type: {answer.content_type}\r\n"
        f"Content-Length: {len(answer.body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return head + answer.body if with_body else head


class Endpoint:
    """The HTTP endpoint of one worker, from `start` to `close`."""

    def __init__(
        self,
        host: str,
        port: int,
        readiness: Readiness,
        metrics: Callable[[], bytes] | None,
        metrics_type: str = TEXT,
    ) -> None:
        self._host = host or None  # None: every interface
        self._port = port
        self._readiness = readiness
        self._metrics = metrics
        self._metrics_type = metrics_type
        self._server: asyncio.Server | None = None
        self._serving: set[asyncio.Task[None]] = set()  # the connections being answered

    @property
    def port(self) -> int:
        """The port it listens on (the one asked for, or the one the system gave for 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        """Listen; ConfigError (exit 2) when the port cannot be had."""
        try:
            self._server = await asyncio.start_server(self._serve, self._host, self._port, limit=HEAD_LIMIT)
        except OSError as exc:
            raise ConfigError(f"worker.http_port {self._port}: cannot listen: {exc.strerror or exc}") from None
        log.info("http endpoint listening", extra={"host": self._host or "*", "port": self.port})

    async def close(self) -> None:
        """Stop listening and end the connections still open."""
        if self._server is None:
            return
        self._server.close()
        for task in self._serving:
            task.cancel()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # a connection is served by a task of its own
        self._serving.add(task)
        try:
            async with asyncio.timeout(HEAD_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            request = request_line(head)
            if request is None:
                writer.write(response(Answer(400, b"not an HTTP/1 request\n")))
            else:
                method, path = request
                writer.write(response(await self._answer(method, path), with_body=method != "HEAD"))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a client that went away, or sent no head in time or too large a one: nothing to answer
        finally:
            writer.close()
            self._serving.discard(task)

    async def _answer(self, method: str, path: str) -> Answer:
        if method not in ("GET", "HEAD"):
            return Answer(405, b"GET or HEAD\n")
        if path == "/metrics":
            return self._scrape()
        if path == "/healthz":
            return Answer(200, b"ok\n")
        if path == "/readyz":
            return await self._ready()
        return Answer(404, b"/metrics, /healthz or /readyz\n")

    def _scrape(self) -> Answer:
        if self._metrics is None:
            return Answer(200, METRICS_OFF)
        return Answer(200, self._metrics(), self._metrics_type)

    async def _ready(self) -> Answer:
        try:
            async with asyncio.timeout(READINESS_TIMEOUT_S):
                reason = await self._readiness()
        except TimeoutError:
            reason = f"the readiness checks took over {READINESS_TIMEOUT_S:g} s"
        if reason is None:
            return Answer(200, b"ready\n")
        return Answer(503, f"not ready: {reason}\n".encode())
