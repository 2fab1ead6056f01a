"""Shared: measured figures that tests report in the run's summary."""

import pytest


_REPORT: list[str] = []


@pytest.fixture
def report():
    """Lines a test wants in the run's summary (measured figures, not assertions)."""
    return _REPORT.append


def pytest_terminal_summary(terminalreporter):
    if _REPORT:
        terminalreporter.section("measured figures")
        for line in _REPORT:
            terminalreporter.write_line(line)
