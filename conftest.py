"""Test tiers: unit (pure logic), docker (real engine), kind (real lab cluster), faults (injected faults on
the lab, opt-in with ``KTI_FAULTS=1``).

A tier whose prerequisites are missing is skipped LOUDLY: the reason is printed in every skip and in
the terminal summary. When ``KTI_REQUIRE_TIERS`` names a tier (``.ci/run`` sets ``docker,kind``), a
missing prerequisite is an error instead of a skip, so CI can never pass by skipping what it must provide.

The header never calls the engine (the unit tier needs nothing, not even a docker binary): it says what
is configured; the engine is asked once, when the first test of the docker or kind tier runs.
"""

from __future__ import annotations

import os
import shutil
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


LAB_CACHE = Path(os.environ.get("KTI_LAB_CACHE", "/var/cache/kti-lab"))


def lab_kind_binary() -> str | None:
    if os.environ.get("KTI_KIND"):
        return os.environ["KTI_KIND"]
    found = sorted((LAB_CACHE / "bin").glob("kind-v*"))
    if found:
        return str(found[-1])
    return shutil.which("kind")


def lab_node_image() -> str | None:
    if os.environ.get("KTI_NODE_IMAGE"):
        return os.environ["KTI_NODE_IMAGE"]
    ref = LAB_CACHE / "node-image.ref"
    return ref.read_text().strip() if ref.is_file() else None


@cache
def kind_tier_problem() -> str | None:
    """None when kind and a node image are available, else why not."""
    docker = docker_tier_problem()
    if docker is not None:
        return f"no engine ({docker})"
    if lab_kind_binary() is None:
        return "no kind binary (set KTI_KIND, or build the lab: hack/lab/build)"
    image = lab_node_image()
    if image is None:
        return f"no node image (set KTI_NODE_IMAGE, or build the lab: hack/lab/build; looked in {LAB_CACHE})"
    from kubetest_infra.engine import get_engine

    if get_engine().inspect_image(image) is None:
        return f"node image {image} is not in the engine (hack/lab/up loads it from the lab cache)"
    return None


@cache
def faults_tier_problem() -> str | None:
    """None when faults may be injected (opt-in: each case creates and removes a cluster), else why not."""
    if os.environ.get("KTI_FAULTS") not in ("1", "full"):
        return "opt-in: set KTI_FAULTS=1 (hack/test does; KTI_FAULTS=full: every combination)"
    kind = kind_tier_problem()
    return None if kind is None else f"no kind lab ({kind})"


@cache
def podman_tier_problem() -> str | None:
    """None when rootful Podman answers, else why not (the base images are checked by the fixtures)."""
    from kubetest_infra.engine import get_engine
    from kubetest_infra.errors import KtiError

    if shutil.which("podman") is None:
        return "podman is not installed (bash hack/lab/podman setup)"
    try:
        engine = get_engine("podman")
    except KtiError as exc:
        return str(exc).replace("\n", " ")
    rootless = engine.run("info", "--format", "{{.Host.Security.Rootless}}", check=False, timeout=30).stdout.strip()
    if rootless != "false":
        return f"podman is rootless here (rootless={rootless or '?'}); the podman tier needs rootful Podman"
    return None


TIERS = {"docker": docker_tier_problem, "kind": kind_tier_problem, "faults": faults_tier_problem,
         "podman": podman_tier_problem}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        if "kind" in path.parts[-3:-1]:
            item.add_marker(pytest.mark.kind)
        elif "integration" in path.parts:
            item.add_marker(pytest.mark.docker)
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("engine") == "podman":
            item.add_marker(pytest.mark.podman)


def pytest_report_header(config: pytest.Config) -> list[str]:
    engine = os.environ.get("KTI_ENGINE") or "auto"
    found = [b for b in ("docker", "podman") if shutil.which(b)]
    return [f"kubetest-infra tiers: unit always; docker and kind checked at their first test "
             f"(engine {engine}; on PATH: {', '.join(found) or 'none'}; kind: {lab_kind_binary() or 'none'}; "
             f"required: {', '.join(sorted(required_tiers())) or 'none'})"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    probed = {tier: probe() for tier, probe in TIERS.items() if probe.cache_info().currsize}  # type: ignore[attr-defined]
    for tier, problem in probed.items():
        state = "ENABLED" if problem is None else (
            "MISSING (required: its tests errored)" if tier in required_tiers() else "SKIPPED")
        terminalreporter.write_line(f"kubetest-infra {tier} tier: {state}" + (f": {problem}" if problem else ""))


def pytest_runtest_setup(item: pytest.Item) -> None:
    for tier, probe in TIERS.items():
        if item.get_closest_marker(tier) is None:
            continue
        problem = probe()
        if problem is None:
            continue
        if tier in required_tiers():
            pytest.fail(f"{tier} tier required (KTI_REQUIRE_TIERS) but unavailable: {problem}", pytrace=False)
        pytest.skip(f"{tier} tier SKIPPED: {problem}")
