"""The reliability suite: integration tests under kills, restarts, hangs and fuzz (`make test-reliability`)."""

import os

import pytest

_SUMMARY: list[str] = []


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/reliability/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def summary():
    """A line for the suite's summary (jobs, kills, duplicates, lost), printed at the end of the run."""
    return _SUMMARY.append


def pytest_terminal_summary(terminalreporter):
    if _SUMMARY:
        terminalreporter.section("reliability summary")
        for line in _SUMMARY:
            terminalreporter.write_line(line)
