"""A replica's share of every rate limit: its share of the jobs topic's partitions."""

import pytest

from worker.ratelimit.limits import partition_share


@pytest.mark.parametrize("owned, total, share", [(4, 12, 1 / 3), (12, 12, 1.0), (1, 4, 0.25), (0, 4, 0.0), (3, 0, 1.0)])
def test_partition_share(owned, total, share):
    assert partition_share(owned, total) == pytest.approx(share)


def test_shares_of_three_replicas_add_up_to_the_limit():
    shares = [partition_share(n, 12) for n in (4, 4, 4)]
    assert sum(shares) == pytest.approx(1.0)
    shares = [partition_share(n, 4) for n in (2, 1, 1)]
    assert sum(shares) == pytest.approx(1.0)
