"""Test tiers: unit (pure logic), docker (real engine), kind (real lab cluster).

A tier whose prerequisites are missing is skipped LOUDLY: the reason is printed in the header and in
every skip. When ``KTI_REQUIRE_TIERS`` names a tier (``.ci/run`` sets ``docker``), a missing
prerequisite is an error instead of a skip, so CI can never pass by skipping what it must provide.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent


def required_tiers() -> set[str]:
    return {t.strip() for t in os.environ.get("KTI_REQUIRE_TIERS", "").split(",") if t.strip()}


@cache
def docker_tier_problem() -> str | None:
    """None when a real engine answers, else why not."""
    from kubetest_infra.engine import get_engine
    from kubetest_infra.errors import KtiError

    try:
        get_engine()
    except KtiError as exc:
        return str(exc).replace("\n", " ")
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        if "integration" in path.parts and not item.get_closest_marker("kind"):
            item.add_marker(pytest.mark.docker)


def pytest_report_header(config: pytest.Config) -> list[str]:
    problem = docker_tier_problem()
    required = "docker" in required_tiers()
    state = "ENABLED" if problem is None else ("MISSING (required: tests will error)" if required else "SKIPPED")
    return [f"kubetest-infra docker tier: {state}" + (f": {problem}" if problem else "")]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("docker") is None:
        return
    problem = docker_tier_problem()
    if problem is None:
        return
    if "docker" in required_tiers():
        pytest.fail(f"docker tier required (KTI_REQUIRE_TIERS) but unavailable: {problem}", pytrace=False)
    pytest.skip(f"docker tier SKIPPED: {problem}")
