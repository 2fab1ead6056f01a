"""What the simulator answers to one request: pure decisions from the model's settings and a RNG.

A prompt may carry directives for evaluation sets: `[[expect: ANSWER]]` (the right answer) and
`[[task: TYPE]]` (the task type whose accuracy applies). The model answers ANSWER with its
accuracy for that task type, decided by a hash of seed, model and prompt (so a model that gets a
question wrong gets it wrong every time), and a wrong answer otherwise. Asked for JSON, it answers
JSON (ANSWER as it is when it is JSON, else `{"answer": ...}`), except for its `json_failure` share.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from typing import Literal

import msgspec
from msgspec import Struct

from worker.routing.pricing import estimate_tokens
from worker.simulator.settings import ModelBehaviour

_EXPECT = re.compile(r"\[\[expect:\s*(.*?)\s*\]\]", re.S)
_TASK = re.compile(r"\[\[task:\s*([\w.-]+)\s*\]\]")
FILLER = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "the",
    "lazy",
    "dog",
    "while",
    "the",
    "router",
    "counts",
    "tokens",
]


class SimRequest(Struct, frozen=True, kw_only=True):
    """A request in wire-neutral form."""

    model: str
    texts: list[str]  # every message's text, system first
    max_tokens: int
    json: bool = False  # the request asked for JSON (its wire's JSON mode)


class Answer(Struct, frozen=True, kw_only=True):
    text: str
    output_tokens: int
    finish: Literal["stop", "length", "refusal"]
    correct: bool | None = None  # None: the prompt carried no expected answer


def pick_error(behaviour: ModelBehaviour, rng: random.Random) -> str | None:
    """An injected error kind from the model's error mix, or None."""
    roll = rng.random()
    for kind in ("rate_limited", "quota", "server", "unavailable", "overloaded", "timeout"):
        share = getattr(behaviour.errors, kind)
        if roll < share:
            return kind
        roll -= share
    return None


def latency_s(behaviour: ModelBehaviour, output_tokens: int, scale: float, rng: random.Random) -> float:
    """Log-normal around the median for 100 output tokens, scaled by the answer's length."""
    if scale == 0 or behaviour.latency_ms == 0:
        return 0.0
    median = behaviour.latency_ms / 1000 * max(output_tokens, 1) / 100
    return (
        scale * median * math.exp(rng.gauss(0, behaviour.latency_jitter))
        if behaviour.latency_jitter
        else scale * median
    )


def _unit(seed: int, model: str, prompt: str) -> float:
    digest = hashlib.blake2b(f"{seed}\0{model}\0{prompt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _as_json(text: str) -> str:
    """`text` as a JSON answer: itself when it is JSON, else `{"answer": text}`."""
    try:
        msgspec.json.decode(text)
    except msgspec.DecodeError:
        return msgspec.json.encode({"answer": text}).decode()
    return text


def answer(behaviour: ModelBehaviour, request: SimRequest, seed: int, rng: random.Random) -> Answer:
    """The model's answer: the expected one with its accuracy, else a wrong one; filler without a directive."""
    prompt = "\n".join(request.texts)
    if rng.random() < behaviour.errors.refused:
        return Answer(text="I can't help with that request.", output_tokens=8, finish="refusal")
    expected = _EXPECT.search(prompt)
    correct = None
    if expected:
        task = _TASK.search(prompt)
        accuracy = (
            behaviour.accuracy.get(task.group(1), behaviour.default_accuracy) if task else behaviour.default_accuracy
        )
        correct = _unit(seed, request.model, prompt) < accuracy
        text = expected.group(1) if correct else f"I am not sure, but it is not {expected.group(1)[:1]}... perhaps 42."
    else:
        wanted = max(1, int(behaviour.output_tokens * (0.75 + 0.5 * rng.random())))
        words = [FILLER[i % len(FILLER)] for i in range(wanted)]
        text = f"Simulated answer from {request.model}: " + " ".join(words)
    if request.json:
        text = _as_json(text) if rng.random() >= behaviour.json_failure else f"Sure! Here it is: {text}"
    tokens = max(1, estimate_tokens(text))
    if tokens > request.max_tokens:
        return Answer(
            text=text[: request.max_tokens * 4],
            output_tokens=request.max_tokens,
            finish="length",
            correct=False if expected else None,
        )
    return Answer(text=text, output_tokens=tokens, finish="stop", correct=correct)
