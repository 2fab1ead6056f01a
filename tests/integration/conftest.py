"""Integration tests: marked so; their broker fixture (`bootstrap`) is in tests/conftest.py."""

import os

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)
