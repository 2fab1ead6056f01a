"""What the simulator answers to one request: pure decisions from the model's settings and a RNG.

A prompt may carry directives for evaluation sets: `[[expect: ANSWER]]` (the right answer) and
`[[task: TYPE]]` (the task type whose accuracy applies). The model answers ANSWER with its
accuracy for that task type, decided by a hash of seed, model and prompt (so a model that gets a
question wrong gets it wrong every time), and a wrong answer otherwise. A wrong answer looks like an
answer (a number near ANSWER when ANSWER is a number, else a made-up word) and is the model's own,
except that with probability sqrt(`wrong_answer_agreement`) it is the prompt's common wrong answer: so
two models wrong on a prompt give the same answer with probability `wrong_answer_agreement`, and
otherwise differ (but for a chance of about one in two thousand). Asked for JSON, it answers JSON
(ANSWER as it is when it is JSON, else `{"answer": ...}`), except for its `json_failure` share.

A judge request (`worker.routing.judge.judge_messages`: the last text holds `<prompt>...</prompt>` and
`<answer>...</answer>` and ends with the verdict ask) is graded: the right verdict is PASS when the
answer agrees (`answer_key`) with the `[[expect: ...]]` of the prompt part, FAIL otherwise, PASS without
one. The judge model gives the right verdict with its accuracy for the prompt part's `[[task: ...]]`
(a draw of its own from seed, model and the judge request), else the wrong one.

Asked for JSON under a schema (structured output), it answers JSON valid under the schema: ANSWER when
ANSWER (or `{"answer": ANSWER}`) is valid JSON under it and the model is right, another valid value when
it is wrong, a generated valid value without a usable ANSWER (`structured.valid_value`); its
`json_failure` share is prose (half of it) or JSON off the schema (the other half).

Offered tools, it calls them as the prompt's `[[tool: NAME]]` directives say, one call a directive
(several: parallel calls), with the JSON object of `[[tool: NAME {"city": "Paris"}]]` as the arguments,
else arguments generated from the tool's `parameters` as a structured answer (ANSWER with its accuracy
when ANSWER fits them); a `json_failure` share of calls has arguments off the parameters. Without a
directive, a tool choice of `required` calls the first tool and a named one that tool (so a tool forced
for a structured answer answers it); `auto` answers in text, and `none` always does. A conversation that
ends with tool results is answered in text (the directives are for the turn that asks), unless the tool
choice forces a call. A directive naming a tool not offered is called as named (a model's mistake).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from typing import Any, Literal

import msgspec
from msgspec import Struct

from worker.routing.agreement import answer_key
from worker.routing.judge import VERDICT_ASK
from worker.routing.pricing import estimate_tokens
from worker.simulator.settings import WRONG_ANSWER_AGREEMENT, ModelBehaviour
from worker.simulator.structured import is_valid, off_schema_value, valid_value

_EXPECT = re.compile(r"\[\[expect:\s*(.*?)\s*\]\]", re.S)
_TASK = re.compile(r"\[\[task:\s*([\w.-]+)\s*\]\]")
# A judge request's prompt and answer (worker.routing.judge.judge_messages).
_JUDGED = re.compile(r"<prompt>\n?(.*?)\n?</prompt>.*?<answer>\n?(.*)\n?</answer>", re.S)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
_TOOL = re.compile(r"\[\[tool:\s*([\w.:-]+)\s*(\{.*?\})?\s*\]\]", re.S)
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
    schema: Any = None  # the JSON Schema the answer must be valid under (structured output)
    tools: dict[str, Any] = {}  # the tools offered: name -> parameters (a JSON Schema)
    tool_choice: Literal["auto", "none", "required"] = "auto"
    tool_name: str = ""  # the tool the request forces
    after_tool_result: bool = False  # the conversation ends with tool results


class ToolUse(Struct, frozen=True, kw_only=True):
    """A tool call of an answer."""

    name: str
    arguments: Any  # a JSON object; off the tool's parameters for the model's json_failure share


class Answer(Struct, frozen=True, kw_only=True):
    text: str
    output_tokens: int
    finish: Literal["stop", "length", "refusal", "tool_calls"]
    correct: bool | None = None  # None: the prompt carried no expected answer
    tool_calls: tuple[ToolUse, ...] = ()


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


def _draw(seed: int, *parts: str) -> int:
    """A 64-bit number decided by the seed and `parts` alone (the same request draws the same every time)."""
    key = "\0".join((str(seed), *parts))
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def _unit(seed: int, *parts: str) -> float:
    return _draw(seed, *parts) / 2**64


def _accuracy(behaviour: ModelBehaviour, prompt: str) -> float:
    """The model's accuracy for the prompt's `[[task: TYPE]]`, else its default accuracy."""
    task = _TASK.search(prompt)
    return behaviour.accuracy.get(task.group(1), behaviour.default_accuracy) if task else behaviour.default_accuracy


def hedged(wrong: str) -> str:
    """A wrong answer as a model unsure of it writes it: longer than the right one, as wrong answers often are
    (the same wrong value, hedged the same way, still agrees with another model's)."""
    return f"I am not sure, but I think the answer is {wrong}."


def wrong_answer(wanted: str, seed: int, model: str, prompt: str, agreement: float) -> str:
    """The model's wrong answer to `prompt`: the prompt's common one with probability sqrt(`agreement`), else
    its own (so two wrong models agree with probability `agreement`); never `wanted` (by `answer_key`)."""
    shared = _unit(seed, model, prompt, "shared-wrong") < math.sqrt(agreement)
    source = "\0common" if shared else model
    number = _NUMBER.fullmatch(wanted.strip())
    if number:
        return _wrong_number(number.group(0), _draw(seed, source, prompt, "wrong"))
    for attempt in range(8):  # a made-up word may, by a rare chance, be the expected one
        text = _made_up(wanted, seed, source, f"{prompt}\0{attempt}")
        if answer_key(text) != answer_key(wanted):
            break
    return text


def _wrong_number(wanted: str, draw: int) -> str:
    """A number near `wanted` with as many decimals, off by 1 to 999 units of its last place (upwards when
    downwards would make a count negative)."""
    decimals = len(wanted.partition(".")[2])
    value, offset = int(wanted.replace(".", "")), 1 + draw % 999
    units = value - offset if draw // 999 % 2 and (value < 0 or offset <= value) else value + offset
    if not decimals:
        return str(units)
    sign, digits = ("-" if units < 0 else ""), str(abs(units)).rjust(decimals + 1, "0")
    return f"{sign}{digits[:-decimals]}.{digits[-decimals:]}"


def _made_up(wanted: str, seed: int, source: str, prompt: str) -> str:
    """Made-up words, as many as `wanted` has (up to four), written in its case."""
    words = []
    for i in range(min(4, len(wanted.split()) or 1)):
        draw = _draw(seed, source, prompt, f"word-{i}")
        word = "".join(_SYLLABLES[draw // len(_SYLLABLES) ** k % len(_SYLLABLES)] for k in range(2 + draw % 2))
        words.append(word)
    text = " ".join(words)
    if wanted.isupper():
        return text.upper()
    return text.title() if wanted[:1].isupper() else text


def _graded(behaviour: ModelBehaviour, request: SimRequest, seed: int) -> tuple[str, bool | None] | None:
    """The verdict on a judge request and whether it is right (None: no expected answer); None when the request
    is not a judge request."""
    last = request.texts[-1].rstrip() if request.texts else ""
    parts = _JUDGED.search(last) if last.endswith(VERDICT_ASK) else None
    if parts is None:
        return None
    prompt, given = parts.groups()
    expected = _EXPECT.search(prompt)
    if expected is None:
        return "PASS", None
    passes = answer_key(given) == answer_key(expected.group(1))
    right = _unit(seed, request.model, "\n".join(request.texts), "verdict") < _accuracy(behaviour, prompt)
    return ("PASS" if passes == right else "FAIL"), right


def _as_json(text: str) -> str:
    """`text` as a JSON answer: itself when it is JSON, else `{"answer": text}`."""
    try:
        msgspec.json.decode(text)
    except msgspec.DecodeError:
        return msgspec.json.encode({"answer": text}).decode()
    return text


def answer(
    behaviour: ModelBehaviour,
    request: SimRequest,
    seed: int,
    rng: random.Random,
    wrong_answer_agreement: float = WRONG_ANSWER_AGREEMENT,
) -> Answer:
    """The model's answer (the module's docstring): a judge's verdict, tool calls, structured JSON, JSON or text;
    the expected answer with the model's accuracy, else a wrong one; filler without a directive."""
    prompt = "\n".join(request.texts)
    if rng.random() < behaviour.errors.refused:
        return Answer(text="I can't help with that request.", output_tokens=8, finish="refusal")
    graded = _graded(behaviour, request, seed)
    if graded is not None:
        return _sized(request, *graded)
    expected = _EXPECT.search(prompt)
    wanted = expected.group(1) if expected else None
    correct = None
    if expected:
        correct = _unit(seed, request.model, prompt) < _accuracy(behaviour, prompt)
    calls = _tool_calls(behaviour, request, prompt, wanted, correct, rng)
    if calls:
        return _sized(request, msgspec.json.encode([msgspec.to_builtins(c) for c in calls]).decode(), correct, calls)
    if request.schema is not None:
        text, correct = _structured_text(behaviour, request.schema, wanted, correct, rng)
        return _sized(request, text, correct)
    if wanted is not None:
        text = wanted if correct else hedged(wrong_answer(wanted, seed, request.model, prompt, wrong_answer_agreement))
    else:
        count = max(1, int(behaviour.output_tokens * (0.75 + 0.5 * rng.random())))
        words = [FILLER[i % len(FILLER)] for i in range(count)]
        text = f"Simulated answer from {request.model}: " + " ".join(words)
    if request.json:
        text = _as_json(text) if rng.random() >= behaviour.json_failure else f"Sure! Here it is: {text}"
    return _sized(request, text, correct)


def _sized(request: SimRequest, text: str, correct: bool | None, calls: tuple[ToolUse, ...] = ()) -> Answer:
    """The answer of `text` (the JSON of `calls`, when it calls tools), cut at the request's max_tokens."""
    tokens = max(1, estimate_tokens(text))
    if tokens > request.max_tokens:
        return Answer(
            text=text[: request.max_tokens * 4],
            output_tokens=request.max_tokens,
            finish="length",
            correct=False if correct is not None else None,
        )
    if calls:
        return Answer(text="", output_tokens=tokens, finish="tool_calls", correct=correct, tool_calls=calls)
    return Answer(text=text, output_tokens=tokens, finish="stop", correct=correct)


def _target(schema: Any, wanted: str | None) -> Any:
    """The expected answer as a value valid under `schema`: ANSWER as JSON, or `{"answer": ANSWER}`; _NO_TARGET
    when neither is."""
    if wanted is None:
        return _NO_TARGET
    try:
        candidates = [msgspec.json.decode(wanted)]
    except msgspec.DecodeError:
        candidates = []
    for candidate in [*candidates, {"answer": wanted}]:
        if is_valid(schema, candidate):
            return candidate
    return _NO_TARGET


_NO_TARGET = object()


def _schema_answer(schema: Any, wanted: str | None, correct: bool | None, rng: random.Random) -> tuple[Any, Any]:
    """(a value valid under `schema`, whether it is the expected one): the expected value when the model is
    right, another valid value when it is wrong, a generated one (None: not judged) without a usable one."""
    target = _target(schema, wanted)
    if target is _NO_TARGET:
        return valid_value(schema, rng), None
    if correct:
        return target, True
    value = valid_value(schema, rng)
    for _ in range(4):  # a generated value may happen to be the expected one
        if value != target:
            break
        value = valid_value(schema, rng)
    return value, value == target


def _structured_text(
    behaviour: ModelBehaviour, schema: Any, wanted: str | None, correct: bool | None, rng: random.Random
) -> tuple[str, bool | None]:
    """A structured answer's text and whether it is right (False for a format failure with an expected answer)."""
    if rng.random() < behaviour.json_failure:
        failed = False if wanted is not None else None
        off = off_schema_value(schema, rng) if rng.random() < 0.5 else None
        if off is None:
            return f"Sure! Here it is: {valid_value(schema, rng)}", failed
        return msgspec.json.encode(off).decode(), failed
    value, right = _schema_answer(schema, wanted, correct, rng)
    return msgspec.json.encode(value).decode(), right


def _tool_calls(
    behaviour: ModelBehaviour,
    request: SimRequest,
    prompt: str,
    wanted: str | None,
    correct: bool | None,
    rng: random.Random,
) -> tuple[ToolUse, ...]:
    """The tool calls of the answer (none: it answers in text)."""
    if not request.tools or request.tool_choice == "none":
        return ()
    directives = [] if request.after_tool_result else _TOOL.findall(prompt)
    if request.tool_name:
        chosen = [(n, a) for n, a in directives if n == request.tool_name] or [(request.tool_name, "")]
    elif directives:
        chosen = directives
    elif request.tool_choice == "required":
        chosen = [(next(iter(request.tools)), "")]
    else:
        return ()
    return tuple(
        ToolUse(name=name, arguments=_arguments(behaviour, request.tools.get(name), given, wanted, correct, rng))
        for name, given in chosen
    )


def _arguments(
    behaviour: ModelBehaviour,
    parameters: Any,
    given: str,
    wanted: str | None,
    correct: bool | None,
    rng: random.Random,
) -> Any:
    """A call's arguments: off the parameters for the json_failure share, else those the directive gives, else
    a structured answer under the parameters."""
    schema = parameters if isinstance(parameters, dict) else {"type": "object"}
    if rng.random() < behaviour.json_failure:
        off = off_schema_value(schema, rng, must_be_object=True)
        if off is not None:
            return off
    if given:
        try:
            arguments = msgspec.json.decode(given)
        except msgspec.DecodeError:
            arguments = None
        if isinstance(arguments, dict):
            return arguments
    value, _ = _schema_answer(schema, wanted, correct, rng)
    return value if isinstance(value, dict) else {}
