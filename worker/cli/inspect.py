"""The commands that read the topics: `results` (follow, find by id, summary), `costs`, `spend`, `dlq` and
`topics list`.

Each one waits at most `--timeout` seconds for a broker (BrokerUnavailable: one line, exit 1), then reads a topic
from its beginning to the end offsets it had at start, so that its answer is of a fixed moment.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from worker import runtime
from worker.cli.tables import (
    escape,
    format_dead_letter,
    format_result,
    spend_lines,
    sum_costs,
    sum_spend,
    summarize_results,
    summary_lines,
    table,
)
from worker.config import Config, KafkaConfig, load_config
from worker.messages import CostEvent, DeadLetter, Result
from worker.pipeline.budgets import DAY_SLACK_S, Budgets, utc_day
from worker.pipeline.kafka import BrokerUnavailable, make_consumer, topic_partitions, wait_for_broker


class UsageError(Exception):
    """A command given options that do not go together, or an input it cannot read: one line, exit 2."""


class TopicMissing(Exception):
    """The topic a command reads does not exist on the broker: one line, exit 1."""


def load(args: argparse.Namespace) -> Config:
    """The configuration named by --config (default: $LLM_ROUTER_CONFIG, else the shipped one)."""
    return load_config(args.config)


def timeout_of(args: argparse.Namespace, config: Config) -> float:
    """--timeout, else kafka.connect_timeout_s."""
    return args.timeout if args.timeout is not None else config.kafka.connect_timeout_s


@asynccontextmanager
async def started(make: Callable[[], Any], kafka: KafkaConfig, timeout_s: float) -> AsyncIterator[Any]:
    """A producer or consumer, made by `make` once a broker answers and started, all within `timeout_s`; stopped
    after. (Made only then: a client made and never started or stopped complains when collected.)"""
    deadline = time.monotonic() + timeout_s
    await wait_for_broker(kafka, timeout_s)
    client = make()
    try:
        async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
            await client.start()
    except TimeoutError:
        await client.stop()
        raise BrokerUnavailable(
            f"the Kafka broker at {kafka.bootstrap_servers} did not serve within {timeout_s:g} s"
        ) from None
    except BaseException:
        await client.stop()
        raise
    try:
        yield client
    finally:
        await client.stop()


def _reader(kafka: KafkaConfig) -> Callable[[], AIOKafkaConsumer]:
    """A consumer outside any group, for reading a topic from its beginning."""
    return lambda: make_consumer(kafka, group_id=None, auto_offset_reset="earliest")


async def end_offsets(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], timeout_s: float
) -> dict[TopicPartition, int]:
    """Each partition's end offset, as a fetch reports it (the high watermark); the consumer is left assigned to
    `partitions` at positions of no use.

    The offsets the broker lists are not enough alone: the embedded broker (Tansu) lists the base offset of the
    last batch + 1, short of the end when that batch holds several records. A fetch from just before the listed
    end reports the true one, on any broker."""
    listed = await consumer.end_offsets(partitions)
    consumer.assign(partitions)
    probed = [tp for tp in partitions if listed[tp] > 0]
    for tp in probed:
        consumer.seek(tp, listed[tp] - 1)
    deadline = time.monotonic() + timeout_s
    while unknown := [tp for tp in probed if consumer.highwater(tp) is None]:
        if time.monotonic() > deadline:
            raise BrokerUnavailable(f"no fetch answer for {unknown[0].topic} within {timeout_s:g} s")
        await consumer.getmany(*unknown, timeout_ms=200)
    return {tp: max(listed[tp], consumer.highwater(tp) or 0) for tp in partitions}


async def assign_all(
    consumer: AIOKafkaConsumer, kafka: KafkaConfig, topic: str, timeout_s: float
) -> dict[TopicPartition, int]:
    """Assign every partition of `topic` from its beginning; their end offsets now. TopicMissing when there is
    no such topic."""
    ends = await _assign(consumer, kafka, topic, timeout_s)
    await consumer.seek_to_beginning(*ends)
    return ends


async def _assign(
    consumer: AIOKafkaConsumer, kafka: KafkaConfig, topic: str, timeout_s: float
) -> dict[TopicPartition, int]:
    """Assign every partition of `topic`; their end offsets now. TopicMissing when there is no such topic."""
    found = await topic_partitions(kafka, [topic])
    if topic not in found:
        raise TopicMissing(f"topic {topic} does not exist (llm-router topics create makes it)")
    partitions = [TopicPartition(topic, p) for p in found[topic]]
    ends = await end_offsets(consumer, partitions, timeout_s)
    consumer.assign(partitions)  # anew: the probe's fetched records and positions are dropped
    return ends


async def read_to_end(
    consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int], idle_timeout_s: float
) -> AsyncIterator[ConsumerRecord]:
    """The assigned partitions' records up to `ends`; BrokerUnavailable when none comes for `idle_timeout_s`
    while some are still due (the broker went away)."""
    partitions = list(ends)
    due = {tp for tp in partitions if await consumer.position(tp) < ends[tp]}
    idle_since = time.monotonic()
    while due:
        batch = await consumer.getmany(*due, timeout_ms=500)
        for tp, records in batch.items():
            for record in records:
                if record.offset < ends[tp]:
                    yield record
        for tp in list(due):
            if await consumer.position(tp) >= ends[tp]:
                due.discard(tp)
        if batch:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > idle_timeout_s:
            raise BrokerUnavailable(f"reading {partitions[0].topic}: no record for {idle_timeout_s:g} s")


def _print(line: str, stream: Any = None) -> None:
    print(line, file=stream or sys.stdout)


# -- results --------------------------------------------------------------------------------------------------------


def cmd_results(args: argparse.Namespace) -> int:
    """`results`: follow the topic, or find JOB_IDs (--follow: wait for them), or --summary."""
    if args.summary and args.job_ids:
        raise UsageError("results: --summary reads the whole topic; give it no JOB_ID")
    if args.follow and not args.job_ids:
        raise UsageError("results: --follow waits for the JOB_IDs given; without any, results follows the topic")
    config = load(args)
    timeout_s = timeout_of(args, config)
    if args.job_ids:
        job = _find_results(config, args.job_ids, timeout_s, args.follow, args.json)
    elif args.summary:
        job = _summarize(config, timeout_s, args.json)
    else:
        job = _follow_results(config, args, timeout_s)
    return runtime.run(job, config.worker.event_loop)


def _result_line(record: ConsumerRecord, result: Result | None, as_json: bool) -> str:
    if as_json:
        return record.value.decode(errors="replace")
    if result is None:
        return f"(offset {record.offset}: not a result)"
    return format_result(result)


async def _follow_results(config: Config, args: argparse.Namespace, timeout_s: float) -> int:
    decoder = msgspec.json.Decoder(Result)
    reset = "latest" if args.from_end else "earliest"
    make = functools.partial(make_consumer, config.kafka, group_id=None, auto_offset_reset=reset)
    async with started(make, config.kafka, timeout_s) as consumer:
        consumer.subscribe([config.kafka.topics.results])
        seen = 0
        while not args.count or seen < args.count:
            batch = await consumer.getmany(timeout_ms=int(args.idle_timeout * 1000) if args.idle_timeout else 1000)
            if not batch and args.idle_timeout:
                break
            for records in batch.values():
                for record in records:
                    _print(_result_line(record, _decode(decoder, record.value), args.json))
                    seen += 1
                    if args.count and seen >= args.count:
                        break
            sys.stdout.flush()
    return 0


def _decode(decoder: msgspec.json.Decoder, value: bytes | None) -> Any:
    try:
        return decoder.decode(value or b"")
    except msgspec.DecodeError:
        return None


async def _find_results(config: Config, job_ids: list[str], timeout_s: float, follow: bool, as_json: bool) -> int:
    """Print the result of each id found on the results topic (to its end offsets at start; with `follow`, until
    `timeout_s` from now); a line on stderr per id not found, exit 1."""
    deadline = time.monotonic() + timeout_s
    decoder = msgspec.json.Decoder(Result)
    missing = dict.fromkeys(job_ids)  # in the order given
    keys = {job_id.encode() for job_id in job_ids}

    def take(record: ConsumerRecord) -> None:
        if record.key is not None and record.key not in keys:
            return  # a result is keyed by its job id: no need to decode the others
        result = _decode(decoder, record.value)
        if result is not None and result.job_id in missing:
            del missing[result.job_id]
            _print(_result_line(record, result, as_json))
            sys.stdout.flush()

    topic = config.kafka.topics.results
    async with started(_reader(config.kafka), config.kafka, timeout_s) as consumer:
        ends = await assign_all(consumer, config.kafka, topic, timeout_s)
        async for record in read_to_end(consumer, ends, timeout_s):
            take(record)
            if not missing:
                return 0
        while follow and missing and (left := deadline - time.monotonic()) > 0:
            batch = await consumer.getmany(timeout_ms=int(min(left, 1.0) * 1000))
            for records in batch.values():
                for record in records:
                    take(record)
    for job_id in missing:
        _print(f"llm-router: {escape(job_id)}: no result on {topic}", sys.stderr)
    return 1 if missing else 0


async def _summarize(config: Config, timeout_s: float, as_json: bool) -> int:
    decoder = msgspec.json.Decoder(Result)
    results: list[Result] = []
    undecodable = 0
    async with started(_reader(config.kafka), config.kafka, timeout_s) as consumer:
        ends = await assign_all(consumer, config.kafka, config.kafka.topics.results, timeout_s)
        async for record in read_to_end(consumer, ends, timeout_s):
            result = _decode(decoder, record.value)
            if result is None:
                undecodable += 1
            else:
                results.append(result)
    summary = summarize_results(results, undecodable)
    if as_json:
        _print(orjson.dumps(summary).decode())
    else:
        for line in summary_lines(summary):
            _print(line)
    return 0


# -- costs and dead letters -----------------------------------------------------------------------------------------


def cmd_costs(args: argparse.Namespace) -> int:
    """`costs --by model|tenant|task`: sums of the costs topic per group."""
    config = load(args)
    return runtime.run(_costs(config, timeout_of(args, config), args.by, args.json), config.worker.event_loop)


async def _costs(config: Config, timeout_s: float, by: str, as_json: bool) -> int:
    decoder = msgspec.json.Decoder(CostEvent)
    events: list[CostEvent] = []
    async with started(_reader(config.kafka), config.kafka, timeout_s) as consumer:
        ends = await assign_all(consumer, config.kafka, config.kafka.topics.costs, timeout_s)
        async for record in read_to_end(consumer, ends, timeout_s):
            event = _decode(decoder, record.value)
            if event is not None:
                events.append(event)
    rows, total = sum_costs(events, by)
    if as_json:
        _print(orjson.dumps({"by": by, "groups": rows, "total": total}).decode())
        return 0
    columns = [by, "jobs", "attempts", "cost_usd", "input_tokens", "output_tokens"]
    for line in table(columns, [[row[c] for c in columns] for row in [*rows, total]]):
        _print(line)
    return 0


def cmd_spend(args: argparse.Namespace) -> int:
    """`spend [--day YYYY-MM-DD]`: a UTC day's spend by tenant and model, each tenant beside its budget."""
    config = load(args)
    day = args.day or datetime.now(UTC).date()
    return runtime.run(_spend(config, timeout_of(args, config), day, args.json), config.worker.event_loop)


async def _spend(config: Config, timeout_s: float, day: date, as_json: bool) -> int:
    decoder = msgspec.json.Decoder(CostEvent)
    events: list[CostEvent] = []
    async with started(_reader(config.kafka), config.kafka, timeout_s) as consumer:
        ends = await assign_day(consumer, config.kafka, config.kafka.topics.costs, day, timeout_s)
        async for record in read_to_end(consumer, ends, timeout_s):
            event = _decode(decoder, record.value)
            if event is not None and utc_day(event.ts) == day:
                events.append(event)
    tenants = sum_spend(events, Budgets(config).of)
    if as_json:
        for row in tenants:
            _print(orjson.dumps({"day": day.isoformat(), **row}).decode())
        return 0
    _print(f"spend of {day.isoformat()} (UTC)")
    for line in spend_lines(tenants):
        _print(line)
    return 0


async def assign_day(
    consumer: AIOKafkaConsumer, kafka: KafkaConfig, topic: str, day: date, timeout_s: float
) -> dict[TopicPartition, int]:
    """Assign every partition of `topic` at the first record of the UTC `day` (`offsets_for_times`); the offset
    each one's records of the day end before. Both bounds are DAY_SLACK_S wide (an event's `ts` is taken before
    its record is sent): the reader keeps the events whose `ts` is of the day. TopicMissing without the topic."""
    ends = await _assign(consumer, kafka, topic, timeout_s)
    partitions = list(ends)
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    slack = timedelta(seconds=DAY_SLACK_S)
    starts = await consumer.offsets_for_times(dict.fromkeys(partitions, _ms(midnight - slack)))
    nexts = await consumer.offsets_for_times(dict.fromkeys(partitions, _ms(midnight + timedelta(days=1) + slack)))
    bounds = {}
    for tp in partitions:
        start, after = starts.get(tp), nexts.get(tp)
        # No record from then on: nothing of the day (start), or the day runs to the end (after). A broker that
        # answers with no timestamp (Tansu) says nothing: from the beginning, to the end.
        first = ends[tp] if start is None else start.offset if start.timestamp >= 0 else 0
        bounds[tp] = ends[tp] if after is None or after.timestamp < 0 else min(after.offset, ends[tp])
        consumer.seek(tp, min(first, bounds[tp]))
    return bounds


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def cmd_dlq(args: argparse.Namespace) -> int:
    """`dlq`: each dead letter with its reason, read from its headers."""
    config = load(args)
    return runtime.run(_dlq(config, timeout_of(args, config), args.json), config.worker.event_loop)


async def _dlq(config: Config, timeout_s: float, as_json: bool) -> int:
    rows: list[dict[str, Any]] = []
    async with started(_reader(config.kafka), config.kafka, timeout_s) as consumer:
        ends = await assign_all(consumer, config.kafka, config.kafka.topics.dlq, timeout_s)
        async for record in read_to_end(consumer, ends, timeout_s):
            try:
                letter = DeadLetter.from_headers(record.headers)
            except msgspec.ValidationError as exc:
                rows.append(
                    {
                        "partition": record.partition,
                        "offset": record.offset,
                        "error_kind": "?",
                        "error": f"no dead-letter headers: {exc}",
                    }
                )
                continue
            rows.append(format_dead_letter(record.offset, record.partition, letter))
    if as_json:
        for row in rows:
            _print(orjson.dumps(row).decode())
        return 0
    columns = [
        "partition",
        "offset",
        "error_kind",
        "source_topic",
        "source_partition",
        "source_offset",
        "size",
        "error",
    ]
    for line in table(columns, [[row.get(c) for c in columns] for row in rows]):
        _print(line)
    return 0


# -- topics list ----------------------------------------------------------------------------------------------------


def cmd_topics_list(args: argparse.Namespace) -> int:
    """`topics list`: each configured topic, whether it exists, its partitions and end offsets, and the
    group's committed offsets and lag on the jobs topic."""
    config = load(args)
    return runtime.run(_topics_list(config, timeout_of(args, config), args.json), config.worker.event_loop)


async def _topics_list(config: Config, timeout_s: float, as_json: bool) -> int:
    kafka = config.kafka
    names = list(msgspec.structs.asdict(kafka.topics).values())
    # A consumer of the group that never subscribes: it reads the group's commits without joining it.
    rows = []
    async with started(lambda: make_consumer(kafka, enable_auto_commit=False), kafka, timeout_s) as consumer:
        partitions = await topic_partitions(kafka, names)
        for name in names:
            rows.append(await _topic_row(consumer, name, partitions.get(name), name == kafka.topics.jobs, timeout_s))
    if as_json:
        _print(orjson.dumps({"group": kafka.group_id, "topics": rows}).decode())
        return 0
    columns = ["topic", "exists", "partitions", "end_offsets", "committed", "lag"]
    for line in table(columns, [[_yes_no(row[c]) for c in columns] for row in rows]):
        _print(line)
    _print(f"(committed and lag: group {escape(kafka.group_id)} on {escape(kafka.topics.jobs)})")
    return 0


async def _topic_row(
    consumer: AIOKafkaConsumer, name: str, numbers: list[int] | None, of_group: bool, timeout_s: float
) -> dict[str, Any]:
    """A topic's row: `numbers` are its partitions, None when it does not exist."""
    row: dict[str, Any] = {"topic": name, "exists": numbers is not None, "partitions": None, "end_offsets": None}
    row |= {"committed": None, "lag": None}
    if numbers is None:
        return row
    partitions = [TopicPartition(name, p) for p in numbers]
    ends = await end_offsets(consumer, partitions, timeout_s) if partitions else {}
    row |= {"partitions": len(partitions), "end_offsets": sum(ends.values())}
    if of_group:
        committed = {tp: await consumer.committed(tp) for tp in partitions}
        row["committed"] = sum(offset or 0 for offset in committed.values())
        # A partition the group never committed is lagging by all of it (the worker starts at its beginning).
        row["lag"] = sum(ends[tp] - (committed[tp] or 0) for tp in partitions)
    return row


def _yes_no(value: object) -> object:
    return ("yes" if value else "no") if isinstance(value, bool) else value
