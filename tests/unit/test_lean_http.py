"""The lean HTTP client against a real loopback server that answers in the ways servers do, on
either event loop the worker runs on (worker/runtime.py)."""

import asyncio
import time

import pytest

from worker import runtime
from worker.errors import ProviderError
from worker.http.lean import LeanTransport

pytestmark = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """Straight to the loopback server, whatever proxy the machine names (test_http_transport.py covers them)."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)


class Server:
    """A loopback server: `answer(request_bytes, count)` gives the raw bytes to write back (None: say nothing)."""

    def __init__(self, answer, close_after=False):
        self.answer = answer
        self.close_after = close_after
        self.requests: list[bytes] = []
        self.connections = 0

    async def __aenter__(self):
        async def handle(reader, writer):
            self.connections += 1
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(
                        next(
                            line.split(b":")[1]
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length")
                        )
                    )
                    body = await reader.readexactly(length)
                    self.requests.append(head + body)
                    reply = self.answer(head + body, len(self.requests))
                    if reply is None:
                        await asyncio.sleep(3600)
                    writer.write(reply)
                    await writer.drain()
                    if self.close_after:
                        writer.close()
                        return
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/chat/completions"
        return self

    async def __aexit__(self, *exc):
        self.server.close()


def ok(body=b'{"ok": true}', extra=b""):
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Request-Id: r1\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


def test_a_post_and_its_answer_with_keep_alive_reuse(loop):
    async def scenario():
        async with Server(lambda request, n: ok(b'{"n": %d}' % n)) as server:
            transport = LeanTransport(5, 10)
            first = await transport.post(
                server.url, {"authorization": "Bearer k", "content-type": "application/json"}, b'{"q": 1}'
            )
            second = await transport.post(
                server.url, {"authorization": "Bearer k", "content-type": "application/json"}, b'{"q": 2}'
            )
            await transport.close()
            return first, second, server

    first, second, server = runtime.run(scenario(), loop)
    assert (first.status, first.body, second.body) == (200, b'{"n": 1}', b'{"n": 2}')
    assert first.headers["x-request-id"] == "r1" and first.headers["content-type"] == "application/json"
    assert server.connections == 1, "the second call reuses the connection"
    request = server.requests[0]
    assert request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"authorization: Bearer k\r\n" in request and request.endswith(b'\r\n\r\n{"q": 1}')


def test_chunked_and_close_delimited_bodies_and_interim_responses(loop):
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b'4\r\n{"a"\r\n5;ext=1\r\n: 12}\r\n0\r\nX-Trailer: t\r\n\r\n'
    )
    until_close = b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 2\r\n\r\noverloaded"
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"{}")

    async def scenario():
        out = []
        for reply, close in ((chunked, False), (until_close, True), (interim, False)):
            async with Server(lambda request, n, reply=reply: reply, close_after=close) as server:
                transport = LeanTransport(5, 10)
                out.append(await transport.post(server.url, {}, b"{}"))
                await transport.close()
        return out

    chunked_reply, closed_reply, interim_reply = runtime.run(scenario(), loop)
    assert chunked_reply.body == b'{"a": 12}'
    assert (closed_reply.status, closed_reply.headers["retry-after"], closed_reply.body) == (503, "2", b"overloaded")
    assert (interim_reply.status, interim_reply.body) == (200, b"{}")


def test_a_connection_the_server_closed_while_idle_is_retried_once_on_a_new_one(loop):
    async def scenario():
        async with Server(lambda request, n: ok(), close_after=True) as server:
            transport = LeanTransport(5, 10)
            await transport.post(server.url, {}, b"{}")
            await asyncio.sleep(0.05)
            second = await transport.post(server.url, {}, b"{}")
            await transport.close()
            return second, server.connections

    second, connections = runtime.run(scenario(), loop)
    assert second.status == 200 and connections == 2


def test_a_server_that_never_answers_is_a_timeout_and_an_absent_one_a_server_error(loop):
    async def scenario():
        async with Server(lambda request, n: None) as server:
            transport = LeanTransport(0.3, 10)
            started = time.monotonic()
            with pytest.raises(ProviderError) as timeout:
                await transport.post(server.url, {}, b"{}")
            took = time.monotonic() - started
            await transport.close()
        transport = LeanTransport(1, 10)
        with pytest.raises(ProviderError) as refused:
            await transport.post(server.url, {}, b"{}")
        return timeout.value, took, refused.value, asyncio.current_task().cancelling()

    timeout, took, refused, cancelling = runtime.run(scenario(), loop)
    assert timeout.kind == "timeout" and 0.3 <= took < 1.0
    assert cancelling == 0, "the timeout's cancellation does not leak into the caller"
    assert refused.kind == "server"


def test_calls_beyond_max_connections_wait_for_a_free_one(loop):
    async def scenario():
        async with Server(lambda request, n: ok()) as server:
            transport = LeanTransport(5, 3)
            replies = await asyncio.gather(*(transport.post(server.url, {}, b"{}") for _ in range(30)))
            await transport.close()
            return replies, server.connections

    replies, connections = runtime.run(scenario(), loop)
    assert all(r.status == 200 for r in replies) and len(replies) == 30
    assert connections <= 3
