"""The worker's HTTP endpoint (`worker.http_port`), scraped and probed as Prometheus and Kubernetes do.

A worker process with the endpoint on and no OTLP collector: /metrics after a run of jobs carries
the jobs, cost and token counters with the totals of the results and cost events read from Kafka,
and every metric the Grafana dashboard (deploy/grafana/) queries; /readyz follows the broker
going away and coming back (a broker of the test's own, replaced by an empty one on its port).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import (
    REPO,
    Outputs,
    ReplaceableBroker,
    Setup,
    WorkerProcess,
    collect,
    job_bytes,
    make_topics,
    produce,
)
from worker.broker import free_port

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "llm-router.json"
JOBS = 120
READY_WITHIN_S = 60  # a worker process starts, reaches the broker and joins the group
NOT_READY_WITHIN_S = 10  # the bound once the broker is gone


def get(port: int, path: str) -> tuple[int, str]:
    """The status and body of GET http://127.0.0.1:port/path (any status, not only 2xx)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def wait_status(port: int, path: str, wanted, timeout_s: float, worker: WorkerProcess) -> tuple[float, str]:
    """Poll `path` until its status satisfies `wanted`; the seconds it took and the last body."""
    started = time.monotonic()
    status, body = 0, ""
    while time.monotonic() - started < timeout_s:
        assert worker.process.poll() is None, f"the worker exited: {worker.log_path.read_text()[-3000:]}"
        try:
            status, body = await asyncio.to_thread(get, port, path)
        except OSError as exc:  # not listening yet
            status, body = 0, repr(exc)
        if wanted(status):
            return time.monotonic() - started, body
        await asyncio.sleep(0.25)
    raise AssertionError(f"{path} still answers {status} after {timeout_s} s: {body!r}")


def samples(text: str) -> dict[str, list]:
    """The samples of a Prometheus exposition by sample name (with its _total, _bucket, _sum suffix)."""
    by_name: dict[str, list] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            by_name[sample.name].append(sample)
    return by_name


def total(scraped: dict[str, list], name: str, **labels: str) -> float:
    return sum(s.value for s in scraped.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


def endpoint_setup(bootstrap: str, port: int) -> Setup:
    return Setup(
        bootstrap,
        LLM_ROUTER__WORKER__HTTP_PORT=port,
        LLM_ROUTER__WORKER__HTTP_HOST="127.0.0.1",
        # A rate limit, so that a gate has an allowance; refusals, so that jobs escalate.
        LLM_ROUTER__MODELS__GPT_4O__REQUESTS_PER_MINUTE=100_000,
        LLM_ROUTER__PROVIDERS__GEMINI__FAILURE_RATE=0.3,
    )


@pytest.fixture(scope="module")
def scraped_run(bootstrap, tmp_path_factory):
    """A worker process with the endpoint on and no collector, after JOBS jobs (and one dead letter): what
    Kafka holds, and /metrics then."""
    port = free_port()
    setup = endpoint_setup(bootstrap, port)
    worker = WorkerProcess(setup, tmp_path_factory.mktemp("endpoint"), "worker")
    jobs = [
        (
            f"e{i}".encode(),
            job_bytes(
                f"e{i}",
                f"question {i}",
                tenant=f"t{i % 3}",
                **({"checks": {"regex": r"^\[llama"}} if i % 4 == 0 else {}),
            ),
        )
        for i in range(JOBS)
    ]
    jobs.append((b"bad", b"not json"))

    async def scenario() -> tuple[Outputs, str, tuple[int, str]]:
        await make_topics(setup)
        await wait_status(port, "/readyz", lambda s: s == 200, READY_WITHIN_S, worker)
        await produce(setup, jobs)
        outputs = await collect(
            setup,
            lambda o: (
                len(o.results) == JOBS
                and len(o.letters) == 1
                and len(o.costs) >= sum(len(r.attempts) for r in o.results)
            ),
            timeout_s=90,
        )
        status, text = await asyncio.to_thread(get, port, "/metrics")
        assert status == 200, text
        return outputs, text, await asyncio.to_thread(get, port, "/healthz")

    try:
        outputs, text, health = asyncio.run(scenario())
    finally:
        worker.stop()
    return outputs, text, health


def test_metrics_carry_the_jobs_cost_and_token_totals_of_the_results_and_cost_events(scraped_run, report):
    outputs, text, health = scraped_run
    scraped = samples(text)
    assert len(outputs.results) == JOBS
    assert health == (200, "ok\n")
    ok = sum(1 for r in outputs.results if r.status == "ok")
    assert total(scraped, "llm_router_jobs_total", llm_router_outcome="ok") == ok
    assert total(scraped, "llm_router_jobs_total", llm_router_outcome="failed") == JOBS - ok
    assert total(scraped, "llm_router_jobs_total", llm_router_outcome="dead_lettered") == 1
    assert total(scraped, "llm_router_cost_USD_total") == pytest.approx(sum(c.cost_usd for c in outputs.costs))
    for tenant in ("t0", "t1", "t2"):
        assert total(scraped, "llm_router_cost_USD_total", llm_router_tenant=tenant) == pytest.approx(
            sum(c.cost_usd for c in outputs.costs if c.tenant == tenant)
        )
    tokens = {t: total(scraped, "gen_ai_client_token_usage_sum", gen_ai_token_type=t) for t in ("input", "output")}
    assert tokens == {
        "input": sum(c.input_tokens for c in outputs.costs),
        "output": sum(c.output_tokens for c in outputs.costs),
    }
    assert total(scraped, "gen_ai_client_operation_duration_seconds_count") == len(outputs.costs)
    escalations = total(scraped, "llm_router_escalations_total")
    assert escalations == sum(len({a.model for a in r.attempts}) - 1 for r in outputs.results) > 0
    report(
        f"endpoint /metrics: {len(text.splitlines())} lines; {ok} ok of {JOBS} jobs, "
        f"{len(outputs.costs)} cost events, tokens {tokens}, escalations {escalations:g}"
    )


def dashboard_expressions(dashboard: dict) -> list[str]:
    """Every PromQL expression of a Grafana dashboard: its panels' targets and its templating queries."""
    panels = list(dashboard.get("panels", []))
    for panel in list(panels):
        panels.extend(panel.get("panels", []))  # the panels of a collapsed row
    exprs = [t["expr"] for p in panels for t in p.get("targets", []) if t.get("expr")]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        if variable.get("type") == "query" and query:
            exprs.append(query)
    return exprs


# Grafana's interval variables, as a duration PromQL parses.
GRAFANA_INTERVALS = re.compile(r"\$(?:__rate_interval|__interval|__range)\b")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression of the dashboard selects, from its PromQL syntax tree (promql-parser)."""
    names: set[str] = set()

    def visit(node) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(GRAFANA_INTERVALS.sub("5m", expr)), visit)
    return names


def test_every_metric_the_dashboard_queries_is_in_the_workers_metrics(scraped_run, report):
    _, text, _ = scraped_run
    exposed = set(samples(text))
    dashboard = json.loads(Path(DASHBOARD).read_text())
    queried = set().union(*(metric_names(e) for e in dashboard_expressions(dashboard)))
    assert len(queried) >= 8, f"the dashboard queries the worker's metrics: {sorted(queried)}"
    missing = sorted(queried - exposed)
    assert not missing, f"queried by the dashboard, absent from /metrics: {missing}; exposed: {sorted(exposed)}"
    report(f"dashboard: {len(queried)} metric names, all in /metrics: {', '.join(sorted(queried))}")


@pytest.mark.one_broker
def test_readyz_turns_503_within_10_s_of_losing_the_broker_and_200_after_it_returns(tmp_path, report):
    broker, port = ReplaceableBroker(tmp_path), free_port()
    setup = endpoint_setup(broker.bootstrap_servers, port)
    worker = WorkerProcess(setup, tmp_path, "worker")

    async def scenario() -> dict:
        facts: dict = {}
        await make_topics(setup)
        facts["ready_s"], _ = await wait_status(port, "/readyz", lambda s: s == 200, READY_WITHIN_S, worker)
        broker.stop()
        facts["not_ready_s"], facts["reason"] = await wait_status(
            port, "/readyz", lambda s: s != 200, NOT_READY_WITHIN_S, worker
        )
        facts["healthz_while_lost"] = await asyncio.to_thread(get, port, "/healthz")
        await asyncio.to_thread(broker.replace)
        await make_topics(setup)  # the new broker is empty
        facts["ready_again_s"], _ = await wait_status(port, "/readyz", lambda s: s == 200, READY_WITHIN_S, worker)
        return facts

    try:
        facts = asyncio.run(scenario())
    finally:
        worker.stop()
        broker.close()
    assert facts["reason"].startswith("not ready: the broker"), facts["reason"]
    assert facts["healthz_while_lost"] == (200, "ok\n"), "the process and its loop still answer"
    report(
        f"endpoint /readyz: 200 {facts['ready_s']:.1f} s after start, 503 {facts['not_ready_s']:.1f} s after the "
        f"broker stopped ({facts['reason'].strip()!r}), 200 {facts['ready_again_s']:.1f} s after a new one started"
    )
