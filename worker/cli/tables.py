"""What the CLI prints: escaped text, result lines, tables, and the sums behind `results --summary` and `costs`.

Pure functions of the messages; the commands that read them from Kafka are in worker/cli/inspect.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from worker.messages import CostEvent, DeadLetter, Result


def escape(text: str) -> str:
    """`text` safe for a terminal and a tab-separated line: every character that is not printable (control
    characters, tabs, newlines, the escape that starts a terminal code) written as Python writes it (`\\x1b`,
    `\\t`, `\\n`)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def format_result(result: Result) -> str:
    """One human-readable, tab-separated line for a result, every text in it escaped."""
    attempts = len(result.attempts)
    head = (
        f"{escape(result.job_id)}\t{result.status}\t{escape(result.task or '-')}\t{escape(result.model or '-')}"
        f"\tattempts={attempts}\t${result.cost_usd:.6f}\t{result.latency_ms:.0f}ms"
    )
    if result.status == "ok":
        return f"{head}\t{escape((result.output or '')[:80])}"
    assert result.error is not None
    return f"{head}\t{escape(result.error.kind)}: {escape(result.error.message)}"


def format_dead_letter(offset: int, partition: int, letter: DeadLetter) -> dict[str, Any]:
    """A dead letter's row: where it is, why it is there (from its headers) and where it came from."""
    return {
        "partition": partition,
        "offset": offset,
        "error_kind": letter.error_kind,
        "error": letter.error,
        "source_topic": letter.source_topic,
        "source_partition": letter.source_partition,
        "source_offset": letter.source_offset,
        "size": letter.original_size,
        "truncated": letter.truncated,
        "failed_at": letter.failed_at.isoformat(),
    }


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """Aligned columns, each cell escaped; numbers right-aligned."""
    cells = [[escape(str(c)) for c in header]]
    numeric = [False] * len(header)
    for row in rows:
        cells.append([escape(_cell(c)) for c in row])
        numeric = [n or isinstance(c, int | float) for n, c in zip(numeric, row, strict=True)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return [
        "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric, strict=True)).rstrip()
        for row in cells
    ]


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def percentile(values: Sequence[float], share: float) -> float | None:
    """The nearest-rank percentile (`share` in 0..1) of `values`; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def summarize_results(results: Iterable[Result], undecodable: int = 0) -> dict[str, Any]:
    """Counts by status, cost by model (over every attempt, failed ones too) and p50/p99 latency."""
    by_status: dict[str, int] = {}
    cost_by_model: dict[str, float] = {}
    latencies: list[float] = []
    for result in results:
        by_status[result.status] = by_status.get(result.status, 0) + 1
        latencies.append(result.latency_ms)
        for attempt in result.attempts:
            cost_by_model[attempt.model] = cost_by_model.get(attempt.model, 0.0) + attempt.cost_usd
    return {
        "results": len(latencies),
        "undecodable": undecodable,
        "by_status": dict(sorted(by_status.items())),
        "cost_usd_by_model": dict(sorted(cost_by_model.items(), key=lambda kv: -kv[1])),
        "cost_usd": sum(cost_by_model.values()),
        "latency_ms": {"p50": percentile(latencies, 0.50), "p99": percentile(latencies, 0.99)},
    }


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The human form of `summarize_results`."""
    latency = summary["latency_ms"]
    lines = [
        f"results: {summary['results']}"
        + (f" (and {summary['undecodable']} records that are not results)" if summary["undecodable"] else ""),
        "status: " + (", ".join(f"{escape(k)} {v}" for k, v in summary["by_status"].items()) or "-"),
        "latency: "
        + (f"p50 {latency['p50']:.0f} ms, p99 {latency['p99']:.0f} ms" if latency["p50"] is not None else "-"),
        "",
    ]
    rows = [(model, cost) for model, cost in summary["cost_usd_by_model"].items()]
    return lines + table(["model", "cost_usd"], [*rows, ("total", summary["cost_usd"])])


COST_GROUPS = ("model", "tenant", "task")


def sum_costs(events: Iterable[CostEvent], by: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per group (the events' `by` field: model, tenant or task), dearest first, and over all: distinct jobs,
    attempts, cost and tokens."""
    groups: dict[str | None, dict[str, Any]] = {}
    jobs: dict[str | None, set[str]] = {}
    for event in events:
        key = getattr(event, by)
        row = groups.setdefault(key, {by: key, **_zero_costs()})
        jobs.setdefault(key, set()).add(event.job_id)
        _add_cost(row, event)
    total = {by: "total", **_zero_costs()}
    for key, row in groups.items():
        row["jobs"] = len(jobs[key])
        for field in ("attempts", "cost_usd", "input_tokens", "output_tokens"):
            total[field] += row[field]
    total["jobs"] = len(set().union(*jobs.values()))
    return sorted(groups.values(), key=lambda row: (-row["cost_usd"], str(row[by]))), total


def _zero_costs() -> dict[str, Any]:
    return {"jobs": 0, "attempts": 0, "cost_usd": 0.0, "input_tokens": 0, "output_tokens": 0}


def _add_cost(row: dict[str, Any], event: CostEvent) -> None:
    row["attempts"] += 1
    row["cost_usd"] += event.cost_usd
    row["input_tokens"] += event.input_tokens
    row["output_tokens"] += event.output_tokens


def sum_spend(events: Iterable[CostEvent], budget_of: Callable[[str], float]) -> list[dict[str, Any]]:
    """Per tenant ("" for jobs without one), dearest first: its cost, its budget (None: none), whether its spend
    reached it, and per model (dearest first) its distinct jobs, attempts and cost."""
    tenants: dict[str, dict[str, dict[str, Any]]] = {}
    jobs: dict[tuple[str, str], set[str]] = {}
    for event in events:
        tenant = event.tenant or ""
        row = tenants.setdefault(tenant, {}).setdefault(event.model, {"jobs": 0, "attempts": 0, "cost_usd": 0.0})
        row["attempts"] += 1
        row["cost_usd"] += event.cost_usd
        jobs.setdefault((tenant, event.model), set()).add(event.job_id)
    out = []
    for tenant, models in tenants.items():
        for model, row in models.items():
            row["jobs"] = len(jobs[(tenant, model)])
        cost = sum(row["cost_usd"] for row in models.values())
        budget = budget_of(tenant) or None
        out.append(
            {
                "tenant": tenant,
                "cost_usd": cost,
                "budget_usd": budget,
                "over_budget": budget is not None and cost >= budget,
                "models": dict(sorted(models.items(), key=lambda kv: (-kv[1]["cost_usd"], kv[0]))),
            }
        )
    return sorted(out, key=lambda row: (-row["cost_usd"], row["tenant"]))


def spend_lines(tenants: list[dict[str, Any]]) -> list[str]:
    """The human form of `sum_spend`: a row per tenant and model, each tenant's total beside its budget, and the
    total of every tenant."""
    rows: list[list[object]] = []
    for row in tenants:
        tenant = row["tenant"] or None  # jobs without a tenant: "-"
        for model, sums in row["models"].items():
            rows.append([tenant, model, sums["jobs"], sums["attempts"], sums["cost_usd"], None])
        over = " (reached)" if row["over_budget"] else ""
        budget = f"{row['budget_usd']:.6f}{over}" if row["budget_usd"] is not None else None
        rows.append([tenant, "(all models)", None, None, row["cost_usd"], budget])
    total = sum(row["cost_usd"] for row in tenants)
    rows.append(["total", None, None, None, total, None])
    return table(["tenant", "model", "jobs", "attempts", "cost_usd", "budget_usd"], rows)
