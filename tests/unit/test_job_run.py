"""A job's state while it runs: its attempts' numbers and reasons, its errors, its result."""

import time
from datetime import UTC, datetime

import msgspec
import pytest

from worker.execution.job_run import JobRun
from worker.messages import ChatMessage, ErrorInfo, Job, Tool, ToolCall
from worker.providers.base import Completion

REFUSED = ErrorInfo(kind="refused", message="the model refused")
SERVER = ErrorInfo(kind="server", message="HTTP 500")


def job_run(job: Job | None = None, **fields) -> JobRun:
    return JobRun(
        job=job or Job(id="j", prompt="q", tenant="acme"),
        task="simple_qa",
        messages=[ChatMessage(role="user", content="q")],
        text_tokens=1,
        prompt_tokens=5,
        started=time.monotonic(),
        span=None,
        spans=None,
        **fields,
    )


def answer(input_tokens: int, output_tokens: int) -> Completion:
    return Completion(text="a", finish_reason="stop", input_tokens=input_tokens, output_tokens=output_tokens)


def test_attempts_are_numbered_in_order_and_only_the_first_goes_where_the_job_was_rerouted():
    run = job_run(rerouted_from="gemini-2.5-flash")
    first = run.attempt("llama", "llama-4-70b", SERVER, latency_ms=12.0, waited_ms=3.0)
    run.attempts.append(first)
    second = run.attempt("llama", "llama-4-70b", None, completion=answer(7, 3), cost_usd=0.5, latency_ms=9.0)
    assert (first.number, first.outcome, first.rerouted_from, first.rate_limit_wait_ms) == (
        1,
        "failed",
        "gemini-2.5-flash",
        3.0,
    )
    assert (first.input_tokens, first.output_tokens, first.cost_usd) == (0, 0, 0.0), "no answer: nothing billed"
    assert (second.number, second.outcome, second.rerouted_from, second.error) == (2, "ok", None, None)
    assert (second.input_tokens, second.output_tokens, second.cost_usd) == (7, 3, 0.5)


def test_each_attempt_says_why_it_is_made():
    run = job_run()
    assert run.reason("gemini-2.5-flash") == ("planned", None)
    run.attempts.append(run.attempt("gemini", "gemini-2.5-flash", SERVER))
    assert run.reason("gemini-2.5-flash") == ("retry", "server")
    run.attempts.append(run.attempt("gemini", "gemini-2.5-flash", REFUSED, completion=answer(5, 1)))
    assert run.reason("llama-4-70b") == ("escalation", "refused")
    rerouted = job_run(rerouted_from="gemini-2.5-flash")
    assert rerouted.reason("llama-4-70b") == ("rerouted", None)
    rerouted.attempts.append(rerouted.attempt("llama", "llama-4-70b", SERVER))
    assert rerouted.reason("llama-4-70b") == ("retry", "server")


def test_a_result_sums_its_attempts_and_names_the_model_of_an_answer_only():
    run = job_run()
    for error, completion, cost in ((REFUSED, answer(10, 2), 0.25), (None, answer(20, 4), 0.5)):
        attempt = run.attempt("gemini", "gemini-2.5-flash", error, completion=completion, cost_usd=cost)
        run.attempts.append(attempt)
        run.cost_events.append(run.cost_event(attempt))
    answered_at = datetime(2026, 1, 1, tzinfo=UTC)  # long before now: which time ends the job shows
    run.cost_events[-1] = msgspec.structs.replace(run.cost_events[-1], ts=answered_at)
    ok = run.result("a", None)
    assert (ok.status, ok.model, ok.provider, ok.task, ok.tenant) == (
        "ok",
        "gemini-2.5-flash",
        "gemini",
        "simple_qa",
        "acme",
    )
    assert (ok.usage.input_tokens, ok.usage.output_tokens, ok.cost_usd) == (30, 6, pytest.approx(0.75))
    assert ok.finished_at == answered_at, "an answer ends the job with the attempt that gave it"
    assert [(e.attempt, e.outcome, e.error_kind, e.tenant) for e in run.cost_events] == [
        (1, "failed", "refused", "acme"),
        (2, "ok", None, "acme"),
    ]
    failed = run.result(None, REFUSED)
    assert (failed.status, failed.model, failed.provider, failed.error) == ("failed", None, None, REFUSED)
    assert failed.finished_at > answered_at, "a failure ends the job now"


def test_why_a_job_failed_names_its_attempts_and_the_last_failure():
    run = job_run()
    assert run.failure() == ErrorInfo(
        kind="no_route", message="all 0 attempt(s) failed; last: no model of the plan could be tried"
    )
    assert run.deadline_passed(0.5) == ErrorInfo(kind="deadline_exceeded", message="the job deadline of 0.5 s passed")
    run.attempts.append(run.attempt("gemini", "gemini-2.5-flash", SERVER))
    run.last_error = SERVER
    assert run.failure() == ErrorInfo(kind="server", message="all 1 attempt(s) failed; last: HTTP 500")
    assert run.deadline_passed(30).message == "the job deadline of 30 s passed after 1 attempt(s); last: HTTP 500"


def answered(run: JobRun, completion: Completion):
    """The result of `run` answered by `completion` on its first attempt."""
    attempt = run.attempt("openai", "gpt-4o", None, completion=completion, cost_usd=0.1)
    run.attempts.append(attempt)
    run.cost_events.append(run.cost_event(attempt))
    run.answer = completion
    return run.result(completion.text, None)


def test_a_result_carries_the_answers_finish_reason_tool_calls_and_json_value():
    plain = answered(job_run(), answer(5, 1))
    assert (plain.finish_reason, plain.parsed, plain.tool_calls) == ("stop", None, None)
    fenced = Completion(text='```json\n{"a": [1, 2]}\n```', finish_reason="stop", input_tokens=5, output_tokens=9)
    as_json = answered(job_run(Job(id="j", prompt="q", response_format="json")), fenced)
    assert as_json.parsed == {"a": [1, 2]} and as_json.output == fenced.text, "parsed from the body, output as written"
    assert answered(job_run(), fenced).parsed is None, "no JSON asked for: no parsed value"
    calls = (ToolCall(id="c1", name="clock", arguments={"zone": "UTC"}),)
    called = Completion(text="", finish_reason="tool_calls", input_tokens=5, output_tokens=3, tool_calls=calls)
    with_tools = answered(job_run(Job(id="j", prompt="time?", tools=[Tool(name="clock")])), called)
    assert (with_tools.finish_reason, with_tools.tool_calls, with_tools.parsed) == ("tool_calls", list(calls), None)
    encoded = msgspec.json.decode(msgspec.json.encode(with_tools))
    assert encoded["tool_calls"] == [{"id": "c1", "name": "clock", "arguments": {"zone": "UTC"}}]
    assert "parsed" not in encoded


def test_a_finish_reason_no_wire_api_documents_is_left_out_and_a_failure_has_none():
    other = answered(job_run(), Completion(text="a", finish_reason="other", input_tokens=1, output_tokens=1))
    assert other.finish_reason is None and "finish_reason" not in msgspec.json.decode(msgspec.json.encode(other))
    run = job_run()
    run.answer = answer(5, 1)
    failed = run.result(None, REFUSED)
    assert (failed.finish_reason, failed.parsed, failed.tool_calls) == (None, None, None)
