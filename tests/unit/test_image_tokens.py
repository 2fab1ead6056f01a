"""Image token estimates: each provider's rule from the size in the image's header, or its conservative estimate."""

import base64
import struct
import zlib

import pytest

from worker.messages import ChatMessage, ImagePart, Job, JsonSchemaFormat, TextPart, Tool, ToolCall
from worker.routing.pricing import UNKNOWN_IMAGE_TOKENS, estimate_tokens, extra_input_tokens, image_size, image_tokens


def png(width: int, height: int) -> str:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return base64.b64encode(data).decode()


def jpeg(width: int, height: int) -> str:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return base64.b64encode(b"\xff\xd8" + app0 + sof0 + b"\xff\xd9").decode()


def gif(width: int, height: int) -> str:
    return base64.b64encode(b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00").decode()


def webp(width: int, height: int) -> str:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00"
    vp8x += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return base64.b64encode(b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x).decode()


@pytest.mark.parametrize("encode", [png, jpeg, gif, webp])
def test_the_size_is_read_from_each_formats_header(encode) -> None:
    assert image_size(encode(640, 480)) == (640, 480)


def test_data_that_is_no_known_image_has_no_size() -> None:
    assert image_size(base64.b64encode(b"not an image at all").decode()) is None


def test_each_provider_counts_an_image_of_known_size_by_its_own_rule() -> None:
    image = ImagePart(data=png(1024, 1024), media_type="image/png")
    # OpenAI: 1024 x 1024 scaled to 768 x 768, 4 tiles of 170 and 85 (its documented example: 765).
    assert image_tokens("openai", image) == 765
    assert image_tokens("openai_compatible", image) == 765
    # Anthropic: 1024 x 1024 is within its limits, about width * height / 750.
    assert image_tokens("anthropic", image) == 1399
    # Gemini: two by two tiles of 768 pixels, 258 each.
    assert image_tokens("gemini", image) == 4 * 258
    assert image_tokens("gemini", ImagePart(data=png(300, 200), media_type="image/png")) == 258


def test_an_image_of_unknown_size_gets_the_conservative_estimate() -> None:
    image = ImagePart(url="https://example.com/cat.png")
    assert [image_tokens(w, image) for w in ("openai", "anthropic", "gemini")] == [
        UNKNOWN_IMAGE_TOKENS["openai"],
        UNKNOWN_IMAGE_TOKENS["anthropic"],
        UNKNOWN_IMAGE_TOKENS["gemini"],
    ]
    # The largest image OpenAI takes costs no more than the estimate of one it cannot see.
    assert image_tokens("openai", ImagePart(data=png(8000, 2000), media_type="image/png")) <= 1445


def test_a_jobs_extra_input_tokens_count_its_images_by_the_highest_rule_and_its_tools_and_schema_by_their_json():
    wires = ("anthropic", "gemini", "openai", "openai_compatible")
    assert extra_input_tokens(Job(id="j", prompt="q"), [], wires) == 0
    url = [ChatMessage(role="user", content=[TextPart(text="what?"), ImagePart(url="https://x/c.png")])]
    job = Job(id="j", messages=url)
    assert extra_input_tokens(job, url, wires) == UNKNOWN_IMAGE_TOKENS["anthropic"], "the most of any wire"
    assert extra_input_tokens(job, url, ["gemini"]) == UNKNOWN_IMAGE_TOKENS["gemini"]
    two = [ChatMessage(role="user", content=[ImagePart(data=png(1000, 1000), media_type="image/png")] * 2)]
    assert extra_input_tokens(Job(id="j", messages=two), two, wires) == max(
        2 * image_tokens(wire, two[0].images()[0]) for wire in wires
    )
    tool = Tool(name="clock", description="the time", parameters={"type": "object", "properties": {}})
    schema = JsonSchemaFormat(name="a", schema={"type": "object"})
    call = ChatMessage(role="assistant", tool_calls=[ToolCall(id="c", name="clock", arguments={"zone": "UTC"})])
    both = Job(id="j", messages=[ChatMessage(role="user", content="time?"), call], tools=[tool], response_format=schema)
    expected = (
        estimate_tokens('[{"name":"clock","description":"the time","parameters":{"type":"object","properties":{}}}]')
        + estimate_tokens('{"type":"object"}')
        + estimate_tokens('[{"name":"clock","arguments":{"zone":"UTC"}}]')
    )
    assert extra_input_tokens(both, both.messages, wires) == expected
