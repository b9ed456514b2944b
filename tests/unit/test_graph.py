"""Graph logic with fake tasks (sleeps and values): ordering, concurrency, cancellation, errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from kubetest_infra.errors import ConfigError
from kubetest_infra.graph import GraphError, Task, Undo, run_graph, validate


def after(seconds: float, value: Any = None, fail: str | None = None):  # type: ignore[no-untyped-def]
    def fn(deps: Mapping[str, Any]) -> Any:
        time.sleep(seconds)
        if fail:
            raise RuntimeError(fail)
        return value if value is not None else dict(deps)
    return fn


def test_values_flow_from_dependencies() -> None:
    tasks = [Task("build", after(0.01, "img:1")), Task("cluster", after(0.01, "kubeconfig")),
             Task("load", lambda d: f"{d['build']} in {d['cluster']}", ("build", "cluster"))]
    result = run_graph(tasks)
    assert result.values["load"] == "img:1 in kubeconfig"


def test_a_task_starts_as_soon_as_its_own_dependencies_finish() -> None:
    # fast build → its load starts before the slow cluster-independent build finishes
    tasks = [Task("fast", after(0.05, 1)), Task("slow", after(0.5, 2)), Task("after-fast", after(0.05, 3), ("fast",))]
    result = run_graph(tasks)
    t = {x.id: x for x in result.timings}
    assert t["after-fast"].start < t["slow"].end
    assert t["slow"].start < t["fast"].end, "independent tasks run at once, not in phases"


def test_failure_cancels_dependants_but_not_independent_tasks() -> None:
    tasks = [Task("a", after(0.01, fail="boom")), Task("b", after(0.01), ("a",)), Task("c", after(0.01), ("b",)),
             Task("d", after(0.05, "ok"))]
    with pytest.raises(GraphError) as info:
        run_graph(tasks)
    err = info.value
    assert set(err.failures) == {"a"}
    assert err.cancelled == {"b": "a failed", "c": "a failed"}
    assert err.values["d"] == "ok"
    assert "boom" in str(err)
    assert "b: cancelled (a failed)" in str(err)


def test_all_failures_are_collected() -> None:
    tasks = [Task("x", after(0.01, fail="x broke")), Task("y", after(0.02, fail="y broke"))]
    with pytest.raises(GraphError) as info:
        run_graph(tasks)
    assert set(info.value.failures) == {"x", "y"}


def test_cycles_unknown_and_duplicates_are_refused_before_anything_runs() -> None:
    ran = threading.Event()

    def mark(_: Mapping[str, Any]) -> None:
        ran.set()

    with pytest.raises(ConfigError, match="cycle: a -> b -> a"):
        run_graph([Task("a", mark, ("b",)), Task("b", mark, ("a",)), Task("c", mark)])
    with pytest.raises(ConfigError, match="unknown nope"):
        run_graph([Task("a", mark, ("nope",)), Task("c", mark)])
    with pytest.raises(ConfigError, match="duplicate"):
        validate([Task("a", mark), Task("a", mark)])
    assert not ran.is_set()


def test_undo_runs_in_reverse_on_failure_unless_kept() -> None:
    log: list[str] = []
    undo = Undo()

    def create(name: str):  # type: ignore[no-untyped-def]
        def fn(_: Mapping[str, Any]) -> str:
            undo.add(name, lambda: log.append(f"undo {name}"))
            return name
        return fn

    tasks = [Task("cluster", create("cluster")), Task("ns", create("ns"), ("cluster",)),
             Task("deploy", after(0.01, fail="bad"), ("ns",))]
    with pytest.raises(GraphError):
        run_graph(tasks, undo=undo)
    assert log == ["undo ns", "undo cluster"]
    log.clear()
    with pytest.raises(GraphError):
        run_graph(tasks, undo=undo, keep=True)
    assert log == []


def test_critical_path_follows_the_latest_dependency() -> None:
    tasks = [Task("build-a", after(0.05)), Task("build-b", after(0.3)), Task("cluster", after(0.1)),
             Task("load-a", after(0.02), ("build-a", "cluster")), Task("load-b", after(0.02), ("build-b", "cluster")),
             Task("deploy", after(0.02), ("load-a", "load-b"))]
    result = run_graph(tasks)
    assert result.critical_path == ("build-b", "load-b", "deploy")
    assert result.critical_seconds <= result.seconds + 0.01
