"""`llm-router eval` on the shipped workload: the router beats both baselines at no loss of accuracy."""

import subprocess
import sys

import orjson
import pytest

from tests.integration.helpers import REPO

# The routing policies' figures; Kafka only carries the jobs.
pytestmark = pytest.mark.one_broker


def test_router_beats_always_gpt4o_and_the_reference_routes(bootstrap, report):
    out = subprocess.run(
        [sys.executable, "-m", "worker", "eval", "bench/workload.jsonl", "--json", "--latency-scale", "0.2"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**__import__("os").environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    figures = {f["policy"]: f for f in map(orjson.loads, out.stdout.splitlines())}
    gpt, reference, router = figures["always-gpt-4o"], figures["reference"], figures["router"]
    for f in figures.values():
        assert set(f) >= {
            "policy",
            "jobs",
            "correct",
            "accuracy",
            "cost_usd",
            "cost_per_correct_usd",
            "p50_ms",
            "p99_ms",
            "attempts_per_job",
        }
        assert f["jobs"] == 600
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
    for f in (gpt, reference, router):  # each policy's costs are what the simulator billed
        assert f["bill_gap_usd"] <= 0.000001 * f["jobs"] / 1000
