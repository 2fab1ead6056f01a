"""The outbox's murmur2 places keys where aiokafka's (the Java client's) partitioner does."""

from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given, settings, strategies as st

from worker.outbox import murmur2


@settings(max_examples=500, derandomize=True)
@given(st.binary(max_size=100))
def test_murmur2_equals_aiokafkas(key):
    assert murmur2(key) == aiokafka_murmur2(key)


def test_murmur2_of_known_keys():
    # Values of the Java client's Utils.murmur2 (Kafka's own test vectors: UtilsTest.testMurmur2).
    assert murmur2(b"21") & 0xFFFFFFFF == (-973932308) & 0xFFFFFFFF
    assert murmur2(b"foobar") & 0xFFFFFFFF == (-790332482) & 0xFFFFFFFF
    assert murmur2(b"a-little-bit-long-string") & 0xFFFFFFFF == (-985981536) & 0xFFFFFFFF
    assert murmur2(b"") & 0xFFFFFFFF == 275646681
