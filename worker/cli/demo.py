"""`llm-router demo`: the whole way of a job, end to end, on the embedded broker."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping

import msgspec

from worker import runtime
from worker.broker import BrokerError, EmbeddedBroker
from worker.cli.runs import produce, run_kafka, running_worker
from worker.cli.tables import escape
from worker.config import Config
from worker.messages import (
    ChatMessage,
    Checks,
    CostEvent,
    DeadLetter,
    ImagePart,
    Job,
    JsonSchemaFormat,
    Result,
    TextPart,
    Tool,
    ToolChoiceName,
)
from worker.pipeline.kafka import create_topics, make_consumer
from worker.providers import build_providers
from worker.simulator.endpoints import SIMULATOR_KEY, on_simulator
from worker.simulator.server import SimulatorServer
from worker.simulator.settings import ErrorMix, SimulatorConfig, load_simulator_config

QUESTIONS = [
    "What is the capital of Australia? [[expect: Canberra]] [[task: simple_qa]]",
    "How many bones are in the adult human body? [[expect: 206]] [[task: simple_qa]]",
    "Who wrote The Master and Margarita? [[expect: Mikhail Bulgakov]] [[task: simple_qa]]",
    "What does HTTP status 429 mean? [[expect: Too Many Requests]] [[task: simple_qa]]",
]
PROMPTS = [
    ("Summarize the key points of this quarter's sales report: revenue up 12%, churn flat, two new regions.", None),
    ("TLDR: the migration to the new billing system slipped two weeks because of the tax module.", None),
    ("Implement a function that merges two sorted lists in Python.", None),
    ("Debug this: my asyncio task never finishes when the queue is empty.", None),
    ("Analyze the trade-offs between eventual and strong consistency for a shopping cart.", None),
    ("Compare PostgreSQL logical replication with Debezium CDC for an outbox.", None),
    ("Write a short poem about a lighthouse keeper who collects storms.", None),
    ("Draft a friendly blog intro announcing our new API rate limits.", None),
    ("Explain the difference between a process and a thread.", "complex_reasoning"),
]
MALFORMED = [
    b"this is not json",
    b'{"prompt": "a job without an id"}',
    b'{"id": "bad-1", "prompt": "both", "messages": [{"role": "user", "content": "x"}]}',
    b'{"id": "bad-2", "prompt": "x", "accuracy_floor": 1.5}',
    b'{"id": "bad-3", "prompt": "x", "temperature": 3}',
    b'{"id": "bad-4", "prompt": "x", "tools": [{"name": "f"}], "tool_choice": {"name": "g"}}',
    b"[1, 2, 3]",
    b'{"id": 42, "prompt": "id must be a string"}',
]


# A 2 x 2 red PNG, base64: the image of the demo's image job.
PIXELS = "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAEElEQVR4nGP4z8AARAwQCgAf7gP9i18U1AAAAABJRU5ErkJggg=="
PLACE = JsonSchemaFormat(
    name="place",
    schema={
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    },
    strict=True,
)
WEATHER = Tool(
    name="get_weather",
    description="The current weather in a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
)


# A long system prompt (over 1,024 tokens: every provider caches it) that several jobs share.
POLICY = "You answer customers of the billing team from this refund policy: refunds within 30 days. " * 60


# The floor of the request jobs: a chain of three models, so that the demo's cheap models, which refuse a
# share of their calls, cannot fail one by refusing together.
REQUEST_FLOOR = 0.995


def request_jobs(run_id: str) -> list[Job]:
    """Jobs as applications send them: a structured answer, a tool call, a shared long system prompt (read
    from the provider's prompt cache the second time) and an image."""
    return [
        Job(
            id=f"{run_id}-structured",
            prompt='Where did I fly? "Last week I flew to Lyon, France." [[expect: {"city": "Lyon", "country": '
            '"France"}]] [[task: simple_qa]]',
            response_format=PLACE,
            temperature=0,
            accuracy_floor=REQUEST_FLOOR,
        ),
        Job(
            id=f"{run_id}-tool",
            prompt='Do I need an umbrella in Paris today? [[tool: get_weather {"city": "Paris"}]]',
            tools=[WEATHER],
            tool_choice=ToolChoiceName(name="get_weather"),
            accuracy_floor=REQUEST_FLOOR,
        ),
        *(
            Job(
                id=f"{run_id}-policy-{i}",
                messages=[ChatMessage(role="system", content=POLICY), ChatMessage(role="user", content=question)],
                model="gpt-4o",  # pinned: the second job reads the first one's prefix from gpt-4o's cache
            )
            for i, question in enumerate(("Can I get a refund after 40 days?", "Who approves an exception?"))
        ),
        Job(
            id=f"{run_id}-image",
            messages=[
                ChatMessage(
                    role="user",
                    content=[
                        TextPart(text="What colour is this picture? One word. [[expect: red]] [[task: simple_qa]]"),
                        ImagePart(data=PIXELS, media_type="image/png"),
                    ],
                )
            ],
            checks=Checks(expected="red"),
            accuracy_floor=REQUEST_FLOOR,
        ),
    ]


def sample_jobs(count: int, run_id: str) -> list[Job]:
    """A mix of task types, including a long-context prompt, a pinned model, an impossible job and the
    request jobs (a structured answer, a tool call, an image)."""
    jobs: list[Job] = []
    specials = [
        Job(
            id=f"{run_id}-long",
            prompt="Here is a long transcript. "
            + "The committee met and discussed the budget. " * 300
            + "What was decided?",
        ),
        Job(id=f"{run_id}-pinned", prompt="What is 17 * 23?", model="gpt-4o", tenant="acme"),
        Job(
            id=f"{run_id}-pii",
            prompt="Classify this customer complaint.",
            allowed_providers=["on-prem-only"],
            tenant="acme",
        ),
        Job(
            id=f"{run_id}-chat",
            messages=[
                ChatMessage(role="system", content="Answer briefly."),
                ChatMessage(role="user", content="Why is the sky blue?"),
            ],
        ),
        *request_jobs(run_id),
    ]
    jobs.extend(specials[: max(0, count)])
    i = 0
    while len(jobs) < count:
        if i % 3 == 0:
            prompt, task = QUESTIONS[(i // 3) % len(QUESTIONS)], None
        else:
            prompt, task = PROMPTS[i % len(PROMPTS)]
        jobs.append(Job(id=f"{run_id}-{i:03d}", prompt=prompt, task=task, tenant=("acme" if i % 2 else "globex")))
        i += 1
    return jobs


def demo_config(
    config: Config, bootstrap: str, run_id: str, suffix_topics: bool, simulator_url: str, env: Mapping[str, str]
) -> tuple[Config, dict[str, str], list[str]]:
    """The demo's settings: its own group (and topics on a shared broker), and every provider whose
    API key is not set pointed at the simulator. Returns the config, the keys to use, and the
    providers left on their real endpoints."""
    kafka = run_kafka(config.kafka, bootstrap, f"demo-{run_id}", own_topics=suffix_topics)
    providers, keys, real = {}, dict(env), []
    for name, provider in config.providers.items():
        if provider.kind == "echo" or (provider.api_key_env and env.get(provider.api_key_env)):
            providers[name] = provider
            real.append(name)
            continue
        providers[name], key_env = on_simulator(name, provider, simulator_url)
        keys[key_env] = SIMULATOR_KEY
    return msgspec.structs.replace(config, kafka=kafka, providers=providers), keys, real


def simulator_weather() -> SimulatorConfig:
    """The simulator as the demo runs it: a visible latency, and refusals and 429s on the cheap
    models so that retries and escalation show."""
    config = load_simulator_config()
    models = dict(config.models)
    models["gemini-2.5-flash"] = msgspec.structs.replace(
        models["gemini-2.5-flash"], errors=ErrorMix(refused=0.15, rate_limited=0.05), retry_after_s=0.2
    )
    models["llama-4-70b"] = msgspec.structs.replace(models["llama-4-70b"], errors=ErrorMix(refused=0.15))
    return msgspec.structs.replace(config, models=models, latency_scale=0.5)


def run_demo(config: Config, jobs: int = 60, timeout_s: float = 120.0) -> int:
    """Run the demo; 0 when every job got its result and every malformed message its dead letter."""
    run_id = uuid.uuid4().hex[:8]
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker: EmbeddedBroker | None = None
    if external:
        bootstrap = external
    else:
        broker = EmbeddedBroker()
        try:
            bootstrap = broker.start()
        except BrokerError as exc:
            print(f"llm-router demo: {exc}", file=sys.stderr)
            return 1
        print(f"embedded broker (Tansu, in memory) on {bootstrap}", file=sys.stderr)
    try:
        return runtime.run(_demo(config, bootstrap, run_id, bool(external), jobs, timeout_s), config.worker.event_loop)
    finally:
        if broker:
            broker.stop()


async def _demo(config: Config, bootstrap: str, run_id: str, shared_broker: bool, count: int, timeout_s: float) -> int:
    simulator = SimulatorServer(simulator_weather())
    url = await simulator.start()
    try:
        config, keys, real = demo_config(config, bootstrap, run_id, shared_broker, url, os.environ)
        simulated = sorted(set(config.providers) - set(real))
        print(
            f"provider simulator on {url} for {', '.join(simulated) or 'no provider'}"
            + (f"; real endpoints for {', '.join(real)}" if real else ""),
            file=sys.stderr,
        )
        return await _run(config, keys, sample_jobs(count, run_id), timeout_s, simulated, simulator)
    finally:
        await simulator.stop()


async def _run(
    config: Config,
    keys: dict[str, str],
    jobs: list[Job],
    timeout_s: float,
    simulated: list[str],
    simulator: SimulatorServer,
) -> int:
    topics = config.kafka.topics
    await create_topics(config.kafka, partitions=4)
    encoder = msgspec.json.Encoder()
    async with running_worker(config, build_providers(config, env=keys)):
        await produce(
            config.kafka, [(job.id.encode(), encoder.encode(job)) for job in jobs] + [(None, bad) for bad in MALFORMED]
        )
        print(f"produced {len(jobs)} jobs and {len(MALFORMED)} malformed messages to {topics.jobs}", file=sys.stderr)
        results, costs, letters = await _follow(config, {job.id for job in jobs}, timeout_s)
    print(file=sys.stderr)

    _print_results(jobs, results)
    _print_costs(costs)
    _print_letters(letters)
    _print_bill(costs, simulated, simulator)
    missing = [job.id for job in jobs if job.id not in results]
    if missing or len(letters) < len(MALFORMED):
        print(
            f"\nFAILED: {len(missing)} job(s) without a result, {len(MALFORMED) - len(letters)} dead letter(s)"
            f" missing after {timeout_s:.0f} s",
            file=sys.stderr,
        )
        return 1
    answered = [results[job.id] for job in jobs]
    ok = sum(r.status == "ok" for r in answered)
    rejected = len(results) - len(answered)  # malformed messages with a readable id
    print(
        f"\n{len(answered)} results ({ok} ok, {len(answered) - ok} failed with a reason), {len(letters)} dead letters"
        f" ({rejected} with an id, answered with a failed result too), {len(costs)} cost events, nothing lost."
    )
    return 0


async def _follow(
    config: Config, ids: set[str], timeout_s: float
) -> tuple[dict[str, Result], list[CostEvent], list[tuple[DeadLetter, bytes]]]:
    """Read the output topics until every job of `ids` has its result and every malformed message its dead
    letter (a malformed message with a readable id has a failed result too)."""
    topics = config.kafka.topics
    results: dict[str, Result] = {}
    costs: list[CostEvent] = []
    letters: list[tuple[DeadLetter, bytes]] = []
    consumer = make_consumer(config.kafka, group_id=None)
    consumer.subscribe([topics.results, topics.costs, topics.dlq])
    await consumer.start()
    result_decoder, cost_decoder = msgspec.json.Decoder(Result), msgspec.json.Decoder(CostEvent)
    deadline = time.monotonic() + timeout_s
    total = len(ids) + len(MALFORMED)
    shown = -1

    def done() -> bool:  # every result, dead letter and cost event (one an attempt) read
        attempts = sum(len(results[i].attempts) for i in ids if i in results)
        return ids <= results.keys() and len(letters) >= len(MALFORMED) and len(costs) >= attempts

    try:
        while not done() and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                for record in records:
                    if tp.topic == topics.results:
                        result = result_decoder.decode(record.value)
                        results[result.job_id] = result
                    elif tp.topic == topics.costs:
                        costs.append(cost_decoder.decode(record.value))
                    else:
                        letters.append((DeadLetter.from_headers(record.headers), record.value))
            outputs = len(ids & results.keys()) + len(letters)
            if outputs != shown:
                shown = outputs
                _progress(outputs, total)
    finally:
        await consumer.stop()
    return results, costs, letters


def _progress(done: int, total: int) -> None:
    width = 40
    filled = width * done // max(total, 1)
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} outputs", end="", file=sys.stderr, flush=True)


def _table(headers: list[str], rows: list[list[str]]) -> None:
    rows = [[escape(c) for c in row] for row in rows]  # ids, outputs and reasons are printed, never raw
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def _print_results(jobs: list[Job], results: dict[str, Result]) -> None:
    print("\nResults")
    rows = []
    for job in jobs:
        r = results.get(job.id)
        if r is None:
            rows.append([job.id, "MISSING", "", "", "", "", ""])
            continue
        path = " > ".join(f"{a.model}{'' if a.outcome == 'ok' else ' x'}" for a in r.attempts) or "-"
        if r.status == "ok" and r.tool_calls:
            detail = ", ".join(f"{c.name}({msgspec.json.encode(c.arguments).decode()})" for c in r.tool_calls)[:60]
        elif r.status == "ok" and r.parsed is not None:
            detail = msgspec.json.encode(r.parsed).decode()[:60]
        elif r.status == "ok":
            detail = (r.output or "")[:40]
        else:
            assert r.error is not None  # the worker sends every failed result with its error
            detail = f"{r.error.kind}: {r.error.message}"[:70]
        rows.append([job.id, r.status, r.task or "-", path, f"${r.cost_usd:.6f}", f"{r.latency_ms:.0f}ms", detail])
    _table(["job", "status", "task", "attempts (x = failed)", "cost", "latency", "output / error"], rows)


def _print_costs(costs: list[CostEvent]) -> None:
    print("\nCost by model")
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0, 0.0])
    for event in costs:
        t = totals[event.model]
        t[0] += 1
        t[1] += event.outcome == "failed"
        t[2] += event.input_tokens
        t[3] += event.output_tokens
        t[4] += event.cost_usd
    rows = [
        [m, str(t[0]), str(t[1]), str(t[2]), str(t[3]), f"${t[4]:.6f}"]
        for m, t in sorted(totals.items(), key=lambda kv: -kv[1][4])
    ]
    rows.append(
        [
            "total",
            str(sum(t[0] for t in totals.values())),
            str(sum(t[1] for t in totals.values())),
            str(sum(t[2] for t in totals.values())),
            str(sum(t[3] for t in totals.values())),
            f"${sum(t[4] for t in totals.values()):.6f}",
        ]
    )
    _table(["model", "attempts", "failed", "input tok", "output tok", "cost"], rows)


def _print_bill(costs: list[CostEvent], simulated: list[str], simulator: SimulatorServer) -> None:
    """The cost events of the simulated providers' attempts against what the simulator billed for them."""
    mine = [e for e in costs if e.provider in simulated]
    charged = sum(e.cost_usd for e in mine)
    billed = simulator.simulator.stats.cost_usd
    cached = sum(e.cached_input_tokens for e in mine)
    print(
        f"\nBill: the cost events of the simulated providers sum to ${charged:.6f} ({cached} input tokens read from "
        f"prompt caches); the simulator billed ${billed:.6f}; difference ${abs(charged - billed):.9f}"
    )


def _print_letters(letters: list[tuple[DeadLetter, bytes]]) -> None:
    print("\nDead letters")
    rows = [
        [f"{d.source_partition}/{d.source_offset}", d.error_kind, d.error[:70], value[:30].decode(errors="replace")]
        for d, value in letters
    ]
    _table(["partition/offset", "kind", "error", "original bytes"], rows)
