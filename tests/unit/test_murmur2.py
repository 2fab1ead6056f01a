"""The outbox's murmur2 places keys where aiokafka's (the Java client's) partitioner does, in Python
and in native code alike."""

import platform
import sys

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.pipeline import outbox
from worker.pipeline.outbox import murmur2, murmur2_python

IMPLEMENTATIONS = [pytest.param(murmur2_python, id="python"), pytest.param(murmur2, id=outbox.MURMUR2)]


@pytest.mark.parametrize("hash_key", IMPLEMENTATIONS)
@settings(max_examples=500, derandomize=True)
@given(key=st.binary(max_size=100))
def test_murmur2_equals_aiokafkas(hash_key, key):
    assert hash_key(key) == aiokafka_murmur2(key)


@pytest.mark.parametrize("hash_key", IMPLEMENTATIONS)
def test_murmur2_of_known_keys(hash_key):
    # Values of the Java client's Utils.murmur2 (Kafka's own test vectors: UtilsTest.testMurmur2).
    assert hash_key(b"21") & 0xFFFFFFFF == (-973932308) & 0xFFFFFFFF
    assert hash_key(b"foobar") & 0xFFFFFFFF == (-790332482) & 0xFFFFFFFF
    assert hash_key(b"a-little-bit-long-string") & 0xFFFFFFFF == (-985981536) & 0xFFFFFFFF
    assert hash_key(b"") & 0xFFFFFFFF == 275646681


def test_the_native_murmur2_is_used_where_the_dependency_has_wheels():
    """pyproject.toml installs `murmurhash2` on glibc Linux (x86_64, aarch64), macOS and Windows; the
    outbox must then hash in native code, not fall back to Python unnoticed."""
    has_wheel = (
        sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64") and platform.libc_ver()[0] == "glibc"
    ) or sys.platform == "darwin"
    if has_wheel:
        assert outbox.MURMUR2 == "native"
    # The name says which one the outbox calls.
    assert (outbox.murmur2 is murmur2_python) == (outbox.MURMUR2 == "python")
