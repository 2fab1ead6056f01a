"""Pricing: what an attempt costs, from the model's prices per million tokens."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from worker.config import ModelConfig
from worker.messages import ChatMessage


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
