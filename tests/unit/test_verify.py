"""Verification: whether an answer passes the job's checks (expected answer, regex, JSON, JSON Schema), and
whether it failed on its format (not JSON) or on its content (wrong)."""

import pytest

from worker.messages import Checks, Job
from worker.routing.verify import answer_body, has_answer_checks, verify, wants_json


def test_an_answer_without_checks_passes_whatever_it_says():
    assert verify(Job(id="j", prompt="q"), "anything at all") is None
    assert verify(Job(id="j", prompt="q"), "") is None


@pytest.mark.parametrize("answer", ["Paris", "paris.", "  PARIS!\n", '"Paris"'])
def test_the_expected_answer_is_compared_ignoring_case_surrounding_spaces_and_final_punctuation(answer):
    assert verify(Job(id="j", prompt="q", checks=Checks(expected="Paris")), answer) is None


def test_a_different_answer_fails_verification():
    error = verify(Job(id="j", prompt="q", checks=Checks(expected="Paris")), "Lyon")
    assert error is not None and error.kind == "verification_failed"
    assert error.message == "the answer differs from the expected answer"
    assert verify(Job(id="j", prompt="q", checks=Checks(expected="Paris")), "Paris, France") is not None


def test_the_answer_must_contain_a_match_of_the_regex():
    job = Job(id="j", prompt="q", checks=Checks(regex=r"\b\d{2}\b"))
    assert verify(job, "six times seven is 42, I think") is None
    error = verify(job, "forty-two")
    assert error is not None and error.kind == "verification_failed"
    assert error.message == r"the answer does not match '\\b\\d{2}\\b'"


def test_a_json_response_format_needs_an_answer_that_parses():
    job = Job(id="j", prompt="q", response_format="json")
    assert verify(job, '{"answer": 42}') is None
    error = verify(job, "the answer is 42")
    assert error is not None and error.kind == "format_failed", "not JSON: a format failure, not a wrong answer"
    assert error.message.startswith("the answer is not JSON: ")


def test_a_json_schema_needs_json_valid_under_it():
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    job = Job(id="j", prompt="q", checks=Checks(json_schema=schema))
    assert verify(job, '{"answer": 42}') is None
    wrong_type = verify(job, '{"answer": "42"}')
    assert wrong_type is not None and wrong_type.kind == "verification_failed"
    assert wrong_type.message == "the answer does not match the JSON Schema: '42' is not of type 'integer'"
    missing = verify(job, '{"other": 1}')
    assert missing is not None and missing.message.endswith("'answer' is a required property")
    not_json = verify(job, "42, as an integer")
    assert not_json is not None and not_json.message.startswith("the answer is not JSON: ")
    assert not_json.kind == "format_failed"


def test_every_check_must_pass():
    job = Job(id="j", prompt="q", checks=Checks(expected="42", regex=r"^\d+$"))
    assert verify(job, "42.") is not None, "the expected answer matches but the regex does not (the period)"
    assert verify(job, "42") is None


@pytest.mark.parametrize(
    "answer",
    [
        '```json\n{"answer": 42}\n```',
        '```\n{"answer": 42}\n```',
        '  ```JSON\n{"answer": 42}```\n',
        '```json\r\n{"answer": 42}\r\n```',
    ],
)
def test_an_answer_in_one_code_fence_is_judged_by_its_body(answer):
    schema = {"type": "object", "properties": {"answer": {"const": 42}}, "required": ["answer"]}
    assert verify(Job(id="j", prompt="q", response_format="json"), answer) is None
    assert verify(Job(id="j", prompt="q", checks=Checks(json_schema=schema)), answer) is None
    assert verify(Job(id="j", prompt="q", checks=Checks(regex=r"^\{")), answer) is None, "the body is what a regex sees"


def test_a_fenced_body_that_fails_is_judged_as_any_answer():
    schema = {"type": "object", "properties": {"answer": {"const": 42}}, "required": ["answer"]}
    wrong = verify(Job(id="j", prompt="q", checks=Checks(json_schema=schema)), '```json\n{"answer": 41}\n```')
    assert wrong is not None and wrong.kind == "verification_failed"
    broken = verify(Job(id="j", prompt="q", response_format="json"), '```json\n{"answer": \n```')
    assert broken is not None and broken.kind == "format_failed"
    assert verify(Job(id="j", prompt="q", checks=Checks(expected="Paris")), "```\nParis\n```") is None


@pytest.mark.parametrize(
    "answer",
    [
        'Here it is:\n```json\n{"answer": 42}\n```',
        '```json\n{"answer": 42}\n```\nAnything else?',
        '```json\n{"a": 1}\n```\n```json\n{"b": 2}\n```',
        '```json {"answer": 42}```',
    ],
)
def test_only_an_answer_that_is_one_fenced_block_is_unwrapped(answer):
    assert answer_body(answer) == answer
    error = verify(Job(id="j", prompt="q", response_format="json"), answer)
    assert error is not None and error.kind == "format_failed"


def test_which_jobs_want_json_and_which_can_find_an_answer_wrong():
    assert wants_json(Job(id="j", prompt="q", response_format="json"))
    assert wants_json(Job(id="j", prompt="q", checks=Checks(json_schema={"type": "object"})))
    assert not wants_json(Job(id="j", prompt="q", checks=Checks(expected="x")))
    assert not has_answer_checks(Job(id="j", prompt="q", response_format="json")), "only its format can fail"
    assert has_answer_checks(Job(id="j", prompt="q", checks=Checks(regex="x")))
    assert has_answer_checks(Job(id="j", prompt="q", checks=Checks(json_schema={"type": "object"})))
    assert not has_answer_checks(Job(id="j", prompt="q"))
