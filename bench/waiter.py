"""The waiter's cost and speed: API requests and CPU during a 30 s rollout, and crash detection latency.

Before/after in one run: the waiter of the last release (``kubetest_infra/wait.py`` at ``--before``,
loaded from git) and the current one wait for the same Deployment, whose pod becomes Ready only after
``--rollout`` seconds (a readiness probe with ``initialDelaySeconds``). Each waiter runs in a process
of its own, so ``getrusage`` gives its CPU seconds; every API request is counted at the REST client.

Detection latency (current waiter): a container that exits 1 at start; from the container's
``finishedAt`` (the kubelet's record of the crash) to the waiter's ``PodStartError``.

Run: ``.venv/bin/python bench/waiter.py [--rollout 30] [--crashes 5]``; JSON in bench/results/waiter.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import write_results
from kubernetes import client

from conftest import lab_kind_binary, lab_node_image
from kubetest_infra.apply import Applier
from kubetest_infra.cluster import ClusterConfig, KindClusters
from kubetest_infra.engine import get_engine
from kubetest_infra.kube import api_client

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = "kti-bench-waiter"

CHILD = r"""
import importlib.util, json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from kubernetes.client import rest
calls = {"n": 0}
original = rest.RESTClientObject.request
def counted(self, *a, **kw):
    calls["n"] += 1
    return original(self, *a, **kw)
rest.RESTClientObject.request = counted
spec = importlib.util.spec_from_file_location("waitmod", sys.argv[2])
mod = importlib.util.module_from_spec(spec); sys.modules["waitmod"] = mod; spec.loader.exec_module(mod)
from kubetest_infra.kube import api_client
api = api_client(sys.argv[3])
t0 = time.monotonic(); r0 = resource.getrusage(resource.RUSAGE_SELF)
print("waiting", flush=True)
outcome = "ready"
try:
    mod.Waiter(api, mod.WaitPolicy(timeout=float(sys.argv[6]))).wait([mod.Target(sys.argv[4], sys.argv[5], "default")])
except Exception as exc:
    outcome = type(exc).__name__
    if hasattr(exc, "problem"):
        outcome += ":" + exc.problem.reason
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"outcome": outcome, "seconds": time.monotonic() - t0, "requests": calls["n"],
                  "cpu_seconds": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
                  "ended_at": time.time()}))
"""


def deployment(name: str, image: str, *, command: str, probe_delay: int | None) -> dict:  # type: ignore[type-arg]
    container: dict = {"name": name, "image": image, "imagePullPolicy": "Never",  # type: ignore[type-arg]
                       "command": ["sh", "-c", command]}
    if probe_delay is not None:
        container["readinessProbe"] = {"exec": {"command": ["true"]}, "initialDelaySeconds": probe_delay,
                                       "periodSeconds": 1}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"terminationGracePeriodSeconds": 0, "containers": [container]}}}}


def run_waiter(module: Path, kubeconfig: Path, kind: str, name: str, timeout: float,
               then: Callable[[], object]) -> dict:  # type: ignore[type-arg]
    """Start a waiter process for ``kind/name``; once it waits (and its watch is set up), call ``then``
    (the apply): so neither the process start nor the import counts in what is measured."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT), str(module), str(kubeconfig), kind, name,
                             str(timeout)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "waiting"
    time.sleep(2.0)  # the first list and the watch are established by now
    applied_at = time.time()
    then()
    out, err = proc.communicate(timeout=timeout + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"waiter {module} failed:\n{err[-3000:]}")
    result: dict = json.loads(out.strip().splitlines()[-1])  # type: ignore[type-arg]
    result["applied_at"] = applied_at
    return result


def finished_at(core: client.CoreV1Api, app: str) -> float:
    for pod in core.list_namespaced_pod("default", label_selector=f"app={app}").items:
        for cs in pod.status.container_statuses or []:
            for state in (cs.state.terminated, cs.last_state.terminated):
                if state is not None and state.finished_at is not None:
                    return state.finished_at.replace(tzinfo=timezone.utc).timestamp()
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rollout", type=int, default=30, help="seconds until the pod is Ready")
    ap.add_argument("--crashes", type=int, default=5, help="crash detections to time")
    ap.add_argument("--before", default="f785522", help="git revision of the old waiter")
    args = ap.parse_args()
    engine = get_engine()
    image = os.environ.get("BUSYBOX_IMAGE", "busybox:1.36")
    with tempfile.TemporaryDirectory(prefix="kti-bench-waiter-") as tmp:
        old = Path(tmp) / "wait_before.py"
        old.write_text(subprocess.run(["git", "-C", str(ROOT), "show", f"{args.before}:kubetest_infra/wait.py"],
                                      capture_output=True, text=True, check=True).stdout)
        new = ROOT / "kubetest_infra" / "wait.py"
        clusters = KindClusters(engine, state_dir=Path(tmp) / "state", kind_binary=lab_kind_binary())
        cluster = clusters.ensure(ClusterConfig(CLUSTER, node_image=lab_node_image()))
        try:
            node = cluster.nodes[0]
            subprocess.run(["sh", "-c", f"docker save {image} | docker exec -i {node} ctr -n k8s.io images import -"],
                           check=True, capture_output=True)
            api = api_client(cluster.kubeconfig)
            applier, core, apps = Applier(api), client.CoreV1Api(api), client.AppsV1Api(api)
            rollout: dict[str, dict] = {}  # type: ignore[type-arg]
            for label, module in (("before", old), ("after", new)):
                name = f"slow-{label}"
                dep = deployment(name, image, command="sleep 3600", probe_delay=args.rollout)
                applier.apply([dep])  # the old waiter needs the object to exist when it starts
                rollout[label] = run_waiter(module, cluster.kubeconfig, "Deployment", name, args.rollout + 120,
                                            lambda: None)
                apps.delete_namespaced_deployment(name, "default")
            latencies: dict[str, list[float]] = {"from_kubelet": [], "from_apply": []}
            for i in range(args.crashes):
                name = f"crash-{i}"
                dep = deployment(name, image, command="echo crash; exit 1", probe_delay=None)
                result = run_waiter(new, cluster.kubeconfig, "Deployment", name, 120,
                                    lambda d=dep: applier.apply([d]))  # type: ignore[misc]
                assert result["outcome"].startswith("PodStartError"), result
                latencies["from_kubelet"].append(round(result["ended_at"] - finished_at(core, name), 3))
                latencies["from_apply"].append(round(result["ended_at"] - result["applied_at"], 3))
                apps.delete_namespaced_deployment(name, "default")
        finally:
            clusters.delete(CLUSTER)
    ratio = {k: round(rollout["before"][k] / max(rollout["after"][k], 1e-9), 1) for k in ("requests", "cpu_seconds")}
    write_results({
        "benchmark": "waiter", "load_average": os.getloadavg(), "rollout_seconds": args.rollout,
        "rollout": {k: {m: round(v, 3) if isinstance(v, float) else v for m, v in r.items() if m != "ended_at"}
                    for k, r in rollout.items()},
        "before_over_after": ratio,
        # from_kubelet: the container's finishedAt (whole seconds: overstates by 0-1 s) to our error
        "crash_detection_seconds": {k: {"samples": v, "median": statistics.median(v)} for k, v in latencies.items()},
        "when": datetime.now(timezone.utc).isoformat(),
    }, ROOT / "bench" / "results" / "waiter.json")


if __name__ == "__main__":
    main()
