"""The orchestrator's ``nodes`` task: loads may start during ``kind create`` only while *this run* creates
the cluster; otherwise they wait for the cluster task (which first checks ownership). Threads and a fake
loader stand for kind: this is the hand-off logic only (the real thing: bench/loop.py, tests/kind)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from kubetest_infra.cluster import Cluster, ClusterConfig, ClusterError
from kubetest_infra.orchestrate import Orchestrator


class FakeLoader:
    def __init__(self, answering: set[str]) -> None:
        self.answering = answering
        self.asked: list[str] = []

    def answers(self, node: str) -> bool:
        self.asked.append(node)
        return node in self.answering


def orchestrator(loader: FakeLoader, *, workers: int = 1, early: bool = True) -> Orchestrator:
    orch = Orchestrator.__new__(Orchestrator)
    orch.cluster_config = ClusterConfig("c", workers=workers)
    orch.loader = loader  # type: ignore[assignment]
    orch.early_loads = early
    orch._creating, orch._cluster_done, orch._cancelled = threading.Event(), threading.Event(), threading.Event()
    orch._made = None
    return orch


def ready(orch: Orchestrator, nodes: tuple[str, ...], after: float) -> None:
    def finish() -> None:
        time.sleep(after)
        orch._made = Cluster("c", Path("/k"), nodes, "docker", True, 1.0)
        orch._cluster_done.set()
    threading.Thread(target=finish, daemon=True).start()


def test_while_this_run_creates_the_cluster_loads_start_when_every_node_answers() -> None:
    loader = FakeLoader({"c-control-plane", "c-worker"})
    orch = orchestrator(loader)
    orch._creating.set()
    assert orch._nodes({}) == ("c-control-plane", "c-worker")
    assert not orch._cluster_done.is_set()  # before the cluster is ready


def test_a_node_that_does_not_answer_yet_holds_the_loads_until_the_cluster_is_ready() -> None:
    loader = FakeLoader({"c-control-plane"})  # the worker's containerd is not up
    orch = orchestrator(loader)
    orch._creating.set()
    ready(orch, ("c-control-plane", "c-worker"), after=0.3)
    assert orch._nodes({}) == ("c-control-plane", "c-worker")
    assert "c-worker" in loader.asked


def test_a_cluster_found_is_never_loaded_into_before_the_cluster_task_accepted_it() -> None:
    loader = FakeLoader({"c-control-plane", "c-worker"})  # its nodes answer, but it may not be ours
    orch = orchestrator(loader)
    ready(orch, ("c-control-plane", "c-worker"), after=0.3)
    assert orch._nodes({}) == ("c-control-plane", "c-worker")
    assert loader.asked == []


def test_early_loads_off_waits_for_the_ready_cluster() -> None:
    loader = FakeLoader({"c-control-plane", "c-worker"})
    orch = orchestrator(loader, early=False)
    orch._creating.set()
    ready(orch, ("c-control-plane", "c-worker"), after=0.2)
    orch._nodes({})
    assert loader.asked == []


def test_a_failed_cluster_or_an_interrupt_ends_the_wait_with_a_typed_error() -> None:
    orch = orchestrator(FakeLoader(set()))
    orch._creating.set()
    orch._cluster_done.set()  # failed: no cluster made
    with pytest.raises(ClusterError, match="was not created"):
        orch._nodes({})
    orch = orchestrator(FakeLoader(set()))
    orch._cancelled.set()
    with pytest.raises(ClusterError, match="interrupted"):
        orch._nodes({})
