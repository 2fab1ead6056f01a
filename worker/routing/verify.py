"""Verification: whether an answer passes the job's checks. Pure.

Two kinds of failure are told apart: `format_failed`, the answer is not the JSON the job asked for
(by `response_format: "json"`, off its `response_format` json_schema, or not JSON under a `json_schema`
check), or its tool calls are not what the job allows (a tool not offered, arguments off the tool's
`parameters` or unreadable, a call missing that `tool_choice` requires, a call that "none" forbids); and
`verification_failed`, a check found the answer wrong. Only the second says something about the model's
accuracy for the task type. An answer that is one Markdown code fence (```json ... ``` or ``` ... ```)
is judged by its body. An answer with tool calls is judged by its calls: its text, often a preamble or
empty, is not checked (JSON and checks apply to a text answer).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import orjson

from worker.messages import ErrorInfo, Job, ToolCall, ToolChoiceName

_EDGES = " \t\r\n.!?\"'`"
# The whole answer one fenced block: an opening fence with an optional info string, the body, a closing fence.
_FENCE = re.compile(r"\A\s*```[^\n`]*\n(.*?)\n?[ \t]*```\s*\Z", re.S)


@lru_cache(maxsize=1024)
def _pattern(regex: str) -> re.Pattern[str]:
    return re.compile(regex)


@lru_cache(maxsize=256)
def _validator(schema_json: bytes):
    import jsonschema

    return jsonschema.Draft202012Validator(orjson.loads(schema_json))


def text_key(text: str) -> str:
    """What a text answer is compared by: without case, surrounding space and final punctuation."""
    return text.strip(_EDGES).casefold()


def answer_body(text: str) -> str:
    """What is verified of an answer: the body of its code fence when the answer is one fenced block,
    else the answer itself."""
    if "```" not in text:
        return text
    fenced = _FENCE.match(text)
    if fenced is None or "```" in fenced.group(1):  # not fenced, or more than one block
        return text
    return fenced.group(1)


def wants_json(job: Job) -> bool:
    """Whether the job asks for a JSON answer (by its response format or a JSON Schema check)."""
    return job.response_format != "text" or (job.checks is not None and job.checks.json_schema is not None)


def has_answer_checks(job: Job) -> bool:
    """Whether the job can tell a wrong answer from a right one (an expected answer, a regex or a JSON
    Schema), beyond its answer's format."""
    checks = job.checks
    return checks is not None and (
        checks.expected is not None or checks.regex is not None or checks.json_schema is not None
    )


def _schema_error(schema: dict[str, Any], value: Any) -> str | None:
    """The first way `value` is off `schema` (the validator's message), or None when it is valid."""
    error = next(iter(_validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)).iter_errors(value)), None)
    return None if error is None else error.message


def parsed_answer(text: str) -> Any:
    """The JSON value of an answer (of its fenced body, `answer_body`), or None when it is not JSON."""
    try:
        return orjson.loads(answer_body(text))
    except orjson.JSONDecodeError:
        return None


def verify_tool_calls(job: Job, tool_calls: Sequence[ToolCall], tool_call_error: str = "") -> ErrorInfo | None:
    """Why the answer's tool calls are not what the job allows (kind `format_failed`), or None: a call the
    adapter could not read (`tool_call_error`), a call when `tool_choice` is "none", no call (or none of the
    named tool) when it is "required" or names one, a call of a tool not offered, arguments off the tool's
    `parameters`."""
    if tool_call_error:
        return ErrorInfo(kind="format_failed", message=f"a tool call could not be read: {tool_call_error}")
    choice = job.tool_choice
    if tool_calls and choice == "none":
        return ErrorInfo(kind="format_failed", message='the model called a tool although tool_choice is "none"')
    if not tool_calls and choice == "required":
        return ErrorInfo(kind="format_failed", message='the model called no tool although tool_choice is "required"')
    if isinstance(choice, ToolChoiceName) and all(call.name != choice.name for call in tool_calls):
        return ErrorInfo(kind="format_failed", message=f"the model did not call {choice.name!r}, as tool_choice asks")
    tools = {tool.name: tool for tool in job.tools or ()}
    for call in tool_calls:
        tool = tools.get(call.name)
        if tool is None:
            return ErrorInfo(
                kind="format_failed", message=f"the model called {call.name!r}, a tool the job does not offer"
            )
        off = _schema_error(tool.parameters, call.arguments)
        if off is not None:
            return ErrorInfo(
                kind="format_failed",
                message=f"the arguments of the call of {call.name!r} are off its parameters: {off}",
            )
    return None


def verify(job: Job, text: str, tool_calls: Sequence[ToolCall] = (), tool_call_error: str = "") -> ErrorInfo | None:
    """Why the answer (`text`, and the `tool_calls` the model made) fails the job's format or checks (kind
    `format_failed` or `verification_failed`), or None when it passes."""
    if job.tools or tool_calls or tool_call_error:
        error = verify_tool_calls(job, tool_calls, tool_call_error)
        if error is not None or tool_calls:  # a tool call is the answer: the text is not checked
            return error
    checks = job.checks
    body = answer_body(text)
    parsed = None
    if wants_json(job):
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return ErrorInfo(kind="format_failed", message=f"the answer is not JSON: {exc}")
        schema = job.schema
        if schema is not None:
            off = _schema_error(schema.schema, parsed)
            if off is not None:
                return ErrorInfo(kind="format_failed", message=f"the answer is off the schema {schema.name!r}: {off}")
    if checks is None:
        return None
    if checks.expected is not None and text_key(body) != text_key(checks.expected):
        return ErrorInfo(kind="verification_failed", message="the answer differs from the expected answer")
    if checks.regex is not None and not _pattern(checks.regex).search(body):
        return ErrorInfo(kind="verification_failed", message=f"the answer does not match {checks.regex!r}")
    if checks.json_schema is not None:
        off = _schema_error(checks.json_schema, parsed)
        if off is not None:
            return ErrorInfo(kind="verification_failed", message=f"the answer does not match the JSON Schema: {off}")
    return None
