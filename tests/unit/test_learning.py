"""Learned success rates: verified outcomes move a model's rate for a task away from its prior."""

from tests.unit.helpers import run
from worker.execution.runner import JobRunner
from worker.messages import Checks, Job
from worker.providers import build_providers


def test_verified_outcomes_teach_the_rates(config):
    runner = JobRunner(config, build_providers(config).clients)
    before = runner.quality.rate("simple_qa", "gemini-2.5-flash")
    outcome = run(runner, Job(id="t", prompt="What is 2+2?", checks=Checks(expected="4")))
    # the echo answer is never "4": every model of the chain fails verification and learns it
    assert outcome.result.status == "failed" and outcome.result.error.kind == "verification_failed"
    assert runner.quality.rate("simple_qa", "gemini-2.5-flash") < before
    assert {(c.model, c.error_kind) for c in outcome.cost_events} >= {("gemini-2.5-flash", "verification_failed")}
