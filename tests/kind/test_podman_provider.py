"""Kind's podman provider with Podman-built images: create, reuse, load, run, refuse the other engine, delete.

One cluster of its own (``$KTI_PODMAN_CLUSTER``, host port ``$KTI_PODMAN_HOSTPORT``), created and deleted
by this module with the library, under rootful Podman (``hack/lab/podman setup``). The node image is
the lab's, copied into podman's store (``localhost/`` + ``$KTI_NODE_IMAGE``).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from conftest import lab_kind_binary, lab_node_image
from kubetest_infra.build import Builder, BuildSpec, BuiltImage
from kubetest_infra.cleanup import remove_run_images
from kubetest_infra.cluster import Cluster, ClusterConfig, EngineMismatchError, KindClusters, PortMapping
from kubetest_infra.engine import Engine, get_engine
from kubetest_infra.kube import api_client
from kubetest_infra.load import Loader, LoadError, normalize_ref
from kubetest_infra.tags import new_run_id
from tests.integration.conftest import _base_image

pytestmark = [pytest.mark.kind, pytest.mark.podman]

CLUSTER = os.environ.get("KTI_PODMAN_CLUSTER", "kti-podman-itest")
HOST_PORT = int(os.environ.get("KTI_PODMAN_HOSTPORT", "38094"))


class PodmanKind:
    def __init__(self, engine: Engine, clusters: KindClusters, cfg: ClusterConfig, cluster: Cluster,
                 run_id: str) -> None:
        self.engine, self.clusters, self.cfg, self.cluster, self.run_id = engine, clusters, cfg, cluster, run_id


@pytest.fixture(scope="module")
def podkind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanKind]:
    engine = get_engine("podman")
    image = lab_node_image()
    assert image, "no lab node image (KTI_NODE_IMAGE)"
    node_image = f"localhost/{image}" if "/" in image and "." not in image.split("/")[0] else image
    if engine.inspect_image(node_image) is None:
        pytest.fail(f"node image {node_image} is not in podman's store: bash hack/lab/podman setup", pytrace=False)
    state = tmp_path_factory.mktemp("podman-state")
    clusters = KindClusters(engine, state_dir=state, kind_binary=lab_kind_binary())
    cfg = ClusterConfig(CLUSTER, node_image=node_image, workers=1, port_mappings=(PortMapping(30080, HOST_PORT),))
    cluster = clusters.ensure(cfg)
    run_id = new_run_id()
    try:
        yield PodmanKind(engine, clusters, cfg, cluster, run_id)
    finally:
        remove_run_images(engine, run_id)
        clusters.delete(CLUSTER)
        left = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True,
                              check=True).stdout.split()
        assert not [n for n in left if n.startswith(f"{CLUSTER}-")], f"nodes left behind: {left}"


def build(env: PodmanKind, tmp: Path, text: str) -> BuiltImage:
    ctx = tmp / "ctx"
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY app.txt /app.txt\n")
    (ctx / "app.txt").write_text(text)
    base = _base_image("busybox", "BUSYBOX_IMAGE", env.engine)
    return Builder(env.engine, env.run_id, "podkind").build(BuildSpec("podapp", ctx, build_args={"BASE_IMAGE": base}))


def crictl_id(engine: Engine, node: str, ref: str) -> str:
    """The (short) image id the kubelet's view (``crictl images``) gives ``ref`` on ``node``, or ""."""
    repo, _, tag = normalize_ref(ref).rpartition(":")
    out = subprocess.run([engine.binary, "exec", node, "crictl", "images"], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 3 and cols[0] == repo and cols[1] == tag:
            return cols[2]
    return ""


def test_the_cluster_runs_under_podman_and_is_reused(podkind: PodmanKind) -> None:
    assert podkind.cluster.provider == "podman" and len(podkind.cluster.nodes) == 2
    names = subprocess.run(["podman", "ps", "--format", "{{.Names}}"], capture_output=True, text=True,
                           check=True).stdout.split()
    assert set(podkind.cluster.nodes) <= set(names)
    started = time.monotonic()
    again = podkind.clusters.ensure(podkind.cfg)
    assert again.reused and again.nodes == podkind.cluster.nodes, again
    assert time.monotonic() - started < 120  # a reuse never re-runs kind create (minutes)
    assert podkind.clusters.record(CLUSTER)["provider"] == "podman"  # type: ignore[index]


def test_a_podman_built_image_reaches_every_node_verified_and_runs(podkind: PodmanKind, tmp_path: Path) -> None:
    text = f"built by podman {new_run_id()}\n"
    image = build(podkind, tmp_path, text)
    assert image.ref.startswith("localhost/") and image.image_id.startswith("sha256:")
    loader = Loader(podkind.engine)
    assert loader.store is None and "podman" in loader.store_unavailable  # archive path, said so
    loaded = loader.load(image, list(podkind.cluster.nodes))
    assert {n.action for n in loaded.nodes} == {"loaded"} and {n.mode for n in loaded.nodes} == {"archive"}
    for node in podkind.cluster.nodes:  # ref -> image id on every node, as containerd and the kubelet see it
        assert loader.node_image_id(node, image.ref) == image.image_id, node
        short = crictl_id(podkind.engine, node, image.ref)
        assert short and image.image_id.removeprefix("sha256:").startswith(short), (node, short)
    again = loader.load(image, list(podkind.cluster.nodes))
    assert {n.action for n in again.nodes} == {"present"} and sum(n.bytes_sent for n in again.nodes) == 0

    core = client.CoreV1Api(api_client(str(podkind.cluster.kubeconfig)))
    name = f"podapp-{new_run_id()[:8]}"
    core.create_namespaced_pod("default", {
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "nodeName": f"{CLUSTER}-worker", "containers": [{
            "name": "app", "image": image.ref, "imagePullPolicy": "Never", "command": ["cat", "/app.txt"]}]}})
    try:
        deadline = time.monotonic() + 180
        phase = ""
        while time.monotonic() < deadline:
            phase = core.read_namespaced_pod(name, "default").status.phase
            if phase in ("Succeeded", "Failed"):
                break
            time.sleep(1)
        assert phase == "Succeeded", phase
        assert core.read_namespaced_pod_log(name, "default") == text
    finally:
        core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


def test_the_other_engine_is_refused_for_this_cluster(podkind: PodmanKind, tmp_path: Path) -> None:
    docker = get_engine("docker")
    with pytest.raises(EngineMismatchError) as err:
        KindClusters(docker, state_dir=podkind.clusters.state_dir, kind_binary=lab_kind_binary()).ensure(podkind.cfg)
    assert "--engine podman" in (err.value.hint or "")
    busybox = _base_image("busybox", "BUSYBOX_IMAGE")
    ctx = tmp_path / "d"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n")
    run_id = new_run_id()
    image = Builder(docker, run_id, "podkind").build(BuildSpec("dockerapp", ctx, build_args={"BASE_IMAGE": busybox}))
    try:
        with pytest.raises(LoadError) as lerr:
            Loader(docker).load(image, list(podkind.cluster.nodes))
        assert "not containers of the docker engine" in lerr.value.message
    finally:
        remove_run_images(docker, run_id)
