"""The record of finished job ids (worker/pipeline/dedupe.py): add, find, expire, bound, forget; and the finished
topic's records that list them."""

import tracemalloc

import msgspec
import pytest

from worker.pipeline.dedupe import IDS_PER_RECORD, Finished, FinishedBatch, FinishedIds, FinishedRecords, digest

NOW = 1_800_000_000
DAY = 86_400


def key(job_id: str) -> int:
    return digest(job_id)


def test_a_finished_id_is_found_with_where_its_record_is():
    ids = FinishedIds(window_s=DAY, max_ids=10)
    assert ids.add(key("job-1"), jobs_partition=3, timestamp_s=NOW, now_s=NOW, offset=41)
    assert ids.find(key("job-1"), NOW + 5) == Finished(jobs_partition=3, offset=41, timestamp_s=NOW)
    assert ids.find(key("job-2"), NOW + 5) is None
    assert len(ids) == 1


def test_the_first_record_of_an_id_stays():
    ids = FinishedIds(window_s=DAY, max_ids=10)
    assert ids.add(key("job-1"), 0, NOW, NOW, offset=7)
    assert not ids.add(key("job-1"), 0, NOW + 1, NOW + 1, offset=90), "a second record of the same id is ignored"
    assert ids.find(key("job-1"), NOW + 1).offset == 7


def test_a_record_written_here_has_no_offset_until_located():
    ids = FinishedIds(window_s=DAY, max_ids=10)
    ids.add(key("job-1"), 2, NOW, NOW)
    assert ids.find(key("job-1"), NOW).offset is None
    ids.locate(key("job-1"), 0)
    assert ids.find(key("job-1"), NOW) == Finished(jobs_partition=2, offset=0, timestamp_s=NOW)
    ids.locate(key("job-unknown"), 3)  # harmless
    assert len(ids) == 1


def test_ids_older_than_the_window_are_not_found_and_are_dropped():
    ids = FinishedIds(window_s=100, max_ids=10)
    assert not ids.add(key("old"), 0, NOW - 101, NOW, offset=1), "older than the window when loaded: not remembered"
    ids.add(key("a"), 0, NOW, NOW, offset=1)
    ids.add(key("b"), 0, NOW + 50, NOW + 50, offset=2)
    assert ids.find(key("a"), NOW + 100) is not None, "exactly at the window's edge: still within"
    assert ids.find(key("a"), NOW + 101) is None
    assert ids.expire(NOW + 101) == 1
    assert len(ids) == 1 and ids.find(key("b"), NOW + 101) is not None
    ids.add(key("c"), 0, NOW + 200, NOW + 200, offset=3)  # adding expires the old ones too
    assert len(ids) == 1 and ids.find(key("b"), NOW + 200) is None


def test_at_most_max_ids_the_oldest_forgotten_first():
    ids = FinishedIds(window_s=DAY, max_ids=3)
    for n in range(5):
        ids.add(key(f"job-{n}"), 0, NOW + n, NOW + n, offset=n)
    assert len(ids) == 3 and ids.evicted == 2
    assert [ids.find(key(f"job-{n}"), NOW + 5) is not None for n in range(5)] == [False, False, True, True, True]


def test_forget_drops_the_ids_of_revoked_jobs_partitions_only():
    ids = FinishedIds(window_s=DAY, max_ids=4)
    for n in range(4):
        ids.add(key(f"job-{n}"), n % 2, NOW, NOW, offset=n)
    assert ids.forget([1]) == 2
    assert ids.find(key("job-0"), NOW) and ids.find(key("job-2"), NOW)
    assert ids.find(key("job-1"), NOW) is None and ids.find(key("job-3"), NOW) is None
    assert ids.forget([]) == 0
    # The order is rebuilt too: the next evictions take the oldest remaining ids, in order.
    for n in range(4, 7):
        ids.add(key(f"job-{n}"), 0, NOW, NOW, offset=n)
    assert [ids.find(key(f"job-{n}"), NOW) is not None for n in (0, 2, 4, 5, 6)] == [False, True, True, True, True]


def test_a_forgotten_id_can_be_added_again():
    ids = FinishedIds(window_s=DAY, max_ids=1)
    ids.add(key("a"), 0, NOW, NOW, offset=1)
    ids.add(key("b"), 0, NOW, NOW, offset=2)
    assert ids.add(key("a"), 0, NOW + 1, NOW + 1, offset=3)
    assert ids.find(key("a"), NOW + 1).offset == 3 and ids.find(key("b"), NOW + 1) is None


def test_values_out_of_range_are_refused():
    ids = FinishedIds(window_s=DAY, max_ids=2)
    with pytest.raises(ValueError):
        ids.add(key("a"), 70_000, NOW, NOW, offset=1)
    with pytest.raises(ValueError):
        FinishedIds(window_s=0, max_ids=1)
    ids.add(key("big"), 65_535, NOW, NOW, offset=(1 << 48) - 2)
    assert ids.find(key("big"), NOW) == Finished(65_535, (1 << 48) - 2, NOW)


def test_digest_is_8_bytes_and_stable():
    assert digest("job-1") == digest("".join(["job", "-1"])) != digest("job-2")
    assert -(1 << 63) <= digest("job-1") < 1 << 63


def test_finished_records_list_ids_under_keys_never_repeated():
    records = FinishedRecords("llm.finished")
    first_key, first = records.make(3, ["a", "b"])
    second_key, second = records.make(3, ["c"])
    assert records.topic == "llm.finished"
    assert first_key != second_key, "compaction must never drop a record: each key is new"
    assert msgspec.json.decode(first) == {"jobs_partition": 3, "ids": ["a", "b"]}
    assert msgspec.json.decode(second, type=FinishedBatch) == FinishedBatch(jobs_partition=3, ids=["c"])
    assert FinishedRecords("llm.finished").make(3, ["a"])[0] != first_key, "nor another writer's"


def test_a_record_of_the_most_ids_of_the_longest_stays_under_a_megabyte():
    longest = ["\U0001f600" * 256 for _ in range(IDS_PER_RECORD)]  # 256 characters of 4 bytes each
    _, value = FinishedRecords("llm.finished").make(0, longest)
    assert len(value) < 1_000_000


def test_memory_per_remembered_id(report):
    """What an id costs (the figure docs/architecture.md gives for worker.dedupe_max_ids)."""
    count = 100_000
    job_ids = [f"01J9{n:024d}" for n in range(count)]  # the ids themselves are not kept
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    ids = FinishedIds(window_s=DAY, max_ids=count)
    for n, job_id in enumerate(job_ids):
        ids.add(digest(job_id), n % 12, NOW, NOW)  # no offset: only a read-back locates one
    per_id = (tracemalloc.get_traced_memory()[0] - before) / count
    tracemalloc.stop()
    report(f"dedupe: {per_id:.0f} bytes per remembered id ({per_id * 1_000_000 / 2**20:.0f} MiB at 1,000,000 ids)")
    assert len(ids) == count
