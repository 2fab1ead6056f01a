"""Tenant budgets across three replicas: a tenant with a $0.01 budget gets `budget_exceeded` results once its
spend (its cost events, read by every replica from the costs topic) reaches it, overshooting by at most its jobs
in flight; another tenant runs on; the spend survives a restart of every replica; `llm-router spend` prints it.
On one replica: the overshoot within its own jobs in flight, and the refusals and spend in its metrics."""

import asyncio
import re
import subprocess
import sys
from collections import defaultdict

import orjson
import pytest

from tests.integration.helpers import REPO, Outputs, Setup, collect, job_bytes, make_topics, produce, provider_latency
from tests.metric_capture import captured_telemetry, points_by_name
from worker.cli.runs import running_worker

REPLICAS = 3
MAX_IN_FLIGHT = 4
# Calls well longer than the tail's lag (a fetch): what other replicas finished and the tail has not read yet
# adds little to the jobs in flight (docs/architecture.md, "Tenant budgets", overshoot).
LATENCY_MS = 500
BUDGET_USD = 0.01
PROMPT = "Name the three largest moons of Jupiter and say in one sentence what each one is known for."


def spend_cli(setup: Setup, *args: str) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "worker", "spend", "--json", *args],
        capture_output=True,
        timeout=60,
        env=setup.process_env(),
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    return [orjson.loads(line) for line in out.stdout.decode().splitlines()]


def jobs(prefix: str, tenant_of: dict[str, str], count: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    """`count` jobs pinned to gpt-4o (one price), alternating between the tenants t1 and t2."""
    messages = []
    for i in range(start, start + count):
        job_id, tenant = f"{prefix}{i:04d}", "t1" if i % 2 else "t2"
        tenant_of[job_id] = tenant
        messages.append((job_id.encode(), job_bytes(job_id, PROMPT, model="gpt-4o", tenant=tenant)))
    return messages


@pytest.mark.xdist_group("heavy")  # several worker processes, kills or outages: one heavy test at a time
def test_a_tenant_over_its_budget_is_refused_across_replicas_and_restarts(bootstrap, replicas, report):
    setup = Setup(
        bootstrap,
        LLM_ROUTER__TENANTS__T1__BUDGET_USD_PER_DAY=BUDGET_USD,
        LLM_ROUTER__WORKER__MAX_IN_FLIGHT=MAX_IN_FLIGHT,
        **provider_latency(LATENCY_MS),
    )
    tenant_of: dict[str, str] = {}
    first, second = jobs("a", tenant_of, 160), jobs("b", tenant_of, 20)

    async def scenario() -> tuple[Outputs, Outputs]:
        await make_topics(setup, partitions=4)
        await replicas.start_settled(setup, REPLICAS, partitions=4)
        await produce(setup, first)
        ids = {key.decode() for key, _ in first}
        before = await collect(setup, until=lambda o: o.result_ids >= ids, timeout_s=120, settle_s=1)
        replicas.stop()
        # New replicas: the spend they start from is read from the costs topic.
        await replicas.start_settled(setup, REPLICAS, partitions=4)
        await produce(setup, second)
        ids |= {key.decode() for key, _ in second}
        return before, await collect(setup, until=lambda o: o.result_ids >= ids, timeout_s=120, settle_s=1)

    before, after = asyncio.run(scenario())
    spend = spend_cli(setup)
    replicas.stop()

    results = {r.job_id: r for r in after.results}
    assert set(results) == set(tenant_of), "every job has a result"
    job_cost: dict[str, float] = defaultdict(float)
    for event in after.costs:
        job_cost[event.job_id] += event.cost_usd
    t1_spent = sum(e.cost_usd for e in before.costs if e.tenant == "t1")
    highest = max(job_cost.values())
    overshoot = t1_spent - BUDGET_USD
    bound = REPLICAS * MAX_IN_FLIGHT * highest

    refused = [r for r in results.values() if r.status == "failed"]
    assert refused, "the tenant over its budget had jobs refused"
    assert all(r.error is not None and r.error.kind == "budget_exceeded" for r in refused), {
        r.error.kind for r in refused if r.error
    }
    assert all(tenant_of[r.job_id] == "t1" for r in refused), "another tenant is unaffected"
    assert all(r.attempts == [] and r.cost_usd == 0 and r.tenant == "t1" for r in refused)
    message = refused[0].error.message if refused[0].error else ""
    assert "tenant 't1' has spent $" in message and "of its budget of $0.010000" in message, message
    assert all(results[job_id].status == "ok" for job_id, tenant in tenant_of.items() if tenant == "t2")

    assert t1_spent > BUDGET_USD, "the tenant's jobs ran until its spend passed its budget"
    assert overshoot <= bound, f"overshoot ${overshoot:.6f} over the in-flight bound ${bound:.6f}"

    # What each refusal says the tenant spent: never more than it did (no event counted twice), and after the
    # restart all of it (read back from the costs topic).
    said = {r.job_id: float(re.findall(r"has spent \$([0-9.]+)", r.error.message)[0]) for r in refused if r.error}
    assert all(BUDGET_USD <= spent <= t1_spent + 1e-6 for spent in said.values()), (said, t1_spent)
    restarted = [job_id for job_id, _ in ((k.decode(), v) for k, v in second) if tenant_of[job_id] == "t1"]
    assert all(results[job_id].status == "failed" for job_id in restarted), "refused at once after the restart"
    assert not [e for e in after.costs if e.job_id in restarted], "no call was made for them"
    assert all(abs(said[job_id] - t1_spent) < 1e-6 for job_id in restarted), "the whole spend survived the restart"
    t1_total = sum(e.cost_usd for e in after.costs if e.tenant == "t1")
    assert t1_total == t1_spent

    by_tenant = {row["tenant"]: row for row in spend}
    assert set(by_tenant) == {"t1", "t2"}
    for tenant in ("t1", "t2"):
        events = [e for e in after.costs if e.tenant == tenant]
        row = by_tenant[tenant]
        assert abs(row["cost_usd"] - sum(e.cost_usd for e in events)) < 1e-12
        assert row["models"]["gpt-4o"]["attempts"] == len(events)
        assert row["models"]["gpt-4o"]["jobs"] == len({e.job_id for e in events})
    assert by_tenant["t1"]["budget_usd"] == BUDGET_USD and by_tenant["t1"]["over_budget"]
    assert by_tenant["t2"]["budget_usd"] is None and not by_tenant["t2"]["over_budget"]
    assert spend_cli(setup, "--day", "2000-01-01") == [], "another day has no spend"

    t1_jobs_run = len({e.job_id for e in before.costs if e.tenant == "t1"})
    report(
        f"tenant budget ${BUDGET_USD} across {REPLICAS} replicas (max_in_flight {MAX_IN_FLIGHT}, calls "
        f"{LATENCY_MS} ms): spent ${t1_spent:.6f} in {t1_jobs_run} jobs, overshoot ${overshoot:.6f} = "
        f"{overshoot / highest:.1f} jobs of ${highest:.6f} (bound {REPLICAS * MAX_IN_FLIGHT} jobs, ${bound:.6f}); "
        f"refused {len(refused)} (of them {len(restarted)} after the restart, at once)"
    )


def test_one_replica_overshoots_by_its_jobs_in_flight_at_most_and_meters_its_refusals(bootstrap, report):
    telemetry, captured, reader = captured_telemetry()
    budget, in_flight = 0.002, 2
    setup = Setup(
        bootstrap,
        LLM_ROUTER__TENANTS__T1__BUDGET_USD_PER_DAY=budget,
        LLM_ROUTER__TENANT_DEFAULTS__BUDGET_USD_PER_DAY=1.0,
        LLM_ROUTER__WORKER__MAX_IN_FLIGHT=in_flight,
        **provider_latency(50),
    )
    tenants = ["t1", "t2", None]
    sent = [(f"s{i}".encode(), job_bytes(f"s{i}", PROMPT, model="gpt-4o", tenant=tenants[i % 3])) for i in range(60)]

    async def scenario():
        await make_topics(setup)
        async with running_worker(setup.config, telemetry=telemetry):
            await produce(setup, sent)
            outputs = await collect(setup, lambda o: len(o.results) == len(sent), timeout_s=90, settle_s=1)
            reader.force_flush()  # gauges are read while the worker runs
        return outputs, points_by_name(captured.data)

    outputs, points = asyncio.run(scenario())
    refused = [r for r in outputs.results if r.error is not None and r.error.kind == "budget_exceeded"]
    assert refused and all(r.tenant == "t1" for r in refused), "t2 and the jobs without a tenant are within 1.0"
    assert len([r for r in outputs.results if r.status == "ok"]) == len(sent) - len(refused)
    spent = {t: sum(e.cost_usd for e in outputs.costs if e.tenant == t) for t in tenants}
    highest = max(e.cost_usd for e in outputs.costs)  # one attempt a job
    overshoot = spent["t1"] - budget
    assert 0 <= overshoot <= in_flight * highest, (overshoot, in_flight * highest)
    assert [(dict(p.attributes), p.value) for p in points["llm_router.budget_exceeded"]] == [
        ({"llm_router.tenant": "t1"}, len(refused))
    ]
    gauge = {p.attributes.get("llm_router.tenant", ""): p.value for p in points["llm_router.tenant.spend"]}
    assert gauge == pytest.approx({"t1": spent["t1"], "t2": spent["t2"], "": spent[None]}), (
        "own events counted at once, not again when read back"
    )
    report(
        f"tenant budget ${budget} on one replica (max_in_flight {in_flight}): overshoot ${overshoot:.6f} = "
        f"{overshoot / highest:.1f} jobs (bound {in_flight}); refused {len(refused)}"
    )
