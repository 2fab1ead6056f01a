"""Pricing: what an attempt costs, from the model's prices per million tokens."""

from __future__ import annotations

from worker.config import ModelConfig


def attempt_cost(model: ModelConfig, input_tokens: int, output_tokens: int) -> float:
    """USD cost of one attempt."""
    return (input_tokens * model.input_usd_per_mtok + output_tokens * model.output_usd_per_mtok) / 1_000_000


def estimate_tokens(text: str) -> int:
    """A quick token estimate (about four characters a token for English text)."""
    return (len(text) + 3) // 4
