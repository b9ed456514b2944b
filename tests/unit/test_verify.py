"""verify: the spec reference and the kubelet's imageID against the run's references and ids."""

from __future__ import annotations

from types import SimpleNamespace as NS
from typing import Any

import pytest

from kubetest_infra.state import Environment
from kubetest_infra.verify import ImageMismatchError, running_images, same_id, verify_running_images

ENV = Environment(suite="s", run_id="r1", cluster="kti-s", kubeconfig="/k", namespace="s",
                  images={"web": "localhost/web:s-r1", "db": "docker.io/library/postgres:16"},
                  image_ids={"web": "sha256:aaa", "db": "sha256:ddd"}, endpoints={}, reused_cluster=False)


def pod(name: str, *containers: tuple[str, str, str, str], terminating: bool = False) -> Any:
    return NS(metadata=NS(name=name, deletion_timestamp="now" if terminating else None),
              spec=NS(containers=[NS(name=c, image=img) for c, img, _, _ in containers]),
              status=NS(container_statuses=[NS(name=c, image=shown, image_id=iid) for c, _, shown, iid in containers
                                            if iid]))


class Core:
    def __init__(self, *pods: Any) -> None:
        self.pods = pods
        self.selectors: list[str | None] = []

    def list_namespaced_pod(self, namespace: str, label_selector: str | None = None, **_: Any) -> Any:
        assert namespace == "s"
        self.selectors.append(label_selector)
        return NS(items=list(self.pods))


def test_same_id_forms() -> None:
    assert same_id("sha256:abc", "docker.io/library/x@sha256:abc")
    assert same_id("abc", "sha256:abc")
    assert not same_id("sha256:abc", "sha256:abd")
    assert not same_id("", "")


def test_the_status_image_is_not_evidence_the_id_is() -> None:
    # the kubelet shows another tag of the same id: fine; the run's reference on another id: not fine
    core = Core(pod("web-1", ("web", "localhost/web:s-r1", "localhost/web:s-old", "sha256:aaa"),
                    ("sidecar", "busybox:1.36", "busybox:1.36", "sha256:bbb")),
                pod("web-0", ("web", "localhost/web:s-r1", "localhost/web:s-r1", "sha256:zzz"), terminating=True))
    found = running_images(ENV, "app=web", core)
    assert core.selectors == ["app=web"]
    assert [(r.pod, r.container, r.image, r.ok) for r in found] == [
        ("web-1", "web", "web", True), ("web-1", "sidecar", None, True)]
    assert verify_running_images(ENV, core=core) == found
    bad = Core(pod("web-2", ("web", "localhost/web:s-r1", "localhost/web:s-r1", "containerd://sha256:eee")))
    with pytest.raises(ImageMismatchError, match=r"web-2/web: spec localhost/web:s-r1, runs .*eee, built sha256:aaa"):
        verify_running_images(ENV, core=bad)


def test_a_container_not_started_is_a_mismatch_and_no_run_image_is_an_error() -> None:
    with pytest.raises(ImageMismatchError, match=r"runs \(not started\)"):
        verify_running_images(ENV, core=Core(pod("web-3", ("web", "localhost/web:s-r1", "", ""))))
    with pytest.raises(ImageMismatchError, match="no container in namespace s, pods app=x runs an image of run r1"):
        verify_running_images(ENV, "app=x", core=Core(pod("o", ("o", "busybox:1.36", "busybox:1.36", "sha256:1"))))

