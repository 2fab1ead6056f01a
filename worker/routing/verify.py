"""Verification: whether an answer passes the job's checks. Pure."""

from __future__ import annotations

import re
from functools import lru_cache

import orjson

from worker.messages import ErrorInfo, Job

_EDGES = " \t\r\n.!?\"'`"


@lru_cache(maxsize=1024)
def _pattern(regex: str) -> re.Pattern[str]:
    return re.compile(regex)


@lru_cache(maxsize=256)
def _validator(schema_json: bytes):
    import jsonschema

    return jsonschema.Draft202012Validator(orjson.loads(schema_json))


def verify(job: Job, text: str) -> ErrorInfo | None:
    """Why `text` fails the job's checks (kind `verification_failed`), or None when it passes."""
    checks = job.checks
    parsed = None
    if job.response_format == "json" or (checks and checks.json_schema is not None):
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return ErrorInfo(kind="verification_failed", message=f"the answer is not JSON: {exc}")
    if checks is None:
        return None
    if checks.expected is not None and text.strip(_EDGES).casefold() != checks.expected.strip(_EDGES).casefold():
        return ErrorInfo(kind="verification_failed", message="the answer differs from the expected answer")
    if checks.regex is not None and not _pattern(checks.regex).search(text):
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
