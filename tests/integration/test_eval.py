"""`llm-router eval` on the shipped workload: the router beats both baselines at no loss of accuracy, verified
(the worker checks the answers) and blind (the jobs go without their checks; the eval scores the answers), on the
shipped simulator and on one whose accuracies differ from the router's priors."""

import os
import subprocess
import sys

import orjson
import pytest

from tests.integration.helpers import REPO

# The routing policies' figures; Kafka only carries the jobs.
pytestmark = pytest.mark.one_broker


KEYS = {
    "policy",
    "jobs",
    "correct",
    "accuracy",
    "cost_usd",
    "cost_per_1k_jobs_usd",
    "cost_per_correct_usd",
    "p50_ms",
    "p99_ms",
    "attempts_per_job",
    "batch_attempts",
    "sync_attempts",
    "failed",
    "billed_usd",
    "bill_gap_usd",
    "blind",
    "feedback_share",
    "unroutable",
    "feedback_sent",
}


def run_eval(bootstrap: str, *options: str) -> dict[str, dict]:
    """`llm-router eval bench/workload.jsonl --json` with `options`: each policy's figures."""
    out = subprocess.run(
        [sys.executable, "-m", "worker", "eval", "bench/workload.jsonl", "--json", "--latency-scale", "0.2", *options],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return {f["policy"]: f for f in map(orjson.loads, out.stdout.splitlines())}


def test_router_beats_always_gpt4o_and_the_reference_routes_and_by_batch_halves_its_cost(bootstrap, report):
    # Every job may wait a day: router-batch runs beside the others, its batches ending after two seconds.
    figures = run_eval(bootstrap, "--complete-within-s", "86400", "--batch-latency-s", "2")
    gpt, reference, router = figures["always-gpt-4o"], figures["reference"], figures["router"]
    batch = figures["router-batch"]
    for f in figures.values():
        assert set(f) == KEYS and f["blind"] is False and f["feedback_sent"] == 0
        assert f["jobs"] == 600 and f["unroutable"] == 0
    vs_gpt = 1 - router["cost_per_correct_usd"] / gpt["cost_per_correct_usd"]
    vs_reference = 1 - router["cost_per_correct_usd"] / reference["cost_per_correct_usd"]
    report(
        f"eval on bench/workload.jsonl: router accuracy {router['accuracy']:.3f} "
        f"(always-gpt-4o {gpt['accuracy']:.3f}, reference {reference['accuracy']:.3f}); "
        f"cost per correct {vs_gpt:.1%} below always-gpt-4o, {vs_reference:.1%} below the reference routes"
    )
    assert vs_gpt >= 0.60
    assert vs_reference >= 0.20
    assert router["accuracy"] >= gpt["accuracy"] - 0.01
    for f in (gpt, reference, router, batch):  # each policy's costs are what the simulator billed
        assert f["bill_gap_usd"] <= 0.000001 * f["jobs"] / 1000
    assert router["batch_attempts"] == 0 and router["sync_attempts"] >= router["jobs"]
    by_batch = 1 - batch["cost_per_correct_usd"] / router["cost_per_correct_usd"]
    report(
        f"eval, every job within a day: router-batch {by_batch:.1%} below router per correct answer, accuracy "
        f"{batch['accuracy']:.3f} vs {router['accuracy']:.3f}; attempts sync {batch['sync_attempts']}, "
        f"batch {batch['batch_attempts']}"
    )
    assert batch["sync_attempts"] == 0 and batch["batch_attempts"] >= batch["jobs"]
    assert by_batch >= 0.45 and batch["accuracy"] >= router["accuracy"] - 0.005


@pytest.fixture(scope="module", params=["config/simulator.toml", "config/simulator-shifted.toml"])
def blind(request, bootstrap):
    """The policies' figures blind, with the eval's verdict sent as feedback on a tenth of the jobs."""
    return request.param, run_eval(bootstrap, "--blind", "--feedback-share", "0.1", "--simulator-config", request.param)


def test_a_blind_eval_scores_the_answers_itself_and_sends_its_verdict_on_a_share_of_them(blind):
    _, figures = blind
    for f in figures.values():
        assert set(f) == KEYS and f["blind"] is True and f["feedback_share"] == 0.1
        assert f["jobs"] + f["unroutable"] == 600 and f["jobs"] >= 590
        assert f["correct"] + f["failed"] == f["jobs"] and f["accuracy"] == round(f["correct"] / f["jobs"], 4)
        # A tenth of the jobs, those of them answered: the simulator injects no errors, so about all.
        assert 54 <= f["feedback_sent"] <= 60, f["feedback_sent"]
    # Without checks the worker fails no answer: the wrong ones are found by the eval alone.
    assert 0.85 <= figures["always-gpt-4o"]["accuracy"] <= 0.97


def test_blind_the_router_keeps_always_gpt4os_accuracy_at_a_fraction_of_its_cost(blind, report):
    simulator, figures = blind
    gpt, reference, router = figures["always-gpt-4o"], figures["reference"], figures["router"]
    vs_gpt = 1 - router["cost_per_correct_usd"] / gpt["cost_per_correct_usd"]
    vs_reference = 1 - router["cost_per_correct_usd"] / reference["cost_per_correct_usd"]
    report(
        f"blind eval on {simulator}, feedback on 10% of the jobs: router accuracy {router['accuracy']:.3f} "
        f"(always-gpt-4o {gpt['accuracy']:.3f}, reference {reference['accuracy']:.3f}); cost per correct "
        f"{vs_gpt:.1%} below always-gpt-4o, {vs_reference:.1%} below the reference routes"
    )
    assert router["accuracy"] >= gpt["accuracy"] - 0.01
    assert vs_gpt >= 0.60
    assert vs_reference >= 0.20
