"""Helpers shared by the unit tests of the attempt runner and of what it teaches (no Kafka)."""

import asyncio

from worker.execution.runner import JobOutcome, JobRunner
from worker.messages import Job


def run(runner: JobRunner, job: Job) -> JobOutcome:
    """Run one job to its outcome on a loop of its own."""
    return asyncio.run(runner.run(job))
