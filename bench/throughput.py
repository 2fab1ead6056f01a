"""Throughput: a trivial aiokafka consumer beside our worker, on one broker, in one run.

Figures (the embedded broker, or KAFKA_BOOTSTRAP_SERVERS; fresh topics and group for each):

- `raw_floor`: a plain aiokafka loop: `getmany`, decode each job (msgspec, into the Job Struct),
  produce one small result per job, await the acknowledgements, commit the batch. The best a
  trivial at-least-once consumer does on this broker. The worker's `ratio_to_raw_floor` is against it.
- `raw_floor_with_cost_events`: the same loop writing what the worker writes for a one-attempt job,
  a small cost event to the costs topic beside each result: the Kafka work alone, for comparison.
- `worker_echo`: our Worker (`running_worker`, whose telemetry is off) with every provider the
  in-process echo provider (latency 0): decode, classify, plan, attempt, result and cost event, commit.
- `worker_http`: our Worker against the simulator (a process of its own) answering every call in
  1 s (the median, with a log-normal jitter of CALL_JITTER: see there), without errors or limits,
  jobs pinned to one model, `max_in_flight` and the pool raised.
- `worker_http_lockstep`: the same with no jitter at all: every call exactly 1 s.
- `latency`: what the worker adds to a job beyond the provider call, from a paced run at moderate
  load (PACED_PER_S jobs a second) on the same worker once `worker_http`'s backlog is done; the
  same paced jobs go through the raw floor after its backlog, for the Kafka hops alone.

How `raw_floor` and `worker_echo` are measured, the same way: WARMUP + JOBS jobs are produced to
the jobs topic *before* the consumer starts, so producing costs the consumer nothing and it drains
a backlog as fast as it can. The consumer runs in a process of its own (multiprocessing, spawn) and
samples its own CPU time (`time.process_time`) every 50 ms; this process reads the results topic
back, counting distinct job ids until every job has one. Times are the results' Kafka timestamps
(CreateTime: when the consumer produced the result), so the reader's lag does not count. The first
WARMUP results (group join, connections, first fetches, caches) are the warm-up; the timed part
runs from the WARMUP-th result to the last: jobs_per_s = its results / its span, cpu_us_per_job =
the consumer's CPU time over the span / its results. It is timed from a result, not from the end of
producing, because producing is over before the consumer starts and joining the group takes
seconds that are no part of a job's cost. The reader, broker and simulator use the same cores:
their share (`*_cores`: CPU seconds per second over the span) is reported beside each figure.

The floor and the untraced worker alternate ROUNDS times (BENCH_ROUNDS, default 5): a shared
machine's speed drifts between phases by more than the difference being measured, so each round's
`ratio_to_raw_floor` is taken within the round, and `worker_echo` is the round with the median ratio
(`raw_floor` the round with the median jobs/s); `rounds_*` list every round's. Every consumer, the
floor too, and the simulator run on the event loop `LLM_ROUTER__WORKER__EVENT_LOOP` names (default
auto: uvloop where installed), named in the `machine` line.

`worker_http` drains HTTP_JOBS jobs the same way and takes the middle 60% of their results (no
ramp up, no draining tail) as the steady state. The worker's process samples its jobs in flight
(`worker.tracker.in_flight`) and its RSS (/proc/self/statm) every 50 ms: `in_flight` is the most
reached, `in_flight_mean` the mean over the steady state, against which jobs_per_s is compared
(Little's law: jobs/s = in flight / time a job is in flight, ideally the 1 s call);
mb_per_1000_in_flight = (peak RSS - RSS at start) / in_flight * 1000.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Mapping
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from random import Random
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from worker import runtime
from worker.broker import EmbeddedBroker, free_port, wait_for_port
from worker.cli.runs import produce, running_worker
from worker.config import Config, KafkaConfig, Topics, load_config
from worker.messages import Job, Result
from worker.observability.telemetry import OFF, telemetry_from_env
from worker.pipeline.kafka import create_topics, make_consumer, make_producer
from worker.providers import Providers, build_providers
from worker.simulator.behaviour import SimRequest, answer
from worker.simulator.endpoints import SIMULATOR_KEY, on_simulator
from worker.simulator.settings import dump_simulator_config, load_simulator_config

REPO = Path(__file__).resolve().parent.parent
PARTITIONS = 4
WARMUP = 500
JOBS = 30_000
RAW_JOBS = 150_000  # the floor drains 30,000 jobs in half a second: too short a span to time steadily
LONG_WARMUP = 10_000
LONG_JOBS = 50_000  # telemetry off: also the memory figure (RSS after LONG_WARMUP results, and at the end)
MODEL = "gpt-4o"  # worker_http's jobs are pinned to it (the simulator's OpenAI wire)
CALL_S = 1.0
# The calls' log-normal jitter around CALL_S (the shipped simulator's models have 0.25): a twentieth,
# so the mean call is exp(0.05**2 / 2) = 1.00125 CALL_S, and the bar's CALL_S is 0.13% the harder.
# With none at all, the 5,200 calls started in the first few milliseconds all answer in the same
# milliseconds a second later, and again a second after that, for the whole run: a lockstep that no
# provider has, measured beside it as `worker_http_lockstep`.
CALL_JITTER = 0.05
HTTP_JOBS = 40_000
ROUNDS = max(1, int(os.environ.get("BENCH_ROUNDS", "5")))  # raw_floor and worker_echo alternate this many times
HTTP_MAX_IN_FLIGHT = 5_200  # the bar is 5,000 in flight: a margin over it, not more load than it needs
PACED_PER_S = 500
PACED_S = 6
SAMPLE_S = 0.05
TIMEOUT_S = 240.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
_RESULT = msgspec.json.Decoder(Result)
# Every consumer (floor and worker alike) and the simulator run on this loop:
# `LLM_ROUTER__WORKER__EVENT_LOOP=asyncio make bench` measures them all on asyncio's own.
EVENT_LOOP = os.environ.get("LLM_ROUTER__WORKER__EVENT_LOOP", "auto")

Figure = dict[str, Any]
# (wall time, consumer CPU seconds, jobs in flight, RSS MiB), sampled in the consumer's process.
Sample = tuple[float, float, int, float]


# --- the consumer's process ------------------------------------------------------------------


def _child(mode: str, env: dict[str, str], url: str, stop: MpEvent, conn: Connection) -> None:
    """The consumer's process: `raw` (the plain loop), `echo` or `http` (the worker); sends its samples.
    Every mode runs on the event loop the configuration names (`worker.event_loop`), the floor too."""
    config = load_config(env=env)
    conn.send(runtime.run(_consume(mode, config, env, url, stop), config.worker.event_loop))
    conn.close()


async def _consume(mode: str, config: Config, env: dict[str, str], url: str, stop: MpEvent) -> list[Sample]:
    """Run the consumer, sampling it every SAMPLE_S, until `stop` is set."""
    samples: list[Sample] = []

    async def sample(in_flight: Callable[[], int]) -> None:
        while not stop.is_set():
            samples.append((time.time(), time.process_time(), in_flight(), _rss_mb()))
            await asyncio.sleep(SAMPLE_S)

    if mode in ("raw", "raw_two"):
        done = asyncio.Event()
        loop = asyncio.create_task(_raw_loop(config.kafka, done, cost_events=mode == "raw_two"))
        await sample(lambda: 0)
        done.set()
        await loop
    else:
        if mode == "http":
            config, providers = _on_simulator(config, url)
        else:
            providers = build_providers(config)
        telemetry = OFF
        if any(k.startswith("OTEL_") for k in env):  # the traced variants: the SDK reads os.environ
            os.environ.update({k: v for k, v in env.items() if k.startswith("OTEL_")})
            telemetry = telemetry_from_env(env)
        try:
            async with running_worker(config, providers, telemetry) as worker:
                await sample(lambda: worker.tracker.in_flight)
        finally:
            telemetry.shutdown()
    return samples


class _RawResult(msgspec.Struct):
    job_id: str
    status: str
    output: str | None


class _RawCost(msgspec.Struct):
    job_id: str
    attempt: int
    cost_usd: float


async def _raw_loop(
    kafka: KafkaConfig, done: asyncio.Event, cost_events: bool = False, stop_after: int | None = None
) -> None:
    """The floor: per batch, decode every job, send one result each (and a cost event each to the
    costs topic with `cost_events`, the outputs the worker writes), await the acks, commit. Until
    `done` is set, or (`stop_after`) that many jobs are done."""
    consumer = make_consumer(kafka, kafka.topics.jobs)
    producer = make_producer(kafka)
    decoder, encoder = msgspec.json.Decoder(Job), msgspec.json.Encoder()
    await producer.start()
    await consumer.start()
    taken = 0
    try:
        while not done.is_set() and (stop_after is None or taken < stop_after):
            batch = await consumer.getmany(timeout_ms=200, max_records=1000)
            sent = []
            for records in batch.values():
                for record in records:
                    job = decoder.decode(record.value)
                    if cost_events:
                        sent.append(
                            await producer.send(
                                kafka.topics.costs, encoder.encode(_RawCost(job.id, 1, 0.0)), key=record.key
                            )
                        )
                    sent.append(
                        await producer.send(
                            kafka.topics.results, encoder.encode(_RawResult(job.id, "ok", job.prompt)), key=record.key
                        )
                    )
            await asyncio.gather(*sent)
            if batch:
                await consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})
            taken += sum(len(records) for records in batch.values())
    finally:
        await consumer.stop()
        await producer.stop()


def _on_simulator(config: Config, url: str) -> tuple[Config, Providers]:
    providers, keys = {}, {}
    for name, provider in config.providers.items():
        providers[name], key_env = on_simulator(name, provider, url)
        keys[key_env] = SIMULATOR_KEY
    config = msgspec.structs.replace(config, providers=providers)
    return config, build_providers(config, env=keys)


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cpu_s(pid: int) -> float:
    """A process's CPU time (user + system) from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --- this process: topics, jobs, the reader ----------------------------------------------------


class _Results:
    """The results topic read from its start: each job id's first result record."""

    def __init__(self, kafka: KafkaConfig) -> None:
        self.records: dict[bytes, ConsumerRecord] = {}
        self._consumer: AIOKafkaConsumer = make_consumer(kafka, kafka.topics.results, group_id=None)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            for records in (await self._consumer.getmany(timeout_ms=100, max_records=10_000)).values():
                for record in records:
                    self.records.setdefault(record.key, record)

    async def until(self, count: int, alive: Callable[[], bool]) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while len(self.records) < count:
            if not alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{len(self.records)} of {count} results (consumer alive: {alive()})")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()


class _Phase(msgspec.Struct):
    results: dict[bytes, ConsumerRecord]
    samples: list[Sample]
    others: list[tuple[float, dict[str, float]]]  # (wall time, CPU seconds of the reader, broker, simulator)
    sent_ms: dict[bytes, float]  # paced jobs: when each was sent


Then = Callable[[KafkaConfig, _Results], Awaitable[dict[bytes, float]]]


async def _phase(
    mode: str, env: dict[str, str], url: str, jobs: list[Job], pids: dict[str, int], then: Then | None = None
) -> _Phase:
    """Produce the jobs, start the consumer's process, read results until each job has one (then `then`)."""
    kafka = load_config(env=env).kafka
    await create_topics(kafka, PARTITIONS)
    encoder = msgspec.json.Encoder()
    await produce(kafka, [(job.id.encode(), encoder.encode(job)) for job in jobs])
    reader = _Results(kafka)
    await reader.start()
    others: list[tuple[float, dict[str, float]]] = []

    async def sample_others() -> None:
        while True:
            others.append((time.time(), {name: _cpu_s(pid) for name, pid in pids.items()}))
            await asyncio.sleep(SAMPLE_S * 2)

    sampler = asyncio.create_task(sample_others())
    context = mp.get_context("spawn")
    stop = context.Event()
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(mode, env, url, stop, send), daemon=True)
    child.start()
    send.close()
    sent: dict[bytes, float] = {}
    try:
        await reader.until(len(jobs), child.is_alive)
        if then:
            sent = await then(kafka, reader)
    finally:
        stop.set()
        samples = await asyncio.to_thread(lambda: receive.recv() if receive.poll(60) else [])
        await asyncio.to_thread(child.join, 30)
        sampler.cancel()
        await reader.stop()
    return _Phase(reader.records, samples, others, sent)


async def _paced(kafka: KafkaConfig, reader: _Results) -> dict[bytes, float]:
    """PACED_PER_S jobs a second for PACED_S seconds; when each was sent (ms), once all have results."""
    producer = make_producer(kafka)
    encoder = msgspec.json.Encoder()
    sent: dict[bytes, float] = {}
    waiting = len(reader.records)
    await producer.start()
    try:
        started = time.monotonic()
        for tick in range(PACED_S * 10):
            await asyncio.sleep(max(0.0, started + tick / 10 - time.monotonic()))
            for i in range(PACED_PER_S // 10):
                key = f"p{tick}-{i}".encode()
                sent[key] = time.time() * 1000
                await producer.send(
                    kafka.topics.jobs,
                    encoder.encode(
                        Job(id=key.decode(), prompt=f"What is the capital of France? ({tick}-{i})", model=MODEL)
                    ),
                    key=key,
                )
        await producer.flush()
    finally:
        await producer.stop()
    await reader.until(waiting + len(sent), lambda: True)
    return sent


def _env(bootstrap: str, name: str, overrides: Mapping[str, object]) -> dict[str, str]:
    run_id = f"{name}-{uuid.uuid4().hex[:8]}"
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "LLM_ROUTER__KAFKA__GROUP_ID": f"bench-{run_id}",
        "LLM_ROUTER__KAFKA__SESSION_TIMEOUT_MS": "6000",
        "LLM_ROUTER__WORKER__SHUTDOWN_GRACE_S": "1",
        **{f"LLM_ROUTER__KAFKA__TOPICS__{t.upper()}": f"bench-{run_id}.{t}" for t in Topics.__struct_fields__},
        "LLM_ROUTER__WORKER__EVENT_LOOP": EVENT_LOOP,
        # One call a job: what is measured is the worker's path for a call, not a plan of several.
        "LLM_ROUTER__ROUTING__MAX_AGREEMENT": "1",
    } | {k: str(v) for k, v in overrides.items()}


def _jobs(prefix: str, count: int, **fields: object) -> list[Job]:
    return [Job(id=f"{prefix}{i}", prompt=f"What is the capital of France? ({i})", **fields) for i in range(count)]  # type: ignore[arg-type]  # fields: Job keywords


# --- figures -------------------------------------------------------------------------------------


def _at(points: list[tuple[float, float]], t: float) -> float:
    """The value at time t, interpolated between the samples around it."""
    before = max((p for p in points if p[0] <= t), default=points[0])
    after = min((p for p in points if p[0] >= t), default=points[-1])
    if after[0] == before[0]:
        return before[1]
    return before[1] + (after[1] - before[1]) * (t - before[0]) / (after[0] - before[0])


def _cores(phase: _Phase, t0: float, t1: float) -> dict[str, float]:
    """CPU seconds per second over [t0, t1]: the consumer's, and the reader's, broker's, simulator's."""
    series = {"consumer": [(s[0], s[1]) for s in phase.samples]}
    series |= {name: [(t, cpu[name]) for t, cpu in phase.others] for name in phase.others[0][1]}
    return {
        f"{name}_cores": round((_at(points, t1) - _at(points, t0)) / (t1 - t0), 2) for name, points in series.items()
    }


def _drain(name: str, phase: _Phase) -> Figure:
    """The backlog from the WARMUP-th result to the last (see the module's docstring)."""
    times = sorted(r.timestamp / 1000 for k, r in phase.results.items() if k not in phase.sent_ms)
    t0, t1 = times[WARMUP], times[-1]
    jobs = len(times) - 1 - WARMUP
    cpu = [(s[0], s[1]) for s in phase.samples]
    return {
        "bench": name,
        "jobs": jobs,
        "seconds": round(t1 - t0, 2),
        "jobs_per_s": round(jobs / (t1 - t0), 1),
        "cpu_us_per_job": round((_at(cpu, t1) - _at(cpu, t0)) / jobs * 1e6, 1),
    } | _cores(phase, t0, t1)


def _memory(phase: _Phase) -> Figure:
    """RSS after LONG_WARMUP results (buffers, caches and the collector's generations filled) and at the
    end of the LONG_JOBS after them: growth there would be a leak."""
    times = sorted(r.timestamp / 1000 for r in phase.results.values())
    rss = [(s[0], s[3]) for s in phase.samples]
    start, end = _at(rss, times[LONG_WARMUP]), _at(rss, times[-1])
    return {
        "bench": "worker_echo_memory",
        "jobs": len(times) - 1 - LONG_WARMUP,
        "rss_mb_first_result": round(_at(rss, times[0]), 1),
        "rss_mb_start": round(start, 1),
        "rss_mb_end": round(end, 1),
        "rss_growth_pct": round((end / start - 1) * 100, 1),
    }


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def _provider_ms(result: Result) -> float:
    """A job's time in the provider: its attempts' calls, as the worker timed them."""
    return sum(a.latency_ms for a in result.attempts)


def _http(phase: _Phase, name: str = "worker_http", jitter: float = CALL_JITTER) -> Figure:
    """The backlog's steady state: the middle 60% of its results (no ramp up, no draining tail)."""
    backlog = sorted((r for k, r in phase.results.items() if k not in phase.sent_ms), key=lambda r: r.timestamp)
    steady = backlog[len(backlog) // 5 : len(backlog) * 4 // 5]
    t0, t1 = steady[0].timestamp / 1000, steady[-1].timestamp / 1000
    rate = (len(steady) - 1) / (t1 - t0)
    in_flight_mean = statistics.fmean(s[2] for s in phase.samples if t0 <= s[0] <= t1)
    in_flight_max = max(s[2] for s in phase.samples)
    provider = [_provider_ms(_RESULT.decode(r.value)) for r in steady]
    cpu = [(s[0], s[1]) for s in phase.samples]
    rss_start, rss_peak = phase.samples[0][3], max(s[3] for s in phase.samples)
    return {
        "bench": name,
        "jobs": len(backlog),
        "call_s": CALL_S,
        "call_jitter": jitter,
        "steady_s": round(t1 - t0, 1),
        "max_in_flight_setting": HTTP_MAX_IN_FLIGHT,
        "in_flight": in_flight_max,
        "in_flight_mean": round(in_flight_mean),
        "jobs_per_s": round(rate, 1),
        "ratio_to_in_flight_per_latency": round(rate / (in_flight_mean / CALL_S), 3),
        "cpu_us_per_job": round((_at(cpu, t1) - _at(cpu, t0)) / (len(steady) - 1) * 1e6, 1),
        "provider_ms_p50": _pct(provider, 0.5),
        "provider_ms_p99": _pct(provider, 0.99),
        "failed": sum(_RESULT.decode(r.value).status != "ok" for r in backlog),
        "rss_mb_start": round(rss_start, 1),
        "rss_mb_peak": round(rss_peak, 1),
        "mb_per_1000_in_flight": round((rss_peak - rss_start) / in_flight_max * 1000, 2),
    } | _cores(phase, t0, t1)


def _latency(http: _Phase, raw: _Phase) -> Figure:
    """The paced jobs (moderate load, no backlog) after worker_http, and the same through the raw floor.

    p50_ms/p99_ms: a result's latency_ms (the worker's runner, from taking the job to its result)
    minus its attempts' latency_ms (the provider calls). kafka_to_kafka: from the job's send to the
    result's Kafka timestamp, minus the provider calls: everything the router adds, both Kafka hops
    (linger, broker, fetch) included; raw_kafka_to_kafka is that for the raw floor, the hops alone.
    """
    paced = [(record, _RESULT.decode(record.value)) for key, record in http.results.items() if key in http.sent_ms]
    provider = [_provider_ms(result) for _, result in paced]
    inside = [result.latency_ms - p for (_, result), p in zip(paced, provider, strict=True)]
    end_to_end = [
        record.timestamp - http.sent_ms[record.key] - p for (record, _), p in zip(paced, provider, strict=True)
    ]
    floor = [rec.timestamp - raw.sent_ms[key] for key, rec in raw.results.items() if key in raw.sent_ms]
    return {
        "bench": "latency",
        "source": f"paced {PACED_PER_S} jobs/s for {PACED_S} s after worker_http, calls of {CALL_S:g} s (median)",
        "jobs": len(paced),
        "provider_ms_p50": _pct(provider, 0.5),
        "p50_ms": _pct(inside, 0.5),
        "p99_ms": _pct(inside, 0.99),
        "kafka_to_kafka_p50_ms": _pct(end_to_end, 0.5),
        "kafka_to_kafka_p99_ms": _pct(end_to_end, 0.99),
        "raw_kafka_to_kafka_p50_ms": _pct(floor, 0.5),
        "raw_kafka_to_kafka_p99_ms": _pct(floor, 0.99),
    }


def _simulator_config(folder: Path) -> Path:
    """The simulator's models, MODEL answering in CALL_S (median; CALL_JITTER around it), without errors or limits."""
    config = load_simulator_config()
    model = msgspec.structs.replace(
        config.models[MODEL], latency_jitter=CALL_JITTER, output_tokens=1, requests_per_minute=0, tokens_per_minute=0
    )
    # With one output token the filler answer has a fixed length; the latency is per 100 output tokens.
    tokens = answer(model, SimRequest(model=MODEL, texts=["x"], max_tokens=1024), config.seed, Random(0)).output_tokens
    model = msgspec.structs.replace(model, latency_ms=CALL_S * 1000 * 100 / tokens)
    path = folder / "simulator.toml"
    path.write_text(
        dump_simulator_config(msgspec.structs.replace(config, latency_scale=1.0, models=config.models | {MODEL: model}))
    )
    return path


def echo_providers() -> dict[str, str]:
    """Env overrides that put the in-process echo provider behind every configured provider."""
    return {f"LLM_ROUTER__PROVIDERS__{name.upper()}__KIND": "echo" for name in load_config(env={}).providers}


async def _all(bootstrap: str, url: str, sink: str, pids: dict[str, int]) -> list[Figure]:
    providers = load_config(env={}).providers
    echo = echo_providers()
    # The floor and the untraced worker alternate ROUNDS times: each round's ratio is taken within the
    # round, and the figures are the median round's (the machine's speed drifts between phases).
    floors, workers, memories = [], [], []
    raw: _Phase | None = None
    for _ in range(ROUNDS):
        phase = await _phase(
            "raw",
            _env(bootstrap, "raw", {}),
            url,
            _jobs("r", WARMUP + RAW_JOBS),
            pids,
            then=_paced if raw is None else None,
        )
        raw = raw or phase  # the first round's paced jobs are the latency figure's floor
        floors.append(_drain("raw_floor", phase))
        # Telemetry off, the long run: also the memory figure.
        phase = await _phase("echo", _env(bootstrap, "echo", echo), url, _jobs("e", LONG_WARMUP + LONG_JOBS), pids)
        worker = _drain("worker_echo", phase)
        workers.append(
            worker
            | {
                "ratio_to_raw_floor": round(worker["jobs_per_s"] / floors[-1]["jobs_per_s"], 3),
                "ratio_to_untraced": 1.0,
            }
        )
        memories.append(_memory(phase))
    assert raw is not None
    raw_two = await _phase("raw_two", _env(bootstrap, "raw_two", {}), url, _jobs("w", WARMUP + RAW_JOBS), pids)
    traced = {}
    for name, ratio in (("worker_echo_traced", "1.0"), ("worker_echo_traced_1pct", "0.01")):
        # Traces and metrics over OTLP/HTTP to a stand-in collector that answers 200 (scripts/otlp_sink.py).
        otel = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": ratio,
            "OTEL_SERVICE_NAME": "llm-router-bench",
        }
        traced[name] = await _phase("echo", _env(bootstrap, name, echo | otel), url, _jobs("t", WARMUP + JOBS), pids)
    http_env = {"LLM_ROUTER__WORKER__MAX_IN_FLIGHT": HTTP_MAX_IN_FLIGHT} | {
        f"LLM_ROUTER__PROVIDERS__{n.upper()}__MAX_CONNECTIONS": HTTP_MAX_IN_FLIGHT + 500 for n in providers
    }
    http = await _phase(
        "http", _env(bootstrap, "http", http_env), url, _jobs("h", HTTP_JOBS, model=MODEL), pids, then=_paced
    )
    # The same without jitter: every call exactly CALL_S (see CALL_JITTER).
    await asyncio.to_thread(_set_jitter, url, 0.0)
    lockstep = await _phase(
        "http", _env(bootstrap, "http_lockstep", http_env), url, _jobs("l", HTTP_JOBS, model=MODEL), pids
    )
    await asyncio.to_thread(_set_jitter, url, CALL_JITTER)
    floor = _median_round(floors, "jobs_per_s")
    worker = _median_round(workers, "ratio_to_raw_floor")
    floor_two = _drain("raw_floor_with_cost_events", raw_two)
    floor_two["ratio_to_raw_floor"] = round(floor_two["jobs_per_s"] / floor["jobs_per_s"], 3)
    worker["ratio_to_raw_floor_with_cost_events"] = round(worker["jobs_per_s"] / floor_two["jobs_per_s"], 3)
    traced_figures = [_drain(name, phase) for name, phase in traced.items()]
    for figure in traced_figures:
        figure["ratio_to_raw_floor"] = round(figure["jobs_per_s"] / floor["jobs_per_s"], 3)
        figure["ratio_to_untraced"] = round(figure["jobs_per_s"] / worker["jobs_per_s"], 3)
        figure["ratio_to_raw_floor_with_cost_events"] = round(figure["jobs_per_s"] / floor_two["jobs_per_s"], 3)
    # Memory: the round that grew most.
    memory = max(memories, key=lambda m: m["rss_growth_pct"]) | {
        "rounds_rss_growth_pct": [m["rss_growth_pct"] for m in memories]
    }
    return [
        floor,
        floor_two,
        worker,
        *traced_figures,
        memory,
        _http(http),
        _http(lockstep, "worker_http_lockstep", 0.0),
        _latency(http, raw),
    ]


def _set_jitter(url: str, jitter: float) -> None:
    """Change MODEL's latency jitter in the running simulator."""
    request = urllib.request.Request(
        f"{url}/_sim/models/{MODEL}",
        data=msgspec.json.encode({"latency_jitter": jitter}),
        method="PATCH",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 200:
            raise RuntimeError(f"the simulator refused the jitter change: {response.status}")


def _median_round(figures: list[Figure], by: str) -> Figure:
    """The round whose `by` is the median (the lower middle one for an even count), with every round's
    jobs/s and `by` beside it."""
    ordered = sorted(figures, key=lambda f: f[by])
    median = dict(ordered[(len(ordered) - 1) // 2])
    median["rounds"] = len(figures)
    median["rounds_jobs_per_s"] = [f["jobs_per_s"] for f in figures]
    if by != "jobs_per_s":
        median[f"rounds_{by}"] = [f[by] for f in figures]
    return median


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        simulator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worker",
                "simulate",
                "--port",
                str(port),
                "--config",
                str(_simulator_config(Path(folder))),
                "--event-loop",
                EVENT_LOOP,
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sink_port = free_port()
        sink = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "otlp_sink.py"), str(sink_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        broker = None if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else EmbeddedBroker()
        try:
            wait_for_port("127.0.0.1", port, 30, simulator)
            wait_for_port("127.0.0.1", sink_port, 30, sink)
            bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or broker.start()  # type: ignore[union-attr]  # broker is set when the variable is not
            pids = {"reader": os.getpid(), "simulator": simulator.pid}
            if broker and broker._process:
                pids["broker"] = broker._process.pid
            return asyncio.run(_all(bootstrap, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{sink_port}", pids))
        finally:
            for process in (simulator, sink):
                process.terminate()
                process.wait(timeout=10)
            if broker:
                broker.stop()
