"""Verification: whether an answer passes the job's checks. Pure.

Two kinds of failure are told apart: `format_failed`, the answer is not the JSON the job asked for
(by `response_format: "json"` or a `json_schema` check), and `verification_failed`, a check found
the answer wrong. Only the second says something about the model's accuracy for the task type.
An answer that is one Markdown code fence (```json ... ``` or ``` ... ```) is judged by its body.
"""

from __future__ import annotations

import re
from functools import lru_cache

import orjson

from worker.messages import ErrorInfo, Job

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


def verify(job: Job, text: str) -> ErrorInfo | None:
    """Why `text` fails the job's checks (kind `format_failed` or `verification_failed`), or None when it
    passes."""
    checks = job.checks
    body = answer_body(text)
    parsed = None
    if wants_json(job):
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return ErrorInfo(kind="format_failed", message=f"the answer is not JSON: {exc}")
    if checks is None:
        return None
    if checks.expected is not None and body.strip(_EDGES).casefold() != checks.expected.strip(_EDGES).casefold():
        return ErrorInfo(kind="verification_failed", message="the answer differs from the expected answer")
    if checks.regex is not None and not _pattern(checks.regex).search(body):
        return ErrorInfo(kind="verification_failed", message=f"the answer does not match {checks.regex!r}")
    if checks.json_schema is not None:
        error = next(
            iter(_validator(orjson.dumps(checks.json_schema, option=orjson.OPT_SORT_KEYS)).iter_errors(parsed)), None
        )
        if error is not None:
            return ErrorInfo(
                kind="verification_failed", message=f"the answer does not match the JSON Schema: {error.message}"
            )
    return None
