"""The routes a replica holds for its feedback partitions: the latest record of each job wins."""

import tracemalloc
import uuid
from datetime import UTC, datetime

import msgspec

from worker.messages import Route
from worker.pipeline.routes import RouteIndex, routes_partitions

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def route(job_id: str, model: str = "gpt-4o", **fields) -> Route:
    return Route(job_id=job_id, task="simple_qa", model=model, finished_at=NOW, **fields)


def test_co_partitioned_topics_read_the_same_partitions_else_all():
    assert routes_partitions({1, 3}, 4, 4) == {1, 3}
    assert routes_partitions({1}, 4, 6) == set(range(6))
    assert routes_partitions(set(), 4, 4) == set()


def test_the_latest_record_of_a_job_wins_and_a_tombstone_forgets_it():
    index = RouteIndex()
    index.hold([0, 2])
    index.put_record(0, b"a", msgspec.json.encode(route("a", "gemini-2.5-flash")))
    index.put_record(0, b"a", msgspec.json.encode(route("a", "gemini-2.5-flash", feedback=True)))
    index.put_record(2, None, msgspec.json.encode(route("b", agreed=["llama-4-70b"])))  # found by its job id
    assert index.get(0, "a") == route("a", "gemini-2.5-flash", feedback=True)
    assert index.get(2, "b").agreed == ["llama-4-70b"]
    assert index.get(2, "a") is None, "a job is looked for on its own partition"
    assert len(index) == 2
    index.put_record(0, b"a", None)
    assert index.get(0, "a") is None and len(index) == 1


def test_a_record_that_is_not_a_route_makes_its_job_unknown_and_a_keyless_one_changes_nothing():
    index = RouteIndex()
    index.hold([0])
    index.put(0, route("a"))
    index.put(0, route("b"))
    index.put_record(0, b"a", b'{"job_id": "a"}')
    index.put_record(0, None, b"not json")
    assert index.get(0, "a") is None, "a route that cannot be read is no route"
    assert index.get(0, "b") == route("b") and len(index) == 2


def test_partitions_not_held_keep_nothing_and_dropped_ones_are_forgotten():
    index = RouteIndex()
    index.hold([1])
    index.put_record(3, b"x", msgspec.json.encode(route("x")))
    index.put(3, route("y"))
    assert index.get(3, "x") is None and index.get(3, "y") is None and len(index) == 0
    index.put(1, route("z"))
    assert index.held() == {1}
    index.drop([1])
    assert index.held() == set() and index.get(1, "z") is None


def test_a_held_route_takes_a_few_hundred_bytes(report):
    index = RouteIndex()
    index.hold([0])
    routes = [route(str(uuid.UUID(int=i)), "gemini-2.5-flash") for i in range(20_000)]
    tracemalloc.start()
    try:
        for held in routes:  # the record's key and value, as the reader gets them, are what the index keeps
            index.put_record(0, held.job_id.encode(), msgspec.json.encode(held))
        per_route = tracemalloc.get_traced_memory()[0] / len(routes)
    finally:
        tracemalloc.stop()
    report(f"routes index: {per_route:.0f} bytes a route (a UUID job id, no agreeing models or judge)")
    assert len(index) == len(routes) and per_route < 600
