"""remove_items: newest first, what goes with its cluster is not removed one by one, one failure never
stops the others (fakes stand for kind and the engine: this is the ordering logic only)."""

from __future__ import annotations

from typing import Any

from kubetest_infra.state import Item
from kubetest_infra.teardown import remove_items


class FakeClusters:
    def __init__(self, existing: set[str]) -> None:
        self.existing = existing
        self.calls: list[str] = []

    def exists(self, name: str) -> bool:
        return name in self.existing

    def delete(self, name: str) -> None:
        self.calls.append(f"delete {name}")
        self.existing.discard(name)

    def forget(self, name: str) -> None:
        self.calls.append(f"forget {name}")


class FakeEngine:
    def __init__(self, in_use: set[str]) -> None:
        self.in_use = in_use
        self.calls: list[str] = []

    def inspect_image(self, ref: str) -> Any:
        return object()

    def untag(self, ref: str) -> bool:
        self.calls.append(f"untag {ref}")
        return ref not in self.in_use


def test_what_lives_in_a_removed_cluster_goes_with_it_and_is_said_so() -> None:
    items = [Item("image", "localhost/a:s-1", "docker"), Item("cluster", "c"),
             Item("namespace", "ns", "c"), Item("node-image", "localhost/a:s-1", "c")]
    clusters, engine = FakeClusters({"c"}), FakeEngine(set())
    done = remove_items(items, engine=engine, clusters=clusters)  # type: ignore[arg-type]
    assert clusters.calls == ["delete c"]  # no namespace call, no unload: the cluster takes them along
    assert engine.calls == ["untag localhost/a:s-1"]
    assert done.failed == ()
    assert done.lines() == ["node-image localhost/a:s-1 (c) (with its cluster)", "namespace ns (c) (with its cluster)",
                            "cluster c", "image localhost/a:s-1 (docker)"]


def test_a_failed_removal_is_reported_and_the_others_still_go() -> None:
    items = [Item("image", "localhost/a:s-1", "docker"), Item("image", "localhost/b:s-1", "docker"),
             Item("node-image", "localhost/b:s-1", "gone")]
    clusters, engine = FakeClusters(set()), FakeEngine({"localhost/b:s-1"})
    done = remove_items(items, engine=engine, clusters=clusters)  # type: ignore[arg-type]
    assert engine.calls == ["untag localhost/b:s-1", "untag localhost/a:s-1"]  # newest first
    assert [str(i) for i, _ in done.failed] == ["image localhost/b:s-1 (docker)"]
    assert "in use by a container" in done.failed[0][1]
    # the node image's cluster no longer exists: nothing to unload, counted as removed
    assert [str(i) for i in done.removed] == ["node-image localhost/b:s-1 (gone)", "image localhost/a:s-1 (docker)"]


def test_without_an_engine_an_image_is_a_failure_with_a_hint_not_a_crash() -> None:
    done = remove_items([Item("image", "localhost/a:s-1", "docker")], engine=None, clusters=None)
    assert done.removed == ()
    assert "no engine" in done.failed[0][1]
