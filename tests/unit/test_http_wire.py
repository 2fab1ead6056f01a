"""HTTP/1.1 parsing shared by the lean client and the simulator's server: chunked bodies decoded as their
bytes come (one at a time here) or whole, and gzip bodies decoded within a limit."""

import gzip

import pytest

from worker.http.wire import BodyTooLarge, ChunkedBody, dechunk, gunzip

CHUNKED = b'4\r\n{"a"\r\n5;ext=1\r\n: 12}\r\n0\r\nX-Trailer: t\r\n\r\n'


def test_a_chunked_body_fed_a_byte_at_a_time_decodes_as_it_comes_and_ends_after_its_trailers():
    chunked = ChunkedBody()
    buffer = bytearray()
    seen = []
    for byte in CHUNKED + b"NEXT":
        buffer.append(byte)
        del buffer[: chunked.feed(buffer)]
        seen.append(bytes(chunked.body))
        if chunked.done:
            break
    assert chunked.done and bytes(chunked.body) == b'{"a": 12}'
    assert seen[6] == b'{"a"', "the first chunk is decoded as soon as its 4 bytes came"
    assert buffer == b"", "nothing past the body is taken"


def test_dechunk_takes_a_whole_body_only_and_leaves_what_follows():
    buffer = bytearray(CHUNKED[:-3])
    assert dechunk(buffer) is None and buffer == CHUNKED[:-3], "untouched until all of it came"
    buffer = bytearray(CHUNKED + b"POST /next")
    assert dechunk(buffer) == b'{"a": 12}' and buffer == b"POST /next"


@pytest.mark.parametrize("bad", [b"zz\r\nabc\r\n", b"-3\r\nabc\r\n", b"3\r\nabcXY0\r\n\r\n", b"1" * 5000])
def test_a_malformed_chunk_is_a_value_error(bad):
    with pytest.raises(ValueError):
        ChunkedBody().feed(bytearray(bad))


def test_gunzip_decodes_every_member_within_the_limit_and_refuses_past_it():
    body = gzip.compress(b"hello ") + gzip.compress(b"world")
    assert gunzip(body, 11) == b"hello world"
    with pytest.raises(BodyTooLarge, match="more than 10 bytes"):
        gunzip(body, 10)
    with pytest.raises(ValueError, match="cut short"):
        gunzip(gzip.compress(b"hello")[:-4], 100)
    with pytest.raises(ValueError, match="corrupt"):
        gunzip(b"not gzip at all", 100)
