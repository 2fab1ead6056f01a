"""Intake: every message becomes a job or a dead letter with a reason, never an exception."""

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.messages import DeadLetter, Feedback, Job
from worker.pipeline.intake import Rejection, dead_letter, decode_feedback, decode_job, rejected_result

LIMIT = 1024


def test_a_valid_job_decodes():
    job = decode_job(b'{"id": "j1", "prompt": "hi", "tenant": "acme", "metadata": {"k": [1, 2]}}', LIMIT)
    assert isinstance(job, Job)
    assert job.id == "j1" and job.text() == "hi" and job.metadata == {"k": [1, 2]}


def test_chat_messages_decode():
    job = decode_job(
        b'{"id": "j2", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "why?"}]}',
        LIMIT,
    )
    assert isinstance(job, Job)
    assert job.text() == "be brief\nwhy?"


def check(value, kind, fragment):
    rejection = decode_job(value, LIMIT)
    assert isinstance(rejection, Rejection), rejection
    assert rejection.kind == kind
    assert fragment in rejection.message


def test_rejections_say_why():
    check(b"\xff\xfe not json", "not_json", "not JSON")
    check(b'{"prompt": "x"}', "invalid_job", "missing required field `id`")
    check(b'{"id": "", "prompt": "x"}', "invalid_job", "$.id")
    check(b'{"id": "a"}', "invalid_job", "exactly one of `messages` or `prompt`")
    check(b'{"id": "a", "prompt": "x", "messages": [{"role": "user", "content": "y"}]}', "invalid_job", "exactly one")
    check(b'{"id": "a", "messages": []}', "invalid_job", "must not be empty")
    check(b'{"id": "a", "prompt": "x", "presence_penalty": 1}', "invalid_job", "unknown field `presence_penalty`")
    check(b'{"id": "a", "messages": [{"role": "robot", "content": "y"}]}', "invalid_job", "$.messages[0].role")
    check(b"[]", "invalid_job", "Expected `object`")
    check(None, "invalid_job", "tombstone")
    check(b'{"id": "a", "prompt": "' + b"x" * LIMIT + b'"}', "too_large", f"limit of {LIMIT}")


def test_dead_letter_keeps_the_original_bytes_and_the_source():
    rejection = Rejection(kind="not_json", message="not JSON: boom")
    record, value = dead_letter(rejection, "llm.jobs", 3, 41, b"boom", LIMIT)
    assert value == b"boom"
    assert (record.source_topic, record.source_partition, record.source_offset, record.original_size) == (
        "llm.jobs",
        3,
        41,
        4,
    )
    assert not record.truncated
    assert DeadLetter.from_headers(record.to_headers()) == record


def test_dead_letter_of_an_oversized_message_is_cut_to_the_limit_and_says_so():
    record, value = dead_letter(
        Rejection(kind="too_large", message="big"), "llm.jobs", 0, 0, b"y" * (LIMIT + 10), LIMIT
    )
    assert len(value) == LIMIT and record.truncated and record.original_size == LIMIT + 10


@given(st.binary(max_size=300))
def test_random_bytes_never_raise(value):
    assert isinstance(decode_job(value, LIMIT), (Job, Rejection))


job_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=5), st.integers()),
        "prompt": st.one_of(st.text(max_size=20), st.none()),
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "bot"]), "content": st.text(max_size=5)}),
            max_size=2,
        ),
        "accuracy_floor": st.floats(allow_nan=False, min_value=-1, max_value=2),
        "max_output_tokens": st.integers(min_value=-5, max_value=5),
        "unknown": st.integers(),
    },
)


@given(job_like)
def test_near_valid_jobs_decode_or_are_rejected(raw):
    outcome = decode_job(msgspec.json.encode(raw), LIMIT)
    assert isinstance(outcome, (Job, Rejection))
    if isinstance(outcome, Job):
        assert outcome.id and (outcome.prompt is None) != (outcome.messages is None)


def test_blank_prompts_and_textless_messages_are_invalid_jobs():
    check(b'{"id": "a", "prompt": ""}', "invalid_job", "empty or blank")
    check(b'{"id": "a", "prompt": " \\n\\t "}', "invalid_job", "empty or blank")
    check(
        b'{"id": "a", "messages": [{"role": "system", "content": " "}, {"role": "user", "content": ""}]}',
        "invalid_job",
        "no text",
    )


def test_ids_are_printable_text():
    for bad in ("a\\tb", "a\\nb", "\\u001b[31mred", "a\\u009bb", "a\\u202eb", "zero\\u200bwidth"):
        check(b'{"id": "' + bad.encode() + b'", "prompt": "x"}', "invalid_job", "id")
    for good in ("job-1", "caf\\u00e9 42", "a b/c:d"):
        assert isinstance(decode_job(b'{"id": "' + good.encode() + b'", "prompt": "x"}', LIMIT), Job)


def test_a_rejected_message_with_a_readable_id_gets_a_failed_result_with_the_same_reason():
    too_large = decode_job(b'{"id": "big", "prompt": "' + b"x" * LIMIT + b'"}', LIMIT)
    invalid = decode_job(b'{"id": "v", "prompt": "x", "temperature": 3}', LIMIT)
    # A regex re.compile cannot take (OverflowError, not a validation error): rejected, and answered too.
    hostile = decode_job(b'{"id": "r", "prompt": "x", "checks": {"regex": "a{99999999999}"}}', LIMIT)
    for rejection, kind in ((too_large, "too_large"), (invalid, "invalid_job"), (hostile, "invalid_job")):
        assert isinstance(rejection, Rejection)
        result = rejected_result(rejection)
        assert result is not None and result.job_id == rejection.job_id and result.status == "failed"
        assert result.error is not None and (result.error.kind, result.error.message) == (kind, rejection.message)
        assert result.attempts == [] and result.cost_usd == 0


def test_a_rejected_message_without_a_readable_id_gets_no_result():
    for value in (
        b"not json",
        b'{"prompt": "x"}',
        b'{"id": 7, "prompt": "x"}',
        b'{"id": "a\\u202eb", "prompt": 1}',
        b"[]",
    ):
        rejection = decode_job(value, LIMIT)
        assert isinstance(rejection, Rejection) and rejection.job_id is None
        assert rejected_result(rejection) is None


def test_feedback_decodes_with_its_grade():
    right = decode_feedback(b'{"job_id": "j1", "correct": true, "source": "user"}')
    assert isinstance(right, Feedback) and right.grade == 1.0 and right.source == "user"
    wrong = decode_feedback(b'{"job_id": "j1", "correct": false}')
    assert isinstance(wrong, Feedback) and wrong.grade == 0.0
    graded = decode_feedback(b'{"job_id": "j1", "score": 0.25}')
    assert isinstance(graded, Feedback) and graded.grade == 0.25


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (None, "no value"),
        (b"not json", "JSON is malformed"),
        (b'"\xff"', "Expected `object`"),
        (b'{"job_id": "j1"}', "exactly one of `correct` or `score`"),
        (b'{"job_id": "j1", "correct": true, "score": 1}', "exactly one of `correct` or `score`"),
        (b'{"job_id": "j1", "score": 1.5}', "<= 1.0"),
        (b'{"job_id": "", "correct": true}', "length >= 1"),
        (b'{"job_id": "j1", "correct": true, "stars": 5}', "unknown field `stars`"),
        (b"[" * 100_000, "not valid feedback"),
    ],
)
def test_feedback_that_is_not_valid_is_rejected_as_invalid_feedback(value, fragment):
    rejection = decode_feedback(value)
    assert isinstance(rejection, Rejection) and rejection.kind == "invalid_feedback"
    assert fragment in rejection.message, rejection.message
