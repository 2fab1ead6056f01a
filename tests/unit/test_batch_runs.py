"""Jobs that can wait: batch plans priced at the discount, a job parked for a batch, and resumed with its line
(an answer that passes, one that fails, none) on the echo provider (no Kafka)."""

import asyncio
import time

import pytest
from msgspec.structs import replace

from worker.execution.runner import JobOutcome, JobRunner, Parked
from worker.messages import Checks, Job
from worker.providers import build_providers
from worker.providers.base import BatchLine, Completion
from worker.routing.plan import make_plan

DISCOUNTS = {"openai": 0.5, "anthropic": 0.5, "gemini": 0.5}  # the llama server has no batch API
DAY = 86_400.0


def job(i: int = 0, expected: str = "4") -> Job:
    return Job(id=f"b{i}", prompt="What is 2+2?", task="simple_qa", checks=Checks(expected=expected), tenant="t")


def echoed(i: int = 0) -> Job:
    """A job the echo provider answers right: its answer repeats the prompt."""
    return Job(id=f"b{i}", prompt="What is 2+2?", task="simple_qa", checks=Checks(regex=r"What is 2\+2"), tenant="t")


def runner(config) -> JobRunner:
    return JobRunner(config, build_providers(config).clients, batch_discounts=DISCOUNTS)


def park(runner: JobRunner, j: Job, due: float) -> Parked:
    outcome = asyncio.run(runner.run(j, due=due))
    assert isinstance(outcome, Parked), outcome
    return outcome


def answer(text: str) -> Completion:
    return Completion(text=text, finish_reason="stop", input_tokens=1000, output_tokens=200)


def test_a_batch_plan_prices_batch_models_at_the_discount_and_wins_when_it_is_cheaper(config):
    discount = {m: 0.5 for m, c in config.models.items() if c.provider in DISCOUNTS}
    synchronous = make_plan(job(), "simple_qa", config, 50)
    batched = make_plan(job(), "simple_qa", config, 50, batch_discount=discount)
    assert synchronous.batch == ()
    assert batched.batch and set(batched.batch) <= set(discount) and set(batched.batch) <= set(batched.models)
    assert batched.expected_cost_usd < synchronous.expected_cost_usd
    assert batched.alternates == ()  # a batch plan is not reordered for want of synchronous capacity


def test_a_job_whose_deadline_leaves_room_parks_and_one_due_sooner_runs_synchronously(config):
    r = runner(config)
    parked = park(r, job(), time.time() + DAY).job
    assert parked.model in parked.batch_models and parked.batch_id is None and parked.attempts == []
    assert parked.models[parked.step] == parked.model and parked.task == "simple_qa"
    soon = asyncio.run(r.run(job(1), due=time.time() + config.batch.min_window_s / 2))
    assert isinstance(soon, JobOutcome) and soon.result.via == "sync"
    assert isinstance(asyncio.run(r.run(job(2))), JobOutcome)  # no deadline: as soon as possible


def test_a_batch_answer_that_passes_ends_the_job_at_the_batch_price(config):
    r = runner(config)
    parked = park(r, job(), time.time() + DAY).job
    parked = replace(parked, batch_id="batch_1")
    outcome = asyncio.run(r.resume(parked, BatchLine(custom_id="b0", completion=answer("4"))))
    assert isinstance(outcome, JobOutcome)
    result = outcome.result
    assert result.status == "ok" and result.via == "batch" and result.batch_id == "batch_1"
    assert result.model == parked.model and result.output == "4"
    [attempt] = result.attempts
    full = r.batch_cost(parked.model, answer("4")) / 0.5
    assert attempt.via == "batch" and attempt.cost_usd == pytest.approx(full * 0.5)
    [event] = outcome.cost_events
    assert (event.via, event.batch_id, event.cost_usd) == ("batch", "batch_1", attempt.cost_usd)


def test_a_batch_answer_that_fails_goes_on_to_the_next_model_by_batch_while_the_deadline_allows(config):
    r = runner(config)
    chain = ["gemini-2.5-flash", "gpt-4o", "llama-4-70b"]  # the llama server has no batch API
    parked = replace(park(r, job(), time.time() + DAY).job, models=chain, batch_models=chain[:2], step=0)
    outcome = asyncio.run(
        r.resume(replace(parked, batch_id="batch_3"), BatchLine(custom_id="b0", completion=answer("5")))
    )
    assert isinstance(outcome, Parked)
    again = outcome.job
    assert again.step == 1 and again.model == "gpt-4o" and again.batch_id is None
    assert [(a.via, a.error.kind) for a in again.attempts] == [("batch", "verification_failed")]
    assert [(e.via, e.batch_id) for e in outcome.cost_events] == [("batch", "batch_3")]
    # Its deadline too near for another batch: the next model is asked synchronously.
    near = replace(again, due=time.time() + config.batch.min_window_s / 2, batch_id="batch_4")
    outcome = asyncio.run(r.resume(near, BatchLine(custom_id="b0", completion=answer("6"))))
    assert isinstance(outcome, JobOutcome)
    assert [(a.via, a.model) for a in outcome.result.attempts] == [
        ("batch", "gemini-2.5-flash"),
        ("batch", "gpt-4o"),
        ("sync", "llama-4-70b"),
    ]


def test_a_line_without_an_answer_or_a_late_batch_asks_the_same_model_synchronously(config):
    r = runner(config)
    parked = park(r, echoed(), time.time() + DAY).job
    submitted = replace(parked, batch_id="batch_2")
    expired = BatchLine(custom_id="b0", error_kind="batch_expired", error_message="not reached in 24h")
    for line, kind in ((expired, "batch_expired"), (None, "batch_late")):
        outcome = asyncio.run(r.resume(submitted, line))
        assert isinstance(outcome, JobOutcome), outcome
        first, second = outcome.result.attempts
        assert (first.via, first.error.kind, first.cost_usd, first.model) == ("batch", kind, 0.0, parked.model)
        assert (second.via, second.model) == ("sync", parked.model)
    # A queued job given up before its batch was submitted was never asked: no batch attempt.
    outcome = asyncio.run(r.resume(parked, None))
    assert isinstance(outcome, JobOutcome) and [a.via for a in outcome.result.attempts] == ["sync"]
