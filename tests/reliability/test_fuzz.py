"""Fuzzing the intake: random bytes and mutated jobs never make decode_job raise, and through a real
worker every such message ends as a result or a dead letter, none missing, the worker never crashing.

The messages sent through the worker come from the same Hypothesis strategies, harvested by a
`@given` run with `derandomize=True` (a fixed seed from the function's digest) and no example
database: the same few hundred messages every run, without `.example()` (which is random and meant
for the REPL), so a failure replays exactly.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import msgspec
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.integration.helpers import Setup, collect, make_topics
from tests.reliability.helpers import crashes, starts, wait_committed
from worker.messages import Job
from worker.pipeline.intake import Rejection, decode_job
from worker.pipeline.kafka import make_producer

ID = "__ID__"  # replaced by a unique id per message sent through the worker
LIMITS = (64, 4096, 1024 * 1024, 1024 * 1024)  # mostly the default, so that big inputs get decoded
FIELDS = tuple(f.name for f in msgspec.structs.fields(Job))
TASKS = ("simple_qa", "summarization", "code_generation", "complex_reasoning", "creative_writing", "long_context")
MODELS = ("gpt-4o", "claude-3-5-sonnet", "gemini-2.5-flash", "llama-4-70b")
PROVIDERS = ("openai", "anthropic", "gemini", "llama")
# Regular expressions a job may carry in checks.regex: fine, invalid, and hostile to re.compile.
REGEXES = ("capital", r"^\[", ".*", "(", "[z-a]", "a{99999999999}", "(" * 600 + ")" * 600, "(?P<x>a)(?P=y)", "\\")
FUZZ = settings(
    max_examples=1000,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10,
)
chat = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=40)}),
    min_size=1,
    max_size=3,
)
checks = st.fixed_dictionaries(
    {},
    optional={
        "expected": st.text(max_size=20),
        "regex": st.sampled_from(["capital", r"^\[", ".*"]),
        "json_schema": st.just({"type": "string"}),
    },
)
optional_fields = st.fixed_dictionaries(
    {},
    optional={
        "task": st.sampled_from(TASKS),
        "accuracy_floor": st.floats(min_value=0, max_value=0.9),
        "latency_budget_ms": st.integers(min_value=1000, max_value=600_000),
        "cost_cap_usd": st.floats(min_value=0.001, max_value=10),
        "max_output_tokens": st.integers(min_value=1, max_value=4096),
        "allowed_providers": st.lists(st.sampled_from(PROVIDERS), min_size=1, max_size=4, unique=True),
        "model": st.sampled_from(MODELS),
        "tenant": st.text(max_size=10),
        "priority": st.integers(min_value=-10, max_value=10),
        "checks": checks,
        "response_format": st.sampled_from(["text", "json"]),
        "metadata": st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    },
)
valid_jobs = st.builds(
    lambda body, extra: {"id": ID, **body, **extra},
    st.one_of(
        st.fixed_dictionaries({"prompt": st.text(min_size=1, max_size=80).filter(str.strip)}),
        st.fixed_dictionaries({"messages": chat.filter(lambda messages: any(m["content"].strip() for m in messages))}),
    ),
    optional_fields,
)


def nested(depth: int, kind: str) -> str:
    """A marker for `depth` levels of nested arrays or objects: spliced in after encoding (json.dumps
    itself recurses, so it cannot write them)."""
    return f"__NEST_{depth}_{kind}__"


def splice_nesting(encoded: str) -> str:
    import re

    def deep(match: re.Match) -> str:
        depth, kind = int(match.group(1)), match.group(2)
        return "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "{}" + "}" * depth

    return re.sub(r'"__NEST_(\d+)_(list|dict)__"', deep, encoded)


def some_key(draw, job: dict) -> str:
    return draw(st.sampled_from(sorted(job))) if job and draw(st.booleans()) else draw(st.sampled_from(FIELDS))


def drop(draw, job):
    if job:
        del job[draw(st.sampled_from(sorted(job)))]


def rename(draw, job):
    if job:
        key = draw(st.sampled_from(sorted(job)))
        job[
            draw(
                st.one_of(
                    st.sampled_from(["Id", "ID", "prompts", "message", "Task", "model_name", "", " id"]),
                    st.text(max_size=8),
                )
            )
        ] = job.pop(key)


def wrong_type(draw, job):
    job[some_key(draw, job)] = draw(json_values)


def huge_string(draw, job):
    job[some_key(draw, job)] = draw(st.sampled_from(["x", "é", "😀", "\u0000", "\\"])) * draw(
        st.integers(min_value=1000, max_value=40_000)
    )


def unicode_text(draw, job):
    job[some_key(draw, job)] = draw(st.text(st.characters(codec=None, exclude_categories=()), min_size=1, max_size=40))


def nested_junk(draw, job):
    depth = draw(
        st.sampled_from([1, 2, 10, 100, 300, 1000, 3000])
    )  # shallow, and past the recursion limits of parsers and validators
    junk = nested(depth, draw(st.sampled_from(["list", "dict"])))
    where = draw(st.sampled_from(["metadata", "checks.json_schema", "messages", "field"]))
    if where == "metadata":
        job["metadata"] = {"junk": junk}
    elif where == "checks.json_schema":
        job["checks"] = {"json_schema": junk}
    elif where == "messages":
        job["messages"] = [{"role": "user", "content": junk}]
    else:
        job[some_key(draw, job)] = junk


def hostile_checks(draw, job):
    job["checks"] = draw(
        st.one_of(
            st.fixed_dictionaries({"regex": st.one_of(st.sampled_from(REGEXES), st.text(max_size=20))}),
            st.fixed_dictionaries({"json_schema": json_values}),
            st.fixed_dictionaries(
                {
                    "json_schema": st.fixed_dictionaries(
                        {"type": st.text(max_size=10), "pattern": st.sampled_from(REGEXES)}
                    )
                }
            ),
        )
    )


def odd_numbers(draw, job):
    number_fields = ["accuracy_floor", "latency_budget_ms", "cost_cap_usd", "max_output_tokens", "priority"]
    job[draw(st.sampled_from(number_fields))] = draw(
        st.sampled_from([2**64, -(2**63) - 1, 10**40, 1e308, -0.0, -1, 0, 1.5, True])
    )


def extra_field(draw, job):
    job[draw(st.text(max_size=12))] = draw(json_values)


# The hostile ones twice: what a parser or validator may choke on gets tried more often.
MUTATIONS = (
    drop,
    rename,
    wrong_type,
    huge_string,
    unicode_text,
    nested_junk,
    nested_junk,
    hostile_checks,
    hostile_checks,
    odd_numbers,
    extra_field,
)


@st.composite
def encoded(draw, job: dict) -> tuple[bytes, bool]:
    """The job as bytes, usually well-formed JSON, sometimes damaged; and whether it is plain JSON."""
    text = splice_nesting(json.dumps(job, ensure_ascii=draw(st.booleans())))
    data = text.encode("utf-8", "surrogatepass")  # lone surrogates become invalid UTF-8
    damage = draw(st.sampled_from(["none"] * 6 + ["truncate", "flip", "bom", "utf16", "array", "trailing"]))
    if damage == "truncate":
        data = data[: draw(st.integers(min_value=0, max_value=max(0, len(data) - 1)))]
    elif damage == "flip" and data:
        at = draw(st.integers(min_value=0, max_value=len(data) - 1))
        data = data[:at] + bytes([draw(st.integers(min_value=0, max_value=255))]) + data[at + 1 :]
    elif damage == "bom":
        data = b"\xef\xbb\xbf" + data
    elif damage == "utf16":
        data = text.encode("utf-16", "surrogatepass")
    elif damage == "array":
        data = b"[" + data + b"]"
    elif damage == "trailing":
        data = data + draw(st.sampled_from([b",", b"}", b" x", b"\x00", b"{}"]))
    return data, damage == "none"


@st.composite
def near_valid_jobs(draw) -> tuple[bytes, list[str], bool]:
    """A valid job with up to three mutations, encoded: (bytes, the mutations, whether plain JSON)."""
    job = draw(valid_jobs)
    applied = []
    for mutation in draw(st.lists(st.sampled_from(MUTATIONS), max_size=3)):
        mutation(draw, job)
        applied.append(mutation.__name__)
    data, plain = draw(encoded(job))
    return data, applied, plain


raw_messages = st.one_of(
    st.binary(max_size=2000),
    st.just(b""),
    st.none(),  # a tombstone
    json_values.map(lambda v: json.dumps(v).encode()),  # JSON, not a job
)


@FUZZ
@given(value=st.one_of(st.binary(max_size=4096), raw_messages), limit=st.sampled_from(LIMITS))
def test_decode_job_never_raises_on_random_bytes(value, limit):
    assert isinstance(decode_job(value, limit), (Job, Rejection))  # an exception escapes: Hypothesis reports each kind


@FUZZ
@given(case=near_valid_jobs(), limit=st.sampled_from(LIMITS))
def test_decode_job_never_raises_on_mutated_jobs_and_keeps_the_valid_ones(case, limit):
    value, applied, plain = case
    outcome = decode_job(value, limit)
    assert isinstance(outcome, (Job, Rejection))
    if not applied and plain and len(value) <= limit:
        assert isinstance(outcome, Job), f"an untouched valid job was rejected: {outcome}"
    if isinstance(outcome, Rejection):
        assert outcome.kind in ("not_json", "invalid_job", "too_large") and outcome.message


def harvest(strategy, count: int) -> list:
    """`count` values of `strategy`, the same every run (see the module's docstring)."""
    found: list = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def gather(value):
        found.append(value)

    gather()
    return found


MESSAGES = 300
MAX_JOB_BYTES = 16 * 1024


def decoded(messages: list[tuple[bytes, bytes | None]]) -> list[Job | Rejection]:
    return [decode_job(value, MAX_JOB_BYTES) for _, value in messages]


def readable_id(value: bytes | None) -> str | None:
    """The id a rejected message is answered under: a JSON object's printable `id` of 1-256 characters."""
    try:
        job_id = json.loads((value or b"").decode())["id"]  # UTF-8 only, as the worker reads it
    except Exception:
        return None
    return job_id if isinstance(job_id, str) and 0 < len(job_id) <= 256 and job_id.isprintable() else None


def test_every_fuzzed_message_through_the_worker_ends_as_a_result_or_a_dead_letter(
    bootstrap, replicas, report, summary
):
    cases = harvest(
        st.one_of(raw_messages.map(lambda v: (v, ["raw"], False)), near_valid_jobs(), near_valid_jobs()), MESSAGES
    )
    messages: list[tuple[bytes, bytes | None]] = []
    for n, (value, _, _) in enumerate(cases):
        unique = f"fuzz-{n:04d}"
        messages.append((unique.encode(), value.replace(ID.encode(), unique.encode()) if value is not None else None))
    setup = Setup(bootstrap, LLM_ROUTER__WORKER__MAX_JOB_BYTES=MAX_JOB_BYTES)
    worker = replicas.start(setup, "worker")

    async def scenario():
        await make_topics(setup, partitions=4)
        await worker.wait_assigned()
        producer = make_producer(setup.config.kafka)
        await producer.start()
        try:
            futures = [await producer.send(setup.topics.jobs, value, key=key) for key, value in messages]
            placed = [(m.partition, m.offset) for m in await asyncio.gather(*futures)]
        finally:
            await producer.stop()
        ends: dict[int, int] = {}
        for partition, offset in placed:
            ends[partition] = max(ends.get(partition, 0), offset + 1)
        seen = {"count": 0, "since": asyncio.get_running_loop().time()}
        # When to stop reading: a dead letter with a readable id comes with a result too.
        total = sum(1 + (isinstance(r, Rejection) and r.job_id is not None) for r in decoded(messages))

        def accounted(outputs) -> bool:  # every message answered, or nothing new for 15 s (stuck)
            now, count = asyncio.get_running_loop().time(), len(outputs.results) + len(outputs.letters)
            if count != seen["count"]:
                seen["count"], seen["since"] = count, now
            return count >= total or now - seen["since"] > 15

        outputs = await collect(setup, until=accounted, timeout_s=120, settle_s=1)
        positions, _ = await wait_committed(setup, ends, timeout_s=10)
        return placed, outputs, ends, positions

    placed, outputs, ends, positions = asyncio.run(scenario())
    alive = worker.process.poll() is None
    worker.stop()

    by_place = {place: (key, value) for place, (key, value) in zip(placed, messages, strict=True)}
    lettered: dict[tuple[int, int], str] = {}
    for letter, key, _ in outputs.letters:
        place = (letter.source_partition, letter.source_offset)
        assert letter.source_topic == setup.topics.jobs
        assert place in by_place and by_place[place][0] == key, (
            f"a dead letter for {place} carries key {key!r}, not the one sent there"
        )
        assert place not in lettered, f"two dead letters for {place}"
        lettered[place] = letter.error_kind
    expected_ids: Counter[str] = Counter()
    unanswered = []
    for place, (key, value) in by_place.items():
        if place in lettered:
            if lettered[place] in ("invalid_job", "too_large") and readable_id(value) is not None:
                expected_ids[readable_id(value)] += 1  # answered on the results topic too
            continue
        try:  # not dead-lettered: then it was a job, and its result carries the job's id
            expected_ids[json.loads(value)["id"]] += 1
        except Exception:
            unanswered.append((place, key, value[:120] if value else value))
    results = Counter(r.job_id for r in outputs.results)
    missing = {i: n - results[i] for i, n in expected_ids.items() if results[i] < n}
    unexpected = set(results) - set(expected_ids)
    worker_crashes = crashes(worker)
    kinds = Counter(lettered.values())
    statuses = Counter(r.status for r in outputs.results)
    summary(
        f"fuzz: messages={len(messages)} results={sum(results.values())} ({dict(statuses)}) "
        f"dead_letters={len(lettered)} {dict(kinds)} "
        f"missing={len(unanswered) + sum(missing.values())} crashes={len(worker_crashes)}"
    )
    report(
        f"fuzz through the worker: {len(messages)} messages harvested from Hypothesis (derandomized); "
        f"dead letters by kind {dict(kinds)}"
    )
    assert alive and starts(worker) == 1, f"the worker exited or restarted: {worker.log_path.read_text()[-3000:]}"
    assert not worker_crashes, (
        f"the worker crashed on {len(worker_crashes)} messages (their offsets stay uncommitted for good): "
        + "; ".join(str(c.get("exception", c.get("text", "")))[-300:] for c in worker_crashes[:3])
    )
    assert not unanswered, f"{len(unanswered)} messages are neither a dead letter nor a job: {unanswered[:3]}"
    assert not missing, f"{sum(missing.values())} jobs have no result: {dict(list(missing.items())[:5])}"
    assert not unexpected, f"results for ids that were never sent: {sorted(unexpected)[:5]}"
    assert positions == ends, f"the worker committed every partition to its end: {positions} vs {ends}"
