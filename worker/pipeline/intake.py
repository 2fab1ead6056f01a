"""Intake: raw Kafka bytes to a typed Job or Feedback, or the reason they go to the dead-letter topic."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from worker.messages import DeadLetter, DeadLetterKind, Feedback, Job, JobId, Result

_decoder = msgspec.json.Decoder(Job)
_feedback_decoder = msgspec.json.Decoder(Feedback)


class _IdOnly(msgspec.Struct):
    """What a message that is not a valid job may still tell: a valid id, to answer on the results topic."""

    id: JobId


_id_decoder = msgspec.json.Decoder(_IdOnly)


class Rejection(msgspec.Struct, frozen=True, kw_only=True):
    """Why a message is not a job; `job_id` when its id could still be read (it then gets a failed result)."""

    kind: DeadLetterKind
    message: str
    job_id: str | None = None


def decode_job(value: bytes | None, max_bytes: int) -> Job | Rejection:
    """Decode one message value; never raises."""
    if value is None:
        return Rejection(kind="invalid_job", message="the message has no value (a tombstone), expected a JSON job")
    if len(value) > max_bytes:
        message = f"the message is {len(value)} bytes, over the limit of {max_bytes}"
        return Rejection(kind="too_large", message=message, job_id=_readable_id(value))
    try:
        return _decoder.decode(value)
    except msgspec.ValidationError as exc:
        return Rejection(kind="invalid_job", message=f"not a valid job: {exc}", job_id=_readable_id(value))
    except msgspec.DecodeError as exc:
        return Rejection(kind="not_json", message=f"not JSON: {exc}")
    except UnicodeDecodeError as exc:  # msgspec raises it for invalid UTF-8 inside a string
        return Rejection(kind="not_json", message=f"not JSON: invalid UTF-8: {exc}")
    except RecursionError:  # nested deeper than the parser, re.compile or the JSON Schema check can go
        return Rejection(kind="invalid_job", message="not a valid job: nested too deeply", job_id=_readable_id(value))
    except Exception as exc:  # a field's own check failed otherwise (re.compile's OverflowError...): never a crash
        message = f"not a valid job: {type(exc).__name__}: {exc}"
        return Rejection(kind="invalid_job", message=message, job_id=_readable_id(value))


def decode_feedback(value: bytes | None) -> Feedback | Rejection:
    """Decode one feedback message's value; never raises. Whatever is wrong with it, its kind is `invalid_feedback`."""
    if value is None:
        return Rejection(kind="invalid_feedback", message="the message has no value (a tombstone), expected feedback")
    try:
        return _feedback_decoder.decode(value)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        return Rejection(kind="invalid_feedback", message=f"not valid feedback: {exc}")


def _readable_id(value: bytes) -> str | None:
    """The message's id when it is a JSON object with a valid `id`, whatever else is wrong with it."""
    try:
        job_id = _id_decoder.decode(value).id
    except Exception:  # any failure only means there is no id to answer to
        return None
    return job_id if job_id.isprintable() else None


def rejected_result(rejection: Rejection) -> Result | None:
    """The failed result a rejected message with a readable id gets, so whoever waits for it is answered."""
    if rejection.job_id is None:
        return None
    return Result.failed(job_id=rejection.job_id, kind=rejection.kind, message=rejection.message)


def dead_letter(
    rejection: Rejection, topic: str, partition: int, offset: int, value: bytes | None, limit: int
) -> tuple[DeadLetter, bytes]:
    """The dead-letter record and the value to send: the original bytes, cut to `limit` if larger."""
    original = value or b""
    truncated = len(original) > limit
    record = DeadLetter(
        error_kind=rejection.kind,
        error=rejection.message,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        original_size=len(original),
        failed_at=datetime.now(UTC),
        truncated=truncated,
    )
    return record, original[:limit] if truncated else original
