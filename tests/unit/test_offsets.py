"""The offset tracker: the committed position never passes an unfinished offset."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.pipeline.offsets import OffsetTracker, PartitionOffsets


def test_position_waits_for_the_first_unfinished_offset():
    p = PartitionOffsets()
    for offset in (10, 11, 12, 13):
        p.add(offset)
    assert p.position == 10
    p.finish(12)
    p.finish(11)
    assert p.position == 10
    p.finish(10)
    assert p.position == 13
    p.finish(13)
    assert p.position == 14
    assert p.pending == 0


def test_gaps_in_offsets_do_not_block_the_position():
    p = PartitionOffsets()
    for offset in (5, 9, 20):  # compacted topics and transaction markers leave gaps
        p.add(offset)
    p.finish(9)
    p.finish(5)
    assert p.position == 20
    p.finish(20)
    assert p.position == 21


def test_to_commit_only_when_the_position_advanced():
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.add("p0", 0)
    tracker.add("p0", 1)
    tracker.add("p1", 7)
    assert tracker.to_commit() == {"p0": 0, "p1": 7}
    tracker.committed({"p0": 0, "p1": 7})
    assert tracker.to_commit() == {}
    tracker.finish("p0", 1)
    assert tracker.to_commit() == {}
    tracker.finish("p0", 0)
    assert tracker.to_commit() == {"p0": 2}
    assert tracker.in_flight == 1


def test_finishing_twice_or_unknown_offsets_is_ignored():
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.add("p", 3)
    tracker.finish("p", 3)
    tracker.finish("p", 3)
    tracker.finish("p", 99)
    tracker.finish("other", 1)
    assert tracker.in_flight == 0
    assert tracker.to_commit() == {"p": 4}


def test_offsets_must_increase():
    p = PartitionOffsets()
    p.add(4)
    with pytest.raises(ValueError, match="must increase"):
        p.add(4)


def test_drop_forgets_a_revoked_partition_and_its_in_flight_jobs():
    tracker: OffsetTracker[str] = OffsetTracker()
    for offset in range(5):
        tracker.add("p", offset)
    tracker.add("q", 0)
    tracker.finish("p", 0)
    tracker.drop(["p"])
    assert tracker.in_flight == 1
    assert tracker.partitions() == ["q"]
    tracker.finish("p", 1)  # a late finish of a dropped partition
    assert tracker.in_flight == 1


@settings(max_examples=300)
@given(
    st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=200),
    st.randoms(use_true_random=False),
    st.data(),
)
def test_committed_position_never_passes_an_unfinished_offset(gaps, rng, data):
    offsets = []
    current = data.draw(st.integers(min_value=0, max_value=10_000))
    for gap in gaps:
        offsets.append(current)
        current += gap
    finish_order = list(offsets)
    rng.shuffle(finish_order)
    tracker: OffsetTracker[int] = OffsetTracker()
    taken = 0
    finished: set[int] = set()
    last_committed = None
    for offset in finish_order:
        # take a random number of further offsets before each finish (intake interleaves with work)
        while taken < len(offsets) and (offsets[taken] <= offset or data.draw(st.booleans())):
            tracker.add(0, offsets[taken])
            taken += 1
        tracker.finish(0, offset)
        finished.add(offset)
        positions = tracker.to_commit()
        if 0 in positions:
            position = positions[0]
            unfinished = [o for o in offsets[:taken] if o not in finished]
            assert all(position <= o for o in unfinished), (position, unfinished)
            assert last_committed is None or position > last_committed
            tracker.committed(positions)
            last_committed = position
        assert tracker.in_flight == taken - len(finished)
    assert tracker.to_commit() in ({0: offsets[-1] + 1}, {})
    assert tracker.in_flight == 0
    assert (last_committed if not tracker.to_commit() else tracker.to_commit()[0]) == offsets[-1] + 1


def test_a_fetch_taken_at_once_counts_as_taking_each_of_its_offsets():
    at_once: OffsetTracker[str] = OffsetTracker()
    one_by_one: OffsetTracker[str] = OffsetTracker()
    at_once.take("p", [3, 4, 7])
    at_once.take("p", [])
    at_once.take("p", [8, 9])
    for offset in (3, 4, 7, 8, 9):
        one_by_one.add("p", offset)
    for tracker in (at_once, one_by_one):
        tracker.finish("p", 4)
        tracker.finish("p", 3)
    assert at_once.in_flight == one_by_one.in_flight == 3
    assert at_once.to_commit() == one_by_one.to_commit() == {"p": 7}
    with pytest.raises(ValueError, match="must increase"):
        at_once.take("p", [9, 10])
    with pytest.raises(ValueError, match="must increase"):
        at_once.take("q", [5, 2])
    assert at_once.partitions() == ["p"] and at_once.in_flight == 3
