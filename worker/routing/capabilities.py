"""What a job needs of a model beyond text: tools, vision, a natively enforced JSON Schema. Pure.

The planner routes a job only to models whose configured `capabilities` hold all of its needs. A
non-strict schema needs nothing: every model is asked for JSON (natively where it has json_schema, else
by JSON mode with the schema in its instructions) and the answer is validated after. "seed" is not a
need: a model without it gets the job with its seed left out (`seed_dropped`).
"""

from __future__ import annotations

from worker.config import ModelConfig
from worker.messages import Job

_NOTHING: frozenset[str] = frozenset()


def needs(job: Job) -> frozenset[str]:
    """The capabilities a model must have to serve `job`: "tools" when it offers tools or its messages hold
    tool calls or tool results, "vision" when a message holds an image, "json_schema" when its
    `response_format` is a strict json_schema."""
    if job.messages is None and not job.tools and job.schema is None:  # most jobs: a plain prompt
        return _NOTHING
    needed = set()
    if job.tools:
        needed.add("tools")
    for message in job.messages or ():
        if message.tool_calls or message.role == "tool":
            needed.add("tools")
        if message.images():
            needed.add("vision")
    schema = job.schema
    if schema is not None and schema.strict:
        needed.add("json_schema")
    return frozenset(needed) if needed else _NOTHING


def seed_dropped(job: Job, model: ModelConfig) -> bool:
    """Whether the call of `model` for `job` leaves the job's seed out (the model has no "seed")."""
    return job.seed is not None and "seed" not in model.capabilities
