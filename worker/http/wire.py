"""HTTP/1.1 on the wire, shared by the lean client (worker/http/lean.py) and the simulator's server.

Plain functions over a `bytearray` of received bytes: a message's head taken off the front, its header
lines as a dict, whether the connection stays open, a chunked body decoded as its bytes come (or whole,
for the server), and a gzip body decoded within a size limit.
"""

from __future__ import annotations

import zlib

MAX_HEAD_BYTES = 64 * 1024
MAX_CHUNK_LINE_BYTES = 4096  # a chunk's size line or a trailer line


class BodyTooLarge(Exception):
    """A body is larger than the limit the reader set (`max_response_bytes`)."""


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


_SIZE, _DATA, _DATA_END, _TRAILERS, _DONE = range(5)


class ChunkedBody:
    """A chunked body decoded as its bytes arrive, so a large body is read once, not again with every piece.

    `feed(buffer, at)` decodes what it can of `buffer` from `at` into `body` and returns where it stopped;
    `done` once the last chunk and the trailers came. ValueError on a malformed chunk."""

    __slots__ = ("_left", "_state", "body")

    def __init__(self) -> None:
        self.body = bytearray()
        self._state = _SIZE
        self._left = 0  # bytes of the current chunk still to come

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, buffer: bytearray, at: int = 0) -> int:
        """Decode from `buffer[at:]`; returns the offset of the first byte not decoded."""
        end_of_data = len(buffer)
        while True:
            state = self._state
            if state == _DATA:
                take = min(self._left, end_of_data - at)
                self.body += buffer[at : at + take]
                at += take
                self._left -= take
                if self._left:
                    return at
                self._state = _DATA_END
            elif state == _DATA_END:
                if end_of_data - at < 2:
                    return at
                if buffer[at : at + 2] != b"\r\n":
                    raise ValueError("a chunk does not end with CRLF")
                at += 2
                self._state = _SIZE
            elif state == _DONE:
                return at
            else:  # a size line, or a trailer line
                end = buffer.find(b"\r\n", at)
                if end < 0:
                    if end_of_data - at > MAX_CHUNK_LINE_BYTES:
                        raise ValueError("a chunk line is too long")
                    return at
                line = bytes(buffer[at:end])
                at = end + 2
                if state == _TRAILERS:
                    if not line:
                        self._state = _DONE
                    continue
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size < 0:
                    raise ValueError("a negative chunk size")
                if size == 0:
                    self._state = _TRAILERS
                else:
                    self._left = size
                    self._state = _DATA


def dechunk(buffer: bytearray) -> bytes | None:
    """The whole body of a chunked message, consumed from `buffer`, or None (and `buffer` untouched) until
    all of it came."""
    chunked = ChunkedBody()
    at = chunked.feed(buffer)
    if not chunked.done:
        return None
    del buffer[:at]
    return bytes(chunked.body)


def gunzip(body: bytes, limit: int) -> bytes:
    """A gzip body decoded, never holding more than `limit` bytes of it: BodyTooLarge past that (a small
    body can decode to gigabytes), ValueError when it is not gzip or cut short."""
    decoded = bytearray()
    rest = body
    while rest:  # gzip members may follow one another
        member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            decoded += member.decompress(rest, limit + 1 - len(decoded))
        except zlib.error as exc:
            raise ValueError(f"the gzip body is corrupt: {exc}") from None
        if len(decoded) > limit:
            raise BodyTooLarge(f"the answer decodes to more than {limit} bytes")
        if not member.eof:
            raise ValueError("the gzip body is cut short")
        rest = member.unused_data
    return bytes(decoded)
