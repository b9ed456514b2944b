"""Loads into a cluster of their own (it gets killed): before that cluster is Ready, and mid-load kills.

This module runs before the session cluster of tests/kind exists (it does not use ``kind_env``), so
only one test cluster of this session is up at a time: each kind node holds ~20-40 of the host's
128 inotify instances (``fs.inotify.max_user_instances``), which several clusters exhaust.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import lab_kind_binary, lab_node_image
from kubetest_infra.build import Builder, BuildSpec, BuiltImage
from kubetest_infra.cleanup import remove_run_images
from kubetest_infra.cluster import ClusterConfig, KindClusters, default_state_dir
from kubetest_infra.engine import Engine, get_engine
from kubetest_infra.load import LoadedImage, Loader, LoadError, kind_node_names, normalize_ref
from kubetest_infra.loadplan import NodeState
from kubetest_infra.tags import new_run_id
from tests.integration.conftest import _base_image
from tests.kind.conftest import CLUSTER

pytestmark = [pytest.mark.kind, pytest.mark.xdist_group("kind")]


def ctr(node: str, *args: str, check: bool = True) -> str:
    return subprocess.run(["docker", "exec", node, "ctr", "-n", "k8s.io", *args], capture_output=True, text=True,
                          check=check).stdout


def build(engine: Engine, run_id: str, ctx: Path, name: str, base: str, blob_mb: float) -> BuiltImage:
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY blob /blob\n")
    (ctx / "blob").write_bytes(os.urandom(int(blob_mb * 1024 * 1024)))
    return Builder(engine, run_id, "kindlone").build(BuildSpec(name, ctx, build_args={"BASE_IMAGE": base}))


@dataclass
class Lone:
    engine: Engine
    run_id: str
    clusters: KindClusters
    node: str
    early: BuiltImage
    loaded: LoadedImage
    load_done: float  # seconds after `kind create` started
    created: float


@pytest.fixture(scope="module")
def lone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lone]:
    """A one-node cluster of its own (its node gets killed), created while an image is loaded into it."""
    engine = get_engine()
    run_id = new_run_id()
    name = f"{CLUSTER}-lone"
    state = Path(os.environ["KTI_TEST_STATE_DIR"]) if os.environ.get("KTI_TEST_STATE_DIR") else default_state_dir()
    clusters = KindClusters(engine, state_dir=state, kind_binary=lab_kind_binary())
    if clusters.exists(name):
        clusters.delete(name)  # a leftover of an interrupted session: never load into a node about to go
    image = build(engine, run_id, tmp_path_factory.mktemp("early"), "early", _base_image("busybox", "BUSYBOX_IMAGE"),
                  8)
    node = kind_node_names(name)[0]
    created: dict[str, float] = {}
    started = time.monotonic()

    def create() -> None:
        clusters.ensure(ClusterConfig(name, node_image=lab_node_image()))
        created["at"] = time.monotonic() - started

    creator = threading.Thread(target=create)
    creator.start()
    try:
        loaded = Loader(engine).load_many([image], [node], wait_for_nodes=300)[0]
        load_done = time.monotonic() - started
        creator.join()
        assert "at" in created, "kind create failed (see the output above)"
        yield Lone(engine, run_id, clusters, node, image, loaded, load_done, created["at"])
    finally:
        creator.join()
        clusters.delete(name)
        remove_run_images(engine, run_id)


def test_a_load_can_start_before_the_cluster_is_ready_and_verifies_after(lone: Lone) -> None:
    assert lone.loaded.nodes[0].action == "loaded"
    # the node's containerd answered long before kubeadm finished: the load was over before `kind create`
    assert lone.load_done < lone.created, (lone.load_done, lone.created)
    Loader(lone.engine).verify(lone.early, [lone.node])  # still there once the cluster is Ready


def test_a_node_killed_mid_load_is_a_clear_error_and_leaves_no_image_record(tmp_path: Path, lone: Lone) -> None:
    node = lone.node
    image = build(lone.engine, lone.run_id, tmp_path / "k", "killed", _base_image("python", "PYTHON_IMAGE"), 40)
    loader = Loader(lone.engine)
    killed = threading.Event()

    def kill_when_ingesting() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if "tar-" in ctr(node, "content", "active", check=False):  # the importer is writing blobs
                subprocess.run(["docker", "kill", node], capture_output=True, check=True)
                killed.set()
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_when_ingesting, daemon=True)
    killer.start()
    with pytest.raises(LoadError) as info:
        loader.load(image, [node])
    killer.join()
    assert killed.is_set()
    assert node in str(info.value)
    assert "during the load" in str(info.value)  # kind's nodes restart on failure: killed, then restarted
    assert "Hint:" in str(info.value)

    subprocess.run(["docker", "start", node], capture_output=True, check=True)
    loader.wait_for_containerd(node, timeout=120)
    names = ctr(node, "images", "ls", "-q").split()
    assert normalize_ref(image.ref) not in names  # no half-imported image under the name the kubelet uses
    state: NodeState = loader.probe(node)
    assert normalize_ref(image.ref) not in state.images
    # a later load succeeds on the restarted node
    assert loader.load(image, [node]).nodes[0].action == "loaded"
    assert loader.node_image_id(node, image.ref) == image.image_id


