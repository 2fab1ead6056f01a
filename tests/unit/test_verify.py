"""Verification: whether an answer passes the job's checks (expected answer, regex, JSON, JSON Schema), and
whether it failed on its format (not JSON) or on its content (wrong)."""

import pytest

from worker.messages import Checks, Job, JsonSchemaFormat, Tool, ToolCall, ToolChoiceName
from worker.routing.verify import answer_body, has_answer_checks, parsed_answer, verify, verify_tool_calls, wants_json


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


CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = Tool(name="weather", parameters=CITY)
CLOCK = Tool(name="clock")


def tool_job(**fields) -> Job:
    return Job(id="j", prompt="weather in Oslo?", tools=[WEATHER, CLOCK], **fields)


def call(name: str, **arguments) -> ToolCall:
    return ToolCall(id="c1", name=name, arguments=arguments)


def test_a_json_schema_answer_off_its_schema_is_a_format_failure_with_the_validators_message():
    job = Job(id="j", prompt="q", response_format=JsonSchemaFormat(name="place", schema=CITY, strict=True))
    assert verify(job, '{"city": "Oslo", "days": 3}') is None
    assert verify(job, '```json\n{"city": "Oslo"}\n```') is None, "judged by its fenced body"
    off = verify(job, '{"city": "Oslo", "days": 0}')
    assert off is not None and off.kind == "format_failed"
    assert off.message == "the answer is off the schema 'place': 0 is less than the minimum of 1"
    extra = verify(job, '{"city": "Oslo", "country": "NO"}')
    assert extra is not None and extra.kind == "format_failed" and "Additional properties" in extra.message
    not_json = verify(job, "Oslo")
    assert not_json is not None and not_json.message.startswith("the answer is not JSON: ")


def test_checks_still_judge_a_json_schema_answer_that_is_on_its_schema():
    job = Job(
        id="j",
        prompt="q",
        response_format=JsonSchemaFormat(name="place", schema=CITY),
        checks=Checks(regex='"Oslo"'),
    )
    wrong = verify(job, '{"city": "Bergen"}')
    assert wrong is not None and wrong.kind == "verification_failed"
    assert verify(job, '{"city": "Oslo"}') is None


@pytest.mark.parametrize(
    ("job", "calls", "error", "message"),
    [
        (tool_job(), [call("weather", city="Oslo")], "", None),
        (tool_job(), [call("weather", city="Oslo"), call("clock")], "", None),
        (tool_job(), [], "", None),
        (tool_job(), [call("stocks")], "", "the model called 'stocks', a tool the job does not offer"),
        (
            tool_job(),
            [call("weather", city=7)],
            "",
            "the arguments of the call of 'weather' are off its parameters: 7 is not of type 'string'",
        ),
        (
            tool_job(),
            [call("weather")],
            "",
            "the arguments of the call of 'weather' are off its parameters: 'city' is a required property",
        ),
        (tool_job(), [], "arguments of 'weather' are not a JSON object", "a tool call could not be read: arguments"),
        (tool_job(tool_choice="required"), [], "", 'the model called no tool although tool_choice is "required"'),
        (tool_job(tool_choice="required"), [call("clock")], "", None),
        (
            tool_job(tool_choice=ToolChoiceName(name="weather")),
            [call("clock")],
            "",
            "the model did not call 'weather', as tool_choice asks",
        ),
        (tool_job(tool_choice=ToolChoiceName(name="weather")), [call("weather", city="Oslo")], "", None),
        (tool_job(tool_choice="none"), [call("clock")], "", 'the model called a tool although tool_choice is "none"'),
        (Job(id="j", prompt="q"), [call("clock")], "", "the model called 'clock', a tool the job does not offer"),
    ],
)
def test_tool_calls_must_be_what_the_job_offers_and_allows(job, calls, error, message):
    failure = verify(job, "", calls, error)
    assert (failure.message.startswith(message) if failure else None) == (True if message else None)
    assert failure is None or failure.kind == "format_failed", "a tool call off its tool: a format failure"
    assert verify_tool_calls(job, calls, error) == failure


def test_a_tool_call_is_an_answer_whose_text_is_not_checked():
    """JSON and checks judge a text answer; an answer that calls a tool is judged by its calls."""
    job = tool_job(response_format="json", checks=Checks(expected="sunny"))
    assert verify(job, "", [call("weather", city="Oslo")]) is None
    assert verify(job, "Let me look that up.", [call("weather", city="Oslo")]) is None
    not_json = verify(job, "sunny")
    assert not_json is not None and not_json.kind == "format_failed", "a text answer: JSON asked for"
    assert verify(job, '"sunny"') is None


def test_the_parsed_answer_is_the_json_of_its_body():
    assert parsed_answer('```json\n{"a": [1, 2]}\n```') == {"a": [1, 2]}
    assert parsed_answer("42") == 42
    assert parsed_answer("not json") is None
