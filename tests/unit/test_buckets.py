"""Per-minute buckets: continuous refill up to the capacity, give back, tighten, resize (pure arithmetic)."""

import math

import pytest

from worker.ratelimit.buckets import Bucket


def test_bucket_refills_continuously_up_to_its_capacity():
    bucket = Bucket(600, now=0.0)
    bucket.take(600)
    assert bucket.wait_s(10) == pytest.approx(1.0)  # 10 a second
    bucket.refill(0.5)
    assert bucket.level == pytest.approx(5)
    bucket.refill(1000)
    assert bucket.level == 600
    assert bucket.wait_s(601) == math.inf


def test_bucket_give_back_tighten_and_resize():
    bucket = Bucket(100, now=0.0)
    bucket.take(80)
    bucket.give_back(30)
    assert bucket.level == pytest.approx(50)
    bucket.give_back(500)
    assert bucket.level == 100
    bucket.tighten(40)
    assert bucket.level == 40
    bucket.tighten(90)
    assert bucket.level == 40, "the provider's remaining only ever tightens"
    bucket.resize(50, now=0.0)
    assert (bucket.per_minute, bucket.level) == (50, pytest.approx(20)), "the same fraction stays free"
