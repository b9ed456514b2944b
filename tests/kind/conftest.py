"""Fixtures for the kind tier: one test cluster per session (2 nodes), created with our library.

hack/test runs the kind tier serially: the session owns the cluster and deletes it at the end unless
``KTI_KEEP_CLUSTER=1`` (cluster creation is also serialised by a per-name file lock).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from conftest import lab_kind_binary, lab_node_image
from kubetest_infra.build import Builder, BuildSpec, BuiltImage
from kubetest_infra.cleanup import remove_run_images
from kubetest_infra.cluster import Cluster, ClusterConfig, KindClusters, PortMapping
from kubetest_infra.engine import Engine, get_engine
from kubetest_infra.kube import api_client
from kubetest_infra.load import Loader
from kubetest_infra.state import default_state_dir
from kubetest_infra.tags import new_run_id

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = os.environ.get("KTI_TEST_CLUSTER", "kti-itest")
HOST_PORT = int(os.environ.get("KTI_TEST_HOSTPORT", "38080"))
NODE_PORT = 30080


@dataclass
class KindEnv:
    engine: Engine
    clusters: KindClusters
    cluster: Cluster
    config: ClusterConfig
    api: Any
    loader: Loader
    run_id: str
    state_dir: Path

    def builder(self, consumer: str = "kindtest", **kw: Any) -> Builder:
        return Builder(self.engine, self.run_id, consumer, **kw)


@pytest.fixture(scope="session")
def kind_env() -> Iterator[KindEnv]:
    engine = get_engine()
    # The library's own state directory: a cluster kept by an earlier session (KTI_KEEP_CLUSTER=1) is
    # recognised and reused; one this library did not create is refused, never deleted.
    state = Path(os.environ["KTI_TEST_STATE_DIR"]) if os.environ.get("KTI_TEST_STATE_DIR") else default_state_dir()
    clusters = KindClusters(engine, state_dir=state, kind_binary=lab_kind_binary())
    cfg = ClusterConfig(CLUSTER, node_image=lab_node_image(), workers=1,
                        port_mappings=(PortMapping(NODE_PORT, HOST_PORT),))
    cluster = clusters.ensure(cfg)
    api = api_client(str(cluster.kubeconfig))
    run_id = new_run_id()
    env = KindEnv(engine, clusters, cluster, cfg, api, Loader(engine), run_id, state)
    try:
        yield env
    finally:
        # test_pipeline retags a reused image under a second consumer (kindtest2): its tag carries a
        # consumer no label names, so it is removed by its exact consumer
        remove_run_images(engine, run_id, "kindtest2")
        remove_run_images(engine, run_id)
        if os.environ.get("KTI_KEEP_CLUSTER") != "1":
            clusters.delete(CLUSTER)


@pytest.fixture
def namespace(kind_env: KindEnv, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of its own for each test, deleted afterwards."""
    name = f"t-{new_run_id()[:8]}"
    core = client.CoreV1Api(kind_env.api)
    core.create_namespace({"metadata": {"name": name, "labels": {"kubetest-infra/test": request.node.name[:60]}}})
    yield name
    core.delete_namespace(name)


def build_service(env: KindEnv, tmp: Path, name: str, app: str, base: str) -> BuiltImage:
    """A tiny HTTP service on the python base image, built and verified."""
    ctx = tmp / name
    ctx.mkdir(parents=True)
    (ctx / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY app.py /app.py\n"
                                    "CMD [\"python3\", \"/app.py\"]\n")
    (ctx / "app.py").write_text(app)
    return env.builder().build(BuildSpec(name, ctx, build_args={"BASE_IMAGE": base}))


HTTP_APP = '''
import http.server, json, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"marker": os.environ.get("MARKER", "%s")}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
'''
