"""`llm-router eval`'s scoring and figures: whether a result counts as correct, each policy's figures on the jobs
every policy could route, and the table. Pure functions of the jobs and results."""

from __future__ import annotations

import statistics
import sys

import msgspec

from worker.messages import Job, Result
from worker.routing.verify import verify


class PolicyFigures(msgspec.Struct, kw_only=True):
    policy: str
    jobs: int
    correct: int
    accuracy: float
    cost_usd: float
    cost_per_1k_jobs_usd: float
    cost_per_correct_usd: float
    p50_ms: float
    p99_ms: float
    attempts_per_job: float
    # The attempts (judges' included) made through a provider's batch API, and the others.
    batch_attempts: int
    sync_attempts: int
    failed: int
    # What the simulator billed for the policy's calls, and how far the cost (the sum of its cost events) is from it.
    billed_usd: float
    bill_gap_usd: float
    # Blind: the jobs went without their checks and the eval scored the answers itself.
    blind: bool
    feedback_share: float
    # The jobs some policy could not route (left out of every policy's figures).
    unroutable: int
    feedback_sent: int


def is_correct(job: Job, result: Result, blind: bool) -> bool:
    """Whether a result counts as correct: it is ok and, blind (the worker did not see the job's checks), its
    answer passes them."""
    if result.status != "ok":
        return False
    return not blind or verify(job, result.output or "", result.tool_calls or ()) is None


def unroutable(results: list[dict[str, Result]]) -> set[str]:
    """The ids of the jobs that failed with `no_route` under any policy (each policy's results by job id)."""
    return {
        job_id
        for by_id in results
        for job_id, result in by_id.items()
        if result.error is not None and result.error.kind == "no_route"
    }


def figures(
    policy: str,
    jobs: list[Job],
    results: dict[str, Result],
    billed_usd: float,
    *,
    blind: bool,
    feedback_share: float,
    left_out: set[str],
    feedback_sent: int,
) -> PolicyFigures:
    """The policy's figures on `jobs` but those `left_out`, and how far the cost of all its results is from what
    the simulator billed."""
    chosen = [(job, results[job.id]) for job in jobs if job.id not in left_out]
    if not chosen:
        raise ValueError("no job could be routed under every policy")
    correct = sum(is_correct(job, result, blind) for job, result in chosen)
    cost = sum(result.cost_usd for _, result in chosen)
    latencies = sorted(result.latency_ms for _, result in chosen)
    count = len(chosen)
    return PolicyFigures(
        policy=policy,
        jobs=count,
        correct=correct,
        accuracy=round(correct / count, 4),
        cost_usd=round(cost, 6),
        cost_per_1k_jobs_usd=round(cost / count * 1000, 4),
        cost_per_correct_usd=round(cost / correct, 8) if correct else float("inf"),
        p50_ms=round(statistics.median(latencies), 1),
        p99_ms=round(latencies[min(count - 1, int(count * 0.99))], 1),
        attempts_per_job=round(sum(len(result.attempts) for _, result in chosen) / count, 3),
        batch_attempts=sum(a.via == "batch" for _, result in chosen for a in result.attempts),
        sync_attempts=sum(a.via == "sync" for _, result in chosen for a in result.attempts),
        failed=count - correct,
        billed_usd=round(billed_usd, 6),
        bill_gap_usd=round(abs(sum(r.cost_usd for r in results.values()) - billed_usd), 9),
        blind=blind,
        feedback_share=feedback_share,
        unroutable=len(left_out),
        feedback_sent=feedback_sent,
    )


def print_table(results: list[PolicyFigures], simulator_config: str) -> None:
    """The policies side by side, under a line that says how they were scored and on which simulator."""
    by = {r.policy: r for r in results}

    def cheaper(r: PolicyFigures, base: str) -> str:
        other = by.get(base)
        if other is None or other is r or not other.correct or not r.correct:
            return "-"
        saving = (1 - r.cost_per_correct_usd / other.cost_per_correct_usd) * 100
        return f"{saving:.1f}%" if saving >= 0 else f"no ({-saving:.0f}% dearer)"

    first = results[0]
    scoring = "blind (sent without checks, scored by the eval)" if first.blind else "verified (checked by the worker)"
    share = first.feedback_share
    feedback = f"; the eval's verdict sent as feedback for a share {share:g} of the jobs" if share else ""
    print(f"{scoring} on {simulator_config}; {first.unroutable} job(s) no policy could route left out{feedback}")
    headers = [
        "policy",
        "jobs",
        "accuracy",
        "cost / 1K jobs",
        "cost / correct",
        "cheaper than always-gpt-4o",
        "cheaper than reference",
        "p50",
        "p99",
        "attempts / job",
        "cost events vs bill",
    ]
    rows = [
        [
            r.policy,
            str(r.jobs),
            f"{r.accuracy * 100:.1f}%",
            f"${r.cost_per_1k_jobs_usd:.4f}",
            f"${r.cost_per_correct_usd:.8f}",
            cheaper(r, "always-gpt-4o"),
            cheaper(r, "reference"),
            f"{r.p50_ms:.0f} ms",
            f"{r.p99_ms:.0f} ms",
            f"{r.attempts_per_job:.2f}",
            f"${r.bill_gap_usd:.9f}",
        ]
        for r in results
    ]
    if "router-batch" in by:  # beside router: what batching saved, and how the attempts went
        headers[7:7] = ["cheaper than router", "sync / batch attempts"]
        for r, row in zip(results, rows, strict=True):
            row[7:7] = [cheaper(r, "router"), f"{r.sync_attempts} / {r.batch_attempts}"]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    sys.stdout.flush()
