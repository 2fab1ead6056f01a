"""The reliability suite: integration tests under kills, restarts, hangs and fuzz (`make test-reliability`)."""

import os

import pytest

from tests.conftest import section_writer


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/reliability/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def summary(request):
    """A line for the suite's summary (jobs, kills, duplicates, lost), printed at the end of the run."""
    return section_writer(request.node, "reliability summary")
