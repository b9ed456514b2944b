"""The stale-window scenario (issue 9): a server that ignores SIGTERM, rolled out again and again.

Each round edits the served page, brings the suite up again through :class:`Session` (warm: same run
id, the rebuilt image rolls the Deployment out), and as soon as ``up`` returns, asks the NodePort as
fast as it can for ``probe_seconds``: every answer that is not the new page is a *stale* answer.
Shared by the kind-tier test (hand-over on: must be 0) and ``bench/handover.py`` (both modes).
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kubetest_infra.cluster import KindClusters
from kubetest_infra.engine import Engine
from kubetest_infra.session import Session
from kubetest_infra.suite import load_suite

SUITE = """
name: stale
namespace: stale
cluster:
  name: {cluster}
  node_image: "{node_image}"
  ports: [{{container_port: 30096, host_port: {port}}}]
images:
  web: {{context: ./web, build_args: {{BASE_IMAGE: "{base}"}}}}{more_images}
services:
  web:
    manifests: [./web.yaml]
    ready: {{http: {{port: {port}, path: /index.html}}}}{more_services}
"""
DOCKERFILE = """ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY index.html /w/index.html
# sh ignores TERM and httpd inherits that: like python as PID 1, it serves through its whole grace period
CMD ["sh", "-c", "trap '' TERM; exec httpd -f -p 8080 -h /w"]
"""
MANIFEST = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 20
      containers:
      - name: web
        image: ${image:web}
        readinessProbe: {httpGet: {path: /index.html, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30096}]
"""


@dataclass(frozen=True)
class Round:
    version: str
    up_seconds: float
    answers: int
    stale: int
    errors: int


def write_suite(root: Path, *, cluster: str, node_image: str, port: int, base: str,
                others: tuple[str, ...] = ()) -> Path:
    """The suite: service ``web`` (NodePort, HTTP check) and, per name in ``others``, an image and a
    service of that name (a Deployment of the same server, no Service)."""
    for name in ("web", *others):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "Dockerfile").write_text(DOCKERFILE)
        (root / name / "index.html").write_text(f"{name} v0\n" if name != "web" else "v0\n")
    (root / "web.yaml").write_text(MANIFEST)
    for name in others:
        (root / f"{name}.yaml").write_text(MANIFEST.split("---", maxsplit=1)[0].replace("web", name))
    more_images = "".join(f'\n  {n}: {{context: ./{n}, build_args: {{BASE_IMAGE: "{base}"}}}}' for n in others)
    more_services = "".join(f"\n  {n}:\n    manifests: [./{n}.yaml]" for n in others)
    (root / "suite.yaml").write_text(SUITE.format(cluster=cluster, node_image=node_image, port=port, base=base,
                                                  more_images=more_images, more_services=more_services))
    return root / "suite.yaml"


def probe(url: str, expected: str, seconds: float) -> tuple[int, int, int]:
    """Ask ``url`` on new connections for ``seconds``: (answers, stale answers, errors)."""
    answers = stale = errors = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                body = resp.read().decode().strip()
        except OSError:
            errors += 1
            continue
        answers += 1
        stale += body != expected
    return answers, stale, errors


def rounds(suite_file: Path, engine: Engine, clusters: KindClusters, count: int, *, handover: bool = True,
           probe_seconds: float = 1.5) -> list[Round]:
    """``count`` warm re-runs, each with a new page; the environment is left up for the caller to remove."""
    out = []
    for i in range(1, count + 1):
        version = f"v{i}-{time.monotonic_ns()}"
        (suite_file.parent / "web" / "index.html").write_text(version + "\n")
        suite = load_suite(suite_file)
        t0 = time.monotonic()
        env = Session(suite, engine, clusters=clusters).up(handover=handover)
        up = time.monotonic() - t0
        answers, stale, errors = probe(env.service_url("web", "/index.html"), version, probe_seconds)
        out.append(Round(version, up, answers, stale, errors))
    return out
