"""Marks shared by both suites: every test under tests/integration is `integration`, whether or not its module says
so, so that `make test`'s second run (`-m "integration or heavy"`) never leaves one out; and a test marked `last`
(it changes what the shared stack serves, e.g. promotes a model) runs after all the others."""
from __future__ import annotations

from pathlib import Path

import pytest

INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)  # stable: the order is kept otherwise
