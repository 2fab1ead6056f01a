"""Pricing: what an attempt costs, from the model's prices per million tokens."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Iterable, Sequence

import orjson

from worker.config import ModelConfig
from worker.messages import ChatMessage, ImagePart, Job


def attempt_cost(
    model: ModelConfig,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int = 0,
    cache_write_input_tokens: int = 0,
) -> float:
    """USD cost of one attempt, as the provider bills it: of the `input_tokens` (all of them), those read
    from its prompt cache at the cached price, those written to it at the cache-write price, the rest at
    the input price; output at the output price. (A price left unset, on a model not loaded by
    `load_config`, is the input price.)"""
    input_price = model.input_usd_per_mtok
    cached_price = model.cached_input_usd_per_mtok
    write_price = model.cache_write_usd_per_mtok
    uncached = input_tokens - cached_input_tokens - cache_write_input_tokens
    return (
        uncached * input_price
        + cached_input_tokens * (input_price if cached_price is None else cached_price)
        + cache_write_input_tokens * (input_price if write_price is None else write_price)
        + output_tokens * model.output_usd_per_mtok
    ) / 1_000_000


def estimate_tokens(text: str) -> int:
    """A quick token estimate (about four characters a token for English text)."""
    return (len(text) + 3) // 4


# A few tokens of framing per message (role, separators), on top of its text.
MESSAGE_OVERHEAD_TOKENS = 4


def text_tokens(texts: Iterable[str]) -> int:
    """The estimated tokens of the messages' texts alone (framing not included)."""
    tokens = 0
    for text in texts:
        tokens += estimate_tokens(text)
    return tokens


def prompt_tokens(texts: Sequence[str]) -> int:
    """The estimated input tokens of a prompt of these messages: their texts and each one's framing."""
    return text_tokens(texts) + MESSAGE_OVERHEAD_TOKENS * len(texts)


def content_tokens(messages: Sequence[ChatMessage]) -> int:
    """`text_tokens` of the messages' contents (`estimate_tokens` inlined: without a list of them or a
    call a message, once a job or a call)."""
    if len(messages) == 1:
        return (len(messages[0].text()) + 3) // 4
    return sum([(len(m.text()) + 3) // 4 for m in messages])


def messages_prompt_tokens(messages: Sequence[ChatMessage]) -> int:
    """`prompt_tokens` of the messages: their contents and each one's framing."""
    return content_tokens(messages) + MESSAGE_OVERHEAD_TOKENS * len(messages)


def extra_input_tokens(job: Job, messages: Sequence[ChatMessage], wires: Iterable[str]) -> int:
    """The estimated input tokens of a job beyond its messages' text: its tool definitions, its schema and
    the tool calls of its messages by `estimate_tokens` of their JSON, and its images by `image_tokens` of
    the wire among `wires` (the provider kinds the job may go to) that counts them the highest: one estimate
    for every model of the plan, never short of what any of them bills."""
    if job.messages is None and not job.tools and job.schema is None:  # most jobs: a plain prompt
        return 0
    tokens = 0
    if job.tools:
        tokens += estimate_tokens(
            orjson.dumps(
                [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in job.tools]
            ).decode()
        )
    if job.schema is not None:
        tokens += estimate_tokens(orjson.dumps(job.schema.schema).decode())
    images = []
    for message in messages:
        if message.tool_calls:
            tokens += estimate_tokens(
                orjson.dumps([{"name": c.name, "arguments": c.arguments} for c in message.tool_calls]).decode()
            )
        images += message.images()
    if images:
        tokens += max(sum(image_tokens(wire, image) for image in images) for wire in wires or UNKNOWN_IMAGE_TOKENS)
    return tokens


# An image's input tokens when its size cannot be read (a URL, or data in a format not read here): the
# most each provider's rule gives for an image it has resized to its largest size (OpenAI high detail:
# 768 x 2048, 8 tiles; Anthropic: about 1.15 megapixels), and for Gemini, whose tiles are unbounded, five
# 768-pixel tiles. A reservation is corrected by the usage the provider reports.
UNKNOWN_IMAGE_TOKENS = {"openai": 1445, "anthropic": 1600, "gemini": 1290}


def image_tokens(wire: str, image: ImagePart) -> int:
    """The input tokens of `image` by the rule of `wire` (`openai`, `anthropic` or `gemini`; an
    OpenAI-compatible server counts as `openai`), from its size when its data shows it."""
    size = image_size(image.data) if image.data is not None else None
    rule = "openai" if wire not in UNKNOWN_IMAGE_TOKENS else wire
    if size is None:
        return UNKNOWN_IMAGE_TOKENS[rule]
    width, height = size
    if rule == "anthropic":  # resized to a long edge of at most 1568 pixels; about width * height / 750
        scale = min(1.0, 1568 / max(width, height), math.sqrt(1_150_000 / (width * height)))
        return max(1, math.ceil(width * scale * height * scale / 750))
    if rule == "gemini":  # 258 a small image; a larger one is cut into 768-pixel tiles of 258 each
        if width <= 384 and height <= 384:
            return 258
        return 258 * math.ceil(width / 768) * math.ceil(height / 768)
    # OpenAI, high detail: fit in 2048 x 2048, shortest side down to 768, then 170 a 512-pixel tile and 85.
    fitted = min(1.0, 2048 / max(width, height))
    scale = fitted * min(1.0, 768 / (min(width, height) * fitted))
    return 85 + 170 * math.ceil(width * scale / 512) * math.ceil(height * scale / 512)


def image_size(data: str) -> tuple[int, int] | None:
    """(width, height) of base64 PNG, GIF, JPEG or WebP data, from its header; None when not read."""
    try:
        head = base64.b64decode(data[:43_692])  # the first 32 KiB: JPEG's size may come after its metadata
    except ValueError:
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return struct.unpack("<HH", head[6:10])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_size(head)
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(head)
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    if chunk == b"VP8 " and len(head) >= 30:
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    """The size in a JPEG's start-of-frame segment, walking the segments before it."""
    i = 2
    while i + 9 <= len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(head[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", head[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None
