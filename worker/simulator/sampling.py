"""The generation settings (temperature, top_p, stop, seed) as each real API checks them: what it refuses, and
the message, parameter and code of its 400."""

from __future__ import annotations

from typing import Any, TypeGuard

from msgspec import Struct


class Invalid(Struct, frozen=True, kw_only=True):
    """Why the API refuses a request: `param` and `code` as OpenAI names them (other APIs send the message only)."""

    message: str
    param: str | None = None
    code: str | None = None


# The ranges each API takes: (field, minimum, maximum).
_OPENAI_RANGES = (("temperature", 0, 2), ("top_p", 0, 1))
_ANTHROPIC_RANGES = (("temperature", 0, 1), ("top_p", 0, 1))
_GEMINI_RANGES = (("temperature", 0, 2), ("topP", 0, 1), ("top_p", 0, 1))
# OpenAI's names that the Messages API does not have: its strict schema refuses them as extra inputs.
_NOT_ANTHROPIC = ("seed", "stop")
# Removed from the Messages API in version 2026-10-21.
_REMOVED_IN_2026 = ("temperature", "top_p", "top_k")
_OPENAI_MAX_STOP = 4
_GEMINI_MAX_STOP = 5


def sampling_error(wire: str, body: Any, anthropic_version: str = "2023-06-01") -> Invalid | None:
    """Why the API of `wire` refuses the generation settings of `body` (sent with the `anthropic-version`
    header's value, on Anthropic), or None when it takes them."""
    if not isinstance(body, dict):
        return None
    if wire == "anthropic":
        return _anthropic(body, anthropic_version)
    if wire == "gemini":
        config = body.get("generationConfig") or body.get("generation_config")
        return _gemini(config) if isinstance(config, dict) else None
    return _openai(body)


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _openai(body: dict) -> Invalid | None:
    for name, low, high in _OPENAI_RANGES:
        value = body.get(name)
        if value is None:
            continue
        if not _is_number(value):
            return Invalid(
                message=f"Invalid type for '{name}': expected a decimal, but got {type(value).__name__} instead.",
                param=name,
                code="invalid_type",
            )
        if value > high:
            return Invalid(
                message=f"Invalid '{name}': decimal above maximum value. Expected a value <= {high}, but got {value} "
                "instead.",
                param=name,
                code="decimal_above_max_value",
            )
        if value < low:
            return Invalid(
                message=f"Invalid '{name}': decimal below minimum value. Expected a value >= {low}, but got {value} "
                "instead.",
                param=name,
                code="decimal_below_min_value",
            )
    stop = body.get("stop")
    if isinstance(stop, list) and len(stop) > _OPENAI_MAX_STOP:
        return Invalid(
            message=f"Invalid 'stop': array too long. Expected an array with maximum length {_OPENAI_MAX_STOP}, "
            f"but got an array with length {len(stop)} instead.",
            param="stop",
            code="array_above_max_length",
        )
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        return Invalid(
            message="Invalid type for 'seed': expected an integer, but got a decimal number instead.",
            param="seed",
            code="invalid_type",
        )
    return None


def _anthropic(body: dict, version: str) -> Invalid | None:
    removed = _NOT_ANTHROPIC + (_REMOVED_IN_2026 if version >= "2026-10-21" else ())
    for name in removed:
        if name in body:
            return Invalid(message=f"{name}: Extra inputs are not permitted")
    if "temperature" in body and "top_p" in body:  # Claude 4 models and later
        return Invalid(
            message="`temperature` and `top_p` cannot both be specified for this model. Please use only one."
        )
    for name, low, high in _ANTHROPIC_RANGES:
        value = body.get(name)
        if value is None:
            continue
        if not _is_number(value):
            return Invalid(message=f"{name}: Input should be a valid number")
        if value > high:
            return Invalid(message=f"{name}: Input should be less than or equal to {high}")
        if value < low:
            return Invalid(message=f"{name}: Input should be greater than or equal to {low}")
    stop = body.get("stop_sequences")
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)):
        return Invalid(message="stop_sequences: Input should be a valid list of strings")
    return None


def _gemini(config: dict) -> Invalid | None:
    if "stop" in config:  # protobuf JSON: a name the message does not have
        return Invalid(
            message="Invalid JSON payload received. Unknown name \"stop\" at 'generation_config': Cannot find field."
        )
    for name, low, high in _GEMINI_RANGES:
        value = config.get(name)
        if _is_number(value) and not low <= value < high + 0.0001:
            return Invalid(
                message=f"Unable to submit request because it has a {name} value of {value} but the supported range is "
                f"from {low} (inclusive) to {high + 0.0001:g} (exclusive). Update the value and try again."
            )
    stop = config.get("stopSequences") or config.get("stop_sequences") or []
    if isinstance(stop, list) and len(stop) > _GEMINI_MAX_STOP:
        return Invalid(
            message=f"Unable to submit request because it has a stopSequences value of {len(stop)} items but the "
            f"supported range is from 0 (inclusive) to {_GEMINI_MAX_STOP + 1} (exclusive). Update the value and try "
            "again."
        )
    return None
