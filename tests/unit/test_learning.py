"""Learned success rates: verified outcomes move a model's rate for a task away from its prior; answers to JSON
jobs move its JSON format reliability."""

import msgspec
import pytest

from tests.unit.helpers import run
from worker.execution.runner import JobRunner
from worker.messages import Checks, Job
from worker.providers import build_providers
from worker.routing.learning import FORMAT_PRIOR, JSON_FORMAT, QualityModel


def test_verified_outcomes_teach_the_rates(config):
    runner = JobRunner(config, build_providers(config).clients)
    before = runner.quality.rate("simple_qa", "gemini-2.5-flash")
    outcome = run(runner, Job(id="t", prompt="What is 2+2?", checks=Checks(expected="4")))
    # the echo answer is never "4": every model of the chain fails verification and learns it
    assert outcome.result.status == "failed" and outcome.result.error.kind == "verification_failed"
    assert runner.quality.rate("simple_qa", "gemini-2.5-flash") < before
    assert {(c.model, c.error_kind) for c in outcome.cost_events} >= {("gemini-2.5-flash", "verification_failed")}


def test_the_json_format_reliability_is_learned_per_model_and_kept_on_the_state_topic(config):
    quality = QualityModel(config)
    assert quality.json_format.rate("gpt-4o") == FORMAT_PRIOR
    for parsed in (False, False, True, False):
        quality.record_format("gpt-4o", parsed)
    rate = quality.json_format.rate("gpt-4o")
    assert rate < FORMAT_PRIOR
    assert quality.json_rate("simple_qa", "gpt-4o") == pytest.approx(quality.rate("simple_qa", "gpt-4o") * rate)
    assert quality.snapshot() == {}, "the format is not the accuracy of any task type"
    assert quality.json_format.snapshot() == {"gpt-4o": round(rate, 4)}

    changes = quality.take_changes()
    assert [(s.task, s.model) for s in changes] == [(JSON_FORMAT, "gpt-4o")]
    assert quality.take_changes() == []
    restored = QualityModel(config)
    restored.restore(changes)
    assert restored.json_format.rate("gpt-4o") == rate and restored.snapshot() == {}


def test_a_poor_json_format_moves_json_jobs_elsewhere_and_plain_jobs_stay(config):
    runner = JobRunner(config, build_providers(config).clients)
    json_job = Job(id="j", prompt="Name a colour, as JSON.", response_format="json", task="simple_qa")
    plain_job = Job(id="p", prompt="Name a colour.", task="simple_qa")
    assert run(runner, json_job).result.attempts[0].model == "gemini-2.5-flash"
    assert run(runner, plain_job).result.attempts[0].model == "gemini-2.5-flash"
    for _ in range(20):
        runner.quality.record_format("gemini-2.5-flash", False)
    json_result = run(runner, msgspec.structs.replace(json_job, id="j2")).result
    assert json_result.status == "ok" and json_result.attempts[0].model != "gemini-2.5-flash"
    assert run(runner, msgspec.structs.replace(plain_job, id="p2")).result.model == "gemini-2.5-flash"
