"""`llm-router eval`'s scoring: verified or blind, the jobs some policy could not route left out of every
policy's figures, and the feedback sample."""

from datetime import UTC, datetime

import pytest

from worker.cli.eval_figures import figures, is_correct, unroutable
from worker.cli.evaluate import feedback_sample, with_directives
from worker.messages import Checks, Job, Result, Usage

JOBS = [Job(id=f"j{i}", prompt=f"{i} plus 1?", checks=Checks(expected=str(i + 1))) for i in range(4)]


def ok(job_id, output, cost=0.01):
    return Result(
        job_id=job_id,
        status="ok",
        attempts=[],
        usage=Usage(),
        cost_usd=cost,
        latency_ms=10.0,
        finished_at=datetime.now(UTC),
        output=output,
        via="sync",
    )


def test_verified_a_result_is_correct_when_ok_and_blind_when_its_answer_also_passes_the_checks():
    right, wrong = ok("j0", "1."), ok("j0", "7")
    failed = Result.failed(job_id="j0", kind="verification_failed", message="wrong")
    assert is_correct(JOBS[0], right, blind=False) and is_correct(JOBS[0], wrong, blind=False)
    assert is_correct(JOBS[0], right, blind=True) and not is_correct(JOBS[0], wrong, blind=True)
    assert not is_correct(JOBS[0], failed, blind=False) and not is_correct(JOBS[0], failed, blind=True)


def test_a_job_one_policy_could_not_route_is_left_out_of_every_policys_figures():
    routed = {job.id: ok(job.id, str(int(job.id[1:]) + 1)) for job in JOBS}
    no_route = dict(routed, j3=Result.failed(job_id="j3", kind="no_route", message="no model fits"))
    left_out = unroutable([routed, no_route])
    assert left_out == {"j3"}
    for results in (routed, no_route):
        figure = figures("p", JOBS, results, 0.04, blind=True, feedback_share=0.5, left_out=left_out, feedback_sent=2)
        assert (figure.jobs, figure.correct, figure.unroutable, figure.feedback_sent) == (3, 3, 1, 2)
        assert figure.cost_usd == pytest.approx(0.03), "the figures count the routable jobs"
    assert (
        figures("p", JOBS, routed, 0.04, blind=True, feedback_share=0, left_out=left_out, feedback_sent=0).bill_gap_usd
        == 0
    )


def test_blind_a_job_goes_without_its_checks_and_its_prompt_carries_the_directives():
    sent = with_directives(JOBS[1], "simple_qa", blind=True)
    assert sent.checks is None and sent.prompt == "1 plus 1?\n[[expect: 2]] [[task: simple_qa]]"
    assert with_directives(JOBS[1], "simple_qa").checks == JOBS[1].checks


def test_the_feedback_sample_is_a_seeded_share_of_the_jobs():
    jobs = [Job(id=f"j{i}", prompt="x", checks=Checks(expected="y")) for i in range(200)]
    sample = feedback_sample(jobs, 0.1, seed=7)
    assert len(sample) == 20 and sample == feedback_sample(list(reversed(jobs)), 0.1, seed=7)
    assert sample != feedback_sample(jobs, 0.1, seed=8) and feedback_sample(jobs, 0.0, seed=7) == frozenset()
