"""The Kind pipeline against the real lab cluster: build → load → render → apply → wait."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client

from kubetest_infra.apply import Applier, UnknownKindError
from kubetest_infra.build import BuildSpec
from kubetest_infra.cluster import (
    ClusterConfig,
    ClusterMissingError,
    KindClusters,
    KindNotFoundError,
    NodeImageMissingError,
    PortCollisionError,
    PortMapping,
)
from kubetest_infra.diagnostics import collect
from kubetest_infra.errors import ConfigError
from kubetest_infra.render import DriftError, load_manifests, render
from kubetest_infra.wait import PodStartError, Target, Waiter, WaitPolicy
from tests.integration.conftest import _base_image
from tests.kind.conftest import HOST_PORT, HTTP_APP, NODE_PORT, KindEnv, build_service

pytestmark = [pytest.mark.kind, pytest.mark.xdist_group("kind")]  # one worker owns the test cluster


@pytest.fixture(scope="module")
def python_image() -> str:
    return _base_image("python", "PYTHON_IMAGE")


@pytest.fixture(scope="module")
def busybox_image() -> str:
    return _base_image("busybox", "BUSYBOX_IMAGE")


def manifests(tmp: Path, namespace: str, image_expr: str, node_port: int | None = NODE_PORT,
              extra_env: str = "", command: str = "") -> list[Path]:
    svc = f"""
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {namespace}}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 8080, targetPort: 8080, nodePort: {node_port}}}]
""" if node_port else ""
    dep = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {namespace}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        image: {image_expr}
        {command}
        env: [{{name: MARKER, value: "m"}}{extra_env}]
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
"""
    path = tmp / "web.yaml"
    path.write_text(svc + "\n---\n" + dep)
    return [path]


def waiter(env: KindEnv, tmp: Path, **policy: object) -> Waiter:
    return Waiter(env.api, WaitPolicy(**policy),  # type: ignore[arg-type]
                  node_images=env.clusters.node_images,
                  diagnose=lambda targets, reason: str(collect(env.api, targets, reason, tmp / "diag",
                                                               nodes=env.cluster.nodes,
                                                               node_images=env.clusters.node_images)))


def test_happy_path_pod_runs_the_built_image(kind_env: KindEnv, namespace: str, python_image: str,
                                             tmp_path: Path) -> None:
    image = build_service(kind_env, tmp_path, "web", HTTP_APP % "built", python_image)
    loaded = kind_env.loader.load(image, kind_env.cluster.nodes)
    assert {n.node for n in loaded.nodes} == set(kind_env.cluster.nodes)
    assert len(kind_env.cluster.nodes) == 2

    objs, srcs = load_manifests(manifests(tmp_path, namespace, "${image:web}"))
    rendered = render(objs, srcs, {"web": image.ref})
    Applier(kind_env.api).apply(list(rendered.objects))
    times = waiter(kind_env, tmp_path, timeout=180).wait([Target("Deployment", "web", namespace)])
    assert times[Target("Deployment", "web", namespace)] < 180

    pods = client.CoreV1Api(kind_env.api).list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 2
    for pod in pods:
        status = pod.status.container_statuses[0]
        assert status.image_id.endswith(image.image_id.split(":", 1)[1]) or status.image_id == image.image_id, (
            status.image_id, image.image_id)
    body = _http_get(f"http://127.0.0.1:{HOST_PORT}/")
    assert json.loads(body)["marker"] == "m"


def _http_get(url: str, deadline: float = 60) -> str:
    end = time.monotonic() + deadline
    last: Exception | None = None
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                return str(resp.read().decode())
        except OSError as exc:
            last = exc
            time.sleep(1)
    raise AssertionError(f"{url} did not answer: {last}")


def test_kubernaut_bug_is_refused_before_apply(kind_env: KindEnv, namespace: str, python_image: str,
                                               tmp_path: Path) -> None:
    image = build_service(kind_env, tmp_path, "web", HTTP_APP % "x", python_image)
    pregenerated = "localhost/web:kindtest-1884d074"  # a name generated before the build, then discarded
    objs, srcs = load_manifests(manifests(tmp_path, namespace, pregenerated, node_port=None))
    with pytest.raises(DriftError) as info:
        render(objs, srcs, {"web": image.ref})
    assert pregenerated in str(info.value)
    assert image.ref in str(info.value)
    assert client.AppsV1Api(kind_env.api).list_namespaced_deployment(namespace).items == []


def test_never_loaded_image_fails_fast_with_node_images_in_the_hint(kind_env: KindEnv, namespace: str,
                                                                     tmp_path: Path) -> None:
    ghost = f"localhost/ghost:kindtest-{kind_env.run_id}"
    objs, _ = load_manifests(manifests(tmp_path, namespace, ghost, node_port=None))
    objs[0]["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "Never"  # bypass the guard
    Applier(kind_env.api).apply(objs)
    started = time.monotonic()
    with pytest.raises(PodStartError) as info:
        waiter(kind_env, tmp_path, timeout=120).wait([Target("Deployment", "web", namespace)])
    elapsed = time.monotonic() - started
    err = info.value
    assert err.problem.reason == "ErrImageNeverPull"
    assert err.problem.image == ghost
    assert elapsed < 30, f"took {elapsed:.1f} s"
    assert any("ErrImageNeverPull" in e or "Never" in e for e in err.events)
    assert "Hint:" in str(err)
    assert err.diagnostics is not None
    assert Path(err.diagnostics, "events.txt").is_file()
    assert any(Path(err.diagnostics, "nodes").iterdir())


def test_crashing_container_fails_at_the_first_crash_with_its_log(kind_env: KindEnv, namespace: str,
                                                                  busybox_image: str, tmp_path: Path) -> None:
    ctx = tmp_path / "crash"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM {busybox_image}\nCMD [\"sh\", \"-c\", \"echo crash-marker-$MARKER; exit 3\"]\n")
    image = kind_env.builder().build(BuildSpec("crasher", ctx))
    kind_env.loader.load(image, kind_env.cluster.nodes)
    objs, srcs = load_manifests(manifests(tmp_path, namespace, "${image:crasher}", node_port=None))
    Applier(kind_env.api).apply(list(render(objs, srcs, {"crasher": image.ref}).objects))
    with pytest.raises(PodStartError) as info:
        waiter(kind_env, tmp_path, timeout=180).wait([Target("Deployment", "web", namespace)])
    err = info.value
    assert err.problem.reason in ("ContainerCrashed", "CrashLoopBackOff")
    assert "exit code 3" in err.problem.message
    assert err.seconds < 15, f"the first crash is reported, not the kubelet's back-off: {err.seconds:.1f} s"
    assert "crash-marker-m" in err.logs
    assert "crash-marker-m" in str(err)


def test_reload_is_a_noop_and_a_new_image_replaces_the_old(kind_env: KindEnv, python_image: str,
                                                           tmp_path: Path) -> None:
    first = build_service(kind_env, tmp_path / "a", "reload", HTTP_APP % "one", python_image)
    cold = kind_env.loader.load(first, kind_env.cluster.nodes)
    assert all(n.action == "loaded" for n in cold.nodes)
    again = kind_env.loader.load(first, kind_env.cluster.nodes)
    assert all(n.action == "present" for n in again.nodes)  # speed: bench/kind.py

    # the same inputs in a new run: reused image, new tag → retagged in the nodes, no transfer
    reused = kind_env.builder(consumer="kindtest2").build(BuildSpec("reload", tmp_path / "a" / "reload",
                                                                    build_args={"BASE_IMAGE": python_image}))
    assert reused.reused
    retag = kind_env.loader.load(reused, kind_env.cluster.nodes)
    assert all(n.action == "retagged" for n in retag.nodes)

    # changed sources in the same run: same reference, new image → replaced on every node
    second = build_service(kind_env, tmp_path / "b", "reload", HTTP_APP % "two", python_image)
    assert second.ref == first.ref
    assert second.image_id != first.image_id
    replaced = kind_env.loader.load(second, kind_env.cluster.nodes)
    assert all(n.action == "loaded" for n in replaced.nodes)
    for node in kind_env.cluster.nodes:
        assert kind_env.loader.node_image_id(node, second.ref) == second.image_id
        assert kind_env.loader.node_image_id(node, reused.ref) == first.image_id  # the other run keeps its image


def test_kube_config_of_the_user_is_never_touched(kind_env: KindEnv, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    before = hashlib.sha256((home / ".kube" / "config").read_bytes()).hexdigest()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    clusters = KindClusters(kind_env.engine, state_dir=kind_env.state_dir, kind_binary=kind_env.clusters.kind)
    cluster = clusters.ensure(kind_env.config)  # reuse path: rewrites our own kubeconfig only
    assert cluster.reused
    assert hashlib.sha256((home / ".kube" / "config").read_bytes()).hexdigest() == before
    assert oct(cluster.kubeconfig.stat().st_mode & 0o777) == "0o600"
    assert oct(cluster.kubeconfig.parent.stat().st_mode & 0o777) == "0o700"


def test_bad_input_against_the_real_cluster(kind_env: KindEnv, namespace: str, tmp_path: Path) -> None:
    applier = Applier(kind_env.api)
    with pytest.raises(UnknownKindError, match="Hint:"):
        applier.apply([{"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w",
                                                                                       "namespace": namespace}}])
    with pytest.raises(ConfigError, match="does not exist"):
        applier.apply([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "nope-ns"}}])
    with pytest.raises(ClusterMissingError, match="Hint:"):
        kind_env.clusters.nodes("no-such-cluster")
    with pytest.raises(KindNotFoundError, match="Hint:"):
        KindClusters(kind_env.engine, state_dir=tmp_path, kind_binary="/nonexistent/kind").exists("x")
    with pytest.raises(NodeImageMissingError, match="Hint:"):
        kind_env.clusters.create(ClusterConfig("kti-missing-image", node_image="kti-lab/node:does-not-exist"))
    assert not kind_env.clusters.exists("kti-missing-image")


def test_port_collision_is_refused_before_kind_runs(kind_env: KindEnv) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        cfg = ClusterConfig("kti-port-clash", node_image=kind_env.config.node_image,
                            port_mappings=(PortMapping(30081, port),))
        with pytest.raises(PortCollisionError, match=str(port)):
            kind_env.clusters.create(cfg)
    # the port our own test cluster publishes is held by its node container
    cfg = ClusterConfig("kti-port-clash", node_image=kind_env.config.node_image,
                        port_mappings=(PortMapping(30081, HOST_PORT),))
    with pytest.raises(PortCollisionError, match=f"{kind_env.cluster.name}-control-plane"):
        kind_env.clusters.create(cfg)
    assert not kind_env.clusters.exists("kti-port-clash")


def test_stock_kind_load_and_errimageneverpull_smoke(kind_env: KindEnv, namespace: str, busybox_image: str) -> None:
    """The lab itself: kube-proxy and CoreDNS run; stock `kind load docker-image` works."""
    core = client.CoreV1Api(kind_env.api)
    for label in ("k8s-app=kube-proxy", "k8s-app=kube-dns"):
        pods = core.list_namespaced_pod("kube-system", label_selector=label).items
        assert pods
        assert all(p.status.phase == "Running" for p in pods), label
    ref = f"localhost/stock-load:kindtest-{kind_env.run_id}"
    subprocess.run([kind_env.engine.binary, "tag", busybox_image, ref], check=True)
    try:
        subprocess.run([kind_env.clusters.kind, "load", "docker-image", ref, "--name", kind_env.cluster.name],
                       check=True, capture_output=True, env={**os.environ, "KIND_EXPERIMENTAL_PROVIDER": "docker"})
        for node in kind_env.cluster.nodes:
            assert kind_env.loader.node_image_id(node, ref) is not None
    finally:
        kind_env.engine.untag(ref)
