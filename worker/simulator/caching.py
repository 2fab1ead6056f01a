"""Prompt caching as each provider does it, and the bill it makes: which input tokens a request reads
from the cache, which it writes, and what the whole request costs at the model's prices.

A prompt is the list of texts the simulator counts tokens by (`worker.routing.pricing.prompt_tokens`);
a cacheable prefix ends at one of them. The cache is per API key and model, as the providers' are.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import msgspec

from worker.routing.pricing import MESSAGE_OVERHEAD_TOKENS, estimate_tokens
from worker.simulator.settings import ModelBehaviour

OPENAI_INCREMENT = 128  # OpenAI's cache hits grow in steps of 128 tokens past the minimum
MAX_PREFIXES = 200_000  # the prefixes remembered, the oldest forgotten first (the providers' caches expire)


class CacheUse(msgspec.Struct, frozen=True, kw_only=True):
    """Of a request's input tokens, those read from the cache and those written to it."""

    read: int = 0
    written: int = 0


NO_CACHE = CacheUse()


class Bill(msgspec.Struct, kw_only=True):
    """What a key was billed for one model: tokens by rate, and their cost in USD."""

    requests: int = 0
    input_tokens: int = 0  # all of them, cached and cache writes included
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0  # batch lines included
    batch_requests: int = 0
    batch_cost_usd: float = 0.0

    def add(self, behaviour: ModelBehaviour, input_tokens: int, output_tokens: int, cache: CacheUse) -> float:
        """Bill one answered request; its cost."""
        input_price, output_price, cached_price, write_price = behaviour.prices()
        cost = (
            (input_tokens - cache.read - cache.written) * input_price
            + cache.read * cached_price
            + cache.written * write_price
            + output_tokens * output_price
        ) / 1_000_000
        self.requests += 1
        self.input_tokens += input_tokens
        self.cached_input_tokens += cache.read
        self.cache_write_input_tokens += cache.written
        self.output_tokens += output_tokens
        self.cost_usd += cost
        return cost

    def add_batch(self, behaviour: ModelBehaviour, input_tokens: int, output_tokens: int) -> float:
        """Bill one answered batch line (no prompt cache) at the model's batch discount; its cost."""
        input_price, output_price, _, _ = behaviour.prices()
        cost = (input_tokens * input_price + output_tokens * output_price) * behaviour.batch_discount / 1_000_000
        self.batch_requests += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cost_usd += cost
        self.batch_cost_usd += cost
        return cost


def key_label(key: str) -> str:
    """How a bill names an API key: a digest, never the key."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class PromptCache:
    """The prefixes each key sent each model, with each wire's rule for what a request reads and writes."""

    def __init__(self, max_prefixes: int = MAX_PREFIXES) -> None:
        self._seen: dict[tuple[str, str, int], None] = {}  # insertion-ordered: the oldest first
        self._max = max_prefixes

    def clear(self) -> None:
        self._seen.clear()

    def use(
        self,
        wire: str,
        key: str,
        model: str,
        texts: Sequence[str],
        minimum: int,
        breakpoints: Sequence[int] = (),
    ) -> CacheUse:
        """The cache use of a request answered now (and the cache as it leaves it). OpenAI and Gemini cache
        every prefix of `minimum` tokens or more by themselves; Anthropic only the prefixes ending at a
        `cache_control` breakpoint (indices of `texts`), written on first sight and read afterwards."""
        ends = _prefix_tokens(texts)
        if not ends or ends[-1] < minimum:
            return NO_CACHE  # the whole prompt is too short: no prefix of it is cached (most requests)
        if wire == "anthropic":
            return self._explicit(key, model, texts, ends, minimum, breakpoints)
        return self._implicit(wire, key, model, texts, ends, minimum)

    def _implicit(
        self, wire: str, key: str, model: str, texts: Sequence[str], ends: list[int], minimum: int
    ) -> CacheUse:
        hits = 0
        for i, tokens in enumerate(ends):
            if tokens < minimum:
                continue
            if not self._remember((key, model, _digest(texts, i))):
                hits = tokens
        if hits and wire in ("openai", "openai_compatible"):
            hits = minimum + (hits - minimum) // OPENAI_INCREMENT * OPENAI_INCREMENT
        return CacheUse(read=hits)

    def _explicit(
        self, key: str, model: str, texts: Sequence[str], ends: list[int], minimum: int, breakpoints: Sequence[int]
    ) -> CacheUse:
        read = cached = 0
        for i in sorted(b for b in breakpoints if 0 <= b < len(ends) and ends[b] >= minimum):
            cached = ends[i]
            if not self._remember((key, model, _digest(texts, i))):
                read = cached
        return CacheUse(read=read, written=cached - read)

    def _remember(self, entry: tuple[str, str, int]) -> bool:
        """Whether `entry` is new (it is remembered from now on, as the latest)."""
        seen = self._seen
        new = entry not in seen
        if not new:
            del seen[entry]
        seen[entry] = None
        if len(seen) > self._max:
            del seen[next(iter(seen))]
        return new


def _prefix_tokens(texts: Sequence[str]) -> list[int]:
    """The tokens of each prefix of the prompt, as `prompt_tokens` counts them."""
    ends, total = [], 0
    for text in texts:
        total += estimate_tokens(text) + MESSAGE_OVERHEAD_TOKENS
        ends.append(total)
    return ends


def _digest(texts: Sequence[str], last: int) -> int:
    """The identity of the prefix ending at `texts[last]`."""
    return hash(tuple(texts[: last + 1]))
