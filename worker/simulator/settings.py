"""The simulator's configuration (`config/simulator.toml`): how each model behaves, and how often two models'
wrong answers to the same prompt agree (`wrong_answer_agreement`: the share of prompts two wrong models answer
alike, so agreement is evidence of a right answer, not proof)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from worker.config import CACHE_PRICE_RATIOS, DEFAULTS_DIR, ConfigError, describe_validation_error, read_toml

DEFAULT_SIMULATOR_CONFIG = DEFAULTS_DIR / "simulator.toml"

Rate = Annotated[float, Meta(ge=0, le=1)]
WRONG_ANSWER_AGREEMENT = 0.1
PerMinute = Annotated[int, Meta(ge=0)]
Price = Annotated[float, Meta(ge=0)]


class ErrorMix(Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """The share of requests answered with each error (checked in this order, before serving)."""

    rate_limited: Rate = 0.0  # 429 with the provider's own retry hint (retry_after_s)
    quota: Rate = 0.0  # 429 insufficient_quota (OpenAI) / RESOURCE_EXHAUSTED billing (Gemini)
    server: Rate = 0.0  # 500
    unavailable: Rate = 0.0  # 503
    overloaded: Rate = 0.0  # 529 on the Anthropic wire, 503 on the others
    timeout: Rate = 0.0  # holds the request for `timeout_hang_s`, then 504
    refused: Rate = 0.0  # 200 with the provider's refusal shape


class ModelBehaviour(Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """One model as the simulator serves it, under the name clients send."""

    wire: Literal["openai", "anthropic", "gemini", "openai_compatible"]
    # "vllm": errors in vLLM's flat shape {"object": "error", ...} on the OpenAI-compatible wire.
    flavor: Literal["", "vllm"] = ""
    context_window: Annotated[int, Meta(gt=0)] = 128000
    latency_ms: Annotated[float, Meta(ge=0)] = 1000.0  # median for 100 output tokens
    latency_jitter: Annotated[float, Meta(ge=0)] = 0.25  # sigma of the log-normal around the median
    output_tokens: Annotated[int, Meta(gt=0)] = 100
    # Reasoning tokens billed as output on top of the answer (Gemini's thoughts, OpenAI's reasoning).
    thinking_tokens: Annotated[int, Meta(ge=0)] = 0
    accuracy: dict[str, Rate] = {}
    default_accuracy: Rate = 0.9
    errors: ErrorMix = msgspec.field(default_factory=ErrorMix)
    # The share of answers to a request for JSON (each wire's JSON mode) given in prose anyway.
    json_failure: Rate = 0.0
    retry_after_s: Annotated[float, Meta(ge=0)] = 1.0
    requests_per_minute: PerMinute = 0  # 0: no limit
    tokens_per_minute: PerMinute = 0
    input_tokens_per_minute: PerMinute = 0
    output_tokens_per_minute: PerMinute = 0
    # The bill's prices in USD per million tokens; cached input and cache writes default to the wire's
    # published ratio to the input price (worker.config.CACHE_PRICE_RATIOS).
    input_usd_per_mtok: Price = 0.0
    output_usd_per_mtok: Price = 0.0
    cached_input_usd_per_mtok: Price | None = None
    cache_write_usd_per_mtok: Price | None = None
    # The shortest prompt prefix the model caches (OpenAI, Anthropic's Sonnet, Gemini 2.5 Flash: 1,024).
    min_cacheable_tokens: Annotated[int, Meta(gt=0)] = 1024
    # The batch APIs (batches.py): a batch ends `batch_latency_s` after its creation (times the config's
    # latency_scale, by the setting when asked); then `batch_expiry_share` of its lines are expired and
    # `batch_error_share` errored (a server error), each line's draw seeded; the others are answered as the
    # same request would be synchronously, billed at `batch_discount` times the model's prices.
    batch_latency_s: Annotated[float, Meta(ge=0)] = 60.0
    batch_expiry_share: Rate = 0.0
    batch_error_share: Rate = 0.0
    batch_discount: Rate = 0.5

    def prices(self) -> tuple[float, float, float, float]:
        """(input, output, cached input, cache write) USD per million tokens."""
        cached_ratio, write_ratio = CACHE_PRICE_RATIOS[self.wire]
        cached, write = self.cached_input_usd_per_mtok, self.cache_write_usd_per_mtok
        return (
            self.input_usd_per_mtok,
            self.output_usd_per_mtok,
            self.input_usd_per_mtok * cached_ratio if cached is None else cached,
            self.input_usd_per_mtok * write_ratio if write is None else write,
        )


class SimulatorConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    models: dict[str, ModelBehaviour]
    seed: int = 7
    wrong_answer_agreement: Rate = WRONG_ANSWER_AGREEMENT
    latency_scale: Annotated[float, Meta(ge=0)] = 1.0  # multiplies every latency (0: answer at once)
    # When set, every batch ends this many seconds after its creation, whatever its models and the
    # latency_scale (`llm-router eval --batch-latency-s`).
    batch_latency_s: Annotated[float, Meta(ge=0)] | None = None
    timeout_hang_s: Annotated[float, Meta(ge=0)] = 120.0


def dump_simulator_config(config: SimulatorConfig) -> str:
    """The configuration as TOML that `load_simulator_config` reads back (for a simulator process)."""
    encode = msgspec.json.encode  # JSON strings, numbers and booleans are TOML too

    def value(v: object) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return encode(v).decode()

    raw = msgspec.to_builtins(config)
    lines = [f"{k} = {value(v)}" for k, v in raw.items() if k != "models" and v is not None]  # TOML has no null
    for name, model in raw["models"].items():
        lines += ["", f"[models.{encode(name).decode()}]"] + [f"{k} = {value(v)}" for k, v in model.items()]
    return "\n".join(lines) + "\n"


def load_simulator_config(path: str | Path | None = None) -> SimulatorConfig:
    """Load the simulator's TOML file (default: the shipped config/simulator.toml)."""
    path = Path(path or DEFAULT_SIMULATOR_CONFIG)
    raw = read_toml(path)
    try:
        return msgspec.convert(raw, SimulatorConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_error(exc, raw, SimulatorConfig)}") from None
