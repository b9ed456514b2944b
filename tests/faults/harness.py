"""The fault tier's harness: a small busybox suite of its own, a run driven as a real child process, a
fault delivered when the run reaches a phase, and listings of everything that could be left behind.

A *phase* is recognised by the run's own progress lines on stderr (``kti up`` prints
``build:web: started``; the pytest plugin ``[kti] build:web: start``), optionally plus a delay
(e.g. the wait: the service task has started and the pod's readiness probe starts late).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kubetest_infra.build import LABEL_CONSUMER, LABEL_MANAGED, LABEL_RUN

ROOT = Path(__file__).resolve().parents[2]
SUITE_NAME = "faults"
CLUSTER = os.environ.get("KTI_FAULTS_CLUSTER", "kti-faults")
HOST_PORT = int(os.environ.get("KTI_FAULTS_HOSTPORT", "38640"))
NODE_PORT = 30640
SENTINEL = "localhost/web:faults-preexisting"  # an image of the same suite this run did not create

SUITE = """
name: {name}
namespace: {name}
cluster:
  name: {cluster}
  node_image: "{node_image}"
  ports: [{{container_port: {node_port}, host_port: {port}}}]
images:
  web: {{context: ./web, build_args: {{BASE_IMAGE: "{base}"}}}}
services:
  web:
    manifests: [./web.yaml]
    ready: {{http: {{port: {port}, path: /index.html}}}}
    timeout: {ready_timeout}
"""
# The build takes a few seconds of its own (so a fault can land in it); the content is unique per
# suite written, so the build cache never skips that step.
DOCKERFILE = """ARG BASE_IMAGE
FROM ${{BASE_IMAGE}}
RUN echo {nonce} > /nonce && head -c {big_bytes} /dev/urandom > /big && sleep {build_sleep}
COPY index.html /w/index.html
CMD ["httpd", "-f", "-p", "8080", "-h", "/w"]
"""
MANIFEST = """
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: ${{image:web}}
        readinessProbe: {{httpGet: {{path: /index.html, port: 8080}}, periodSeconds: 1,
                          initialDelaySeconds: {ready_delay}}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: {node_port}}}]
"""


def write_suite(root: Path, *, node_image: str, base: str, build_sleep: int = 8, ready_delay: int = 25,
                ready_timeout: str = "3m", big_mb: int = 0) -> Path:
    """The suite; ``big_mb`` of random data in the image make its load last a few seconds."""
    (root / "web").mkdir(parents=True, exist_ok=True)
    (root / "web" / "Dockerfile").write_text(DOCKERFILE.format(
        nonce=time.time_ns(), build_sleep=build_sleep, big_bytes=big_mb * 1024 * 1024))
    (root / "web" / "index.html").write_text("fault tier\n")
    (root / "web.yaml").write_text(MANIFEST.format(ready_delay=ready_delay, node_port=NODE_PORT))
    (root / "suite.yaml").write_text(SUITE.format(name=SUITE_NAME, cluster=CLUSTER, node_image=node_image,
                                                  node_port=NODE_PORT, port=HOST_PORT, base=base,
                                                  ready_timeout=ready_timeout))
    return root / "suite.yaml"


def sh(*argv: str, timeout: float = 120, check: bool = True) -> str:
    """A helper command of the harness (listings, the fault itself): argv only."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


# -- listings ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Listing:
    """Everything of the fault suite that exists, and the pre-existing things that must survive."""

    clusters: tuple[str, ...]          # Kind clusters named like ours
    containers: tuple[str, ...]        # containers of our cluster (node containers, kind's label)
    images: tuple[str, ...]            # image tags of the suite (consumer label), sentinel included
    namespaces: tuple[str, ...]        # our namespace in our cluster (when the cluster answers)
    state: tuple[str, ...]             # state files (relative), locks excluded
    unreadable: tuple[str, ...] = field(default=())  # state files that are not valid JSON

    def leftovers(self) -> dict[str, tuple[str, ...]]:
        """What of the run is still there (the sentinel is not the run's)."""
        out = {"clusters": self.clusters, "containers": self.containers,
               "images": tuple(i for i in self.images if i != SENTINEL), "namespaces": self.namespaces,
               "state": tuple(s for s in self.state if not s.startswith("sessions/"))}
        return {k: v for k, v in out.items() if v}

    def to_json(self) -> dict[str, list[str]]:
        return {k: list(getattr(self, k)) for k in ("clusters", "containers", "images", "namespaces", "state",
                                                      "unreadable")}


def listing(kind: str, state_dir: Path) -> Listing:
    clusters = tuple(c for c in sh(kind, "get", "clusters").split() if c == CLUSTER)
    containers = tuple(sorted(sh("docker", "ps", "-a", "--filter", f"label=io.x-k8s.kind.cluster={CLUSTER}",
                                 "--format", "{{.Names}}").split()))
    images = tuple(sorted({line for line in sh(
        "docker", "images", "--filter", f"label={LABEL_CONSUMER}={SUITE_NAME}", "--format",
        "{{.Repository}}:{{.Tag}}").split() if not line.endswith(":<none>")}))
    namespaces: tuple[str, ...] = ()
    if clusters and containers:
        kubeconfig = state_dir / "clusters" / CLUSTER / "kubeconfig"
        kubectl = os.environ.get("KTI_KUBECTL", "kubectl")
        if kubeconfig.is_file():
            out = subprocess.run([kubectl, "--kubeconfig", str(kubeconfig), "--request-timeout", "10s", "get", "ns",
                                  SUITE_NAME, "-o", "name"], capture_output=True, text=True, timeout=30, check=False)
            namespaces = tuple(out.stdout.split())
    files, unreadable = [], []
    if state_dir.exists():
        for p in sorted(state_dir.rglob("*")):
            if not p.is_file() or p.suffix in (".lock", ".holder") or "diagnostics" in p.parts:
                continue
            rel = str(p.relative_to(state_dir))
            files.append(rel)
            if p.suffix == ".json":
                try:
                    json.loads(p.read_text())
                except ValueError:
                    unreadable.append(rel)
    return Listing(clusters, containers, images, namespaces, tuple(files), tuple(unreadable))


def make_sentinel(base: str) -> None:
    """A pre-existing image of the same suite (our labels, another run): no fault may remove it."""
    proc = subprocess.run(["docker", "build", "-q", "-t", SENTINEL, "--label", f"{LABEL_MANAGED}=true",
                           "--label", f"{LABEL_CONSUMER}={SUITE_NAME}", "--label", f"{LABEL_RUN}=preexisting",
                           "-"], input=f"FROM {base}\nLABEL faults=sentinel\n", capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


# -- a run, and a fault at a phase -------------------------------------------------------------
@dataclass
class Run:
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    fired_at: float | None = None
    started: float = field(default_factory=time.monotonic)

    def output(self) -> str:
        return "".join(self.lines)


def _default_signals() -> None:
    """A background job of a non-interactive shell (CI) inherits SIGINT *ignored*, and Python keeps it
    ignored: the run under test gets the dispositions of a foreground terminal job instead."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start(argv: Sequence[str], env: dict[str, str], cwd: Path) -> Run:
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=cwd, start_new_session=True,  # its own process group, like a shell job
                            preexec_fn=_default_signals)  # noqa: PLW1509 (only signal.signal, before exec)
    run = Run(proc)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            run.lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return run


def wait_for(run: Run, pattern: str, timeout: float) -> float:
    """Seconds into the run when a line matching ``pattern`` appeared; AssertionError if it did not."""
    rx = re.compile(pattern)
    end = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < end:
        while seen < len(run.lines):
            if rx.search(run.lines[seen]):
                return time.monotonic() - run.started
            seen += 1
        if run.proc.poll() is not None and seen >= len(run.lines):
            break
        time.sleep(0.05)
    raise AssertionError(f"the run never reached /{pattern}/ (exit {run.proc.poll()}):\n{run.output()[-4000:]}")


def deliver(run: Run, sig: signal.Signals, *, group: bool) -> None:
    """``sig`` to the run's process (a CI cancel, ``kill``) or to its whole group (Ctrl-C in a terminal,
    where the children get it too)."""
    run.fired_at = time.monotonic() - run.started
    if group:
        os.killpg(run.proc.pid, sig)
    else:
        run.proc.send_signal(sig)


def finish(run: Run, timeout: float) -> int:
    try:
        return run.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(run.proc.pid, signal.SIGKILL)
        run.proc.wait()
        raise AssertionError(
            f"the run did not end within {timeout:.0f} s of the fault:\n{run.output()[-4000:]}") from None


def kti(*args: str) -> list[str]:
    return [sys.executable, "-m", "kubetest_infra.cli", *args]


def until(check: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():
            return time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
