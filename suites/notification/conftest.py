"""The Notification suite: kti_env brings up suites/notification (once per run, shared by xdist workers)."""

from __future__ import annotations

from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("kti_suite"):
        config.option.kti_suite = str(SUITE)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SUITE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.kind)
