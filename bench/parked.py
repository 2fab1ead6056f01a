"""Parked jobs: what a replica holds in memory for the jobs parked for a provider's batch.

A parked job holds no task and no in-flight slot; the batch desk of the replica owning its batches partition
keeps its latest record (worker/pipeline/batches.py, `BatchesPartition`) until the job resumes. Figure
`parked_memory`: PARKED jobs of the shipped workload (their ids made unique), each with a deadline a day
away, run by the router (`JobRunner`, the echo providers with their batch APIs) until they park; their
records, encoded as on the topic, are read into a partition as the desk reads them, and the Python memory
that allocates (tracemalloc) is the figure, beside the bytes of the records on the topic.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from itertools import cycle, islice
from pathlib import Path

import msgspec

from bench.throughput import echo_providers
from worker.cli.evaluate import read_workload, with_directives
from worker.config import load_config
from worker.execution.runner import JobRunner, Parked
from worker.pipeline.batches import BatchesPartition
from worker.providers import batch_apis, build_providers

PARKED = 10_000
WORKLOAD = Path(__file__).resolve().parent / "workload.jsonl"
DAY_S = 86_400.0

Figure = dict[str, object]


def run() -> list[Figure]:
    records = asyncio.run(_parked_records())
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    partition = BatchesPartition()
    for key, value in records:
        partition.apply(key, value)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(partition.jobs) == PARKED
    on_topic = sum(len(value) for _, value in records)
    return [
        {
            "bench": "parked_memory",
            "parked_jobs": PARKED,
            "memory_bytes": held,
            "memory_bytes_per_job": round(held / PARKED),
            "record_bytes_per_job": round(on_topic / PARKED),
            "memory_to_record": round(held / on_topic, 2),
        }
    ]


async def _parked_records() -> list[tuple[str, bytes]]:
    """PARKED jobs parked by the router, as (key, record) on the batches topic."""
    env = echo_providers() | {
        f"LLM_ROUTER__PROVIDERS__{name.upper()}__BATCH_API": "true" for name in load_config(env={}).providers
    }
    config = load_config(env=env)
    clients = build_providers(config, env=env).clients
    discounts = {name: config.providers[name].batch_discount for name in batch_apis(config, clients)}
    runner = JobRunner(config, clients, batch_discounts=discounts)
    workload = read_workload(WORKLOAD)
    due = time.time() + DAY_S
    encoder = msgspec.json.Encoder()
    records = []
    for i, job in enumerate(islice(cycle(workload), PARKED)):
        task = job.id.rsplit("-", 1)[0]
        sent = msgspec.structs.replace(with_directives(job, task, complete_within_s=DAY_S), id=f"{job.id}-{i}")
        outcome = await runner.run(sent, due=due)
        if not isinstance(outcome, Parked):
            raise AssertionError(f"{sent.id} did not park: {outcome}")
        records.append((sent.id, encoder.encode(outcome.job)))
    return records
