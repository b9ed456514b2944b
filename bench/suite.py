"""Benchmarks of the orchestrator on the DataStorage suite (offline lab).

1. cold ``kti up`` (dependency graph) vs a sequential baseline done the way kubernaut's suites do it
   (build each image → create the cluster → load each image → deploy each service and wait, one by
   one), both with ``--no-cache`` builds and a fresh cluster, in the same run; plus the measured
   critical path of the graph run;
2. warm re-run with reuse: total seconds, rebuilds and transfers (goal: ≤ 2 s overhead, 0 and 0);
3. ``pytest suites/datastorage`` with 4 xdist workers vs 1: wall time (one worker sets up for all).

Run: ``.venv/bin/python bench/suite.py [--only graph,warm,xdist]``; JSON to bench/results/suite.json.
Needs the environment of hack/setup (source .kti/env).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import write_results

from kubetest_infra.apply import Applier
from kubetest_infra.build import Builder, BuildSpec, BuiltImage
from kubetest_infra.cleanup import remove_run_images
from kubetest_infra.cluster import KindClusters
from kubetest_infra.engine import get_engine
from kubetest_infra.graph import Task, validate
from kubetest_infra.kube import api_client
from kubetest_infra.load import Loader
from kubetest_infra.orchestrate import Orchestrator
from kubetest_infra.render import load_manifests, render
from kubetest_infra.suite import load_suite
from kubetest_infra.tags import new_run_id
from kubetest_infra.wait import Target, Waiter
from kubetest_infra.workloads import is_waitable

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "suites" / "datastorage"


def sequential(suite: Any, engine: Any, clusters: KindClusters, run_id: str) -> dict[str, Any]:
    """kubernaut's shape: every step after the previous one."""
    steps: dict[str, float] = {}
    t0 = time.monotonic()
    builder = Builder(engine, run_id, suite.name, no_cache=True)
    images: dict[str, BuiltImage] = {}
    for name, spec in {**suite.images, **{n: e.build for n, e in suite.external_images.items()}}.items():
        t = time.monotonic()
        images[name] = builder.build(BuildSpec(name, spec.context, spec.dockerfile, spec.build_args, spec.target))
        steps[f"build:{name}"] = time.monotonic() - t
    t = time.monotonic()
    cluster = clusters.ensure(suite.cluster, reuse=False, recreate=True)
    steps["cluster"] = time.monotonic() - t
    from kubernetes import client

    api = api_client(str(cluster.kubeconfig))
    client.CoreV1Api(api).create_namespace({"metadata": {"name": suite.namespace}})
    loader = Loader(engine)
    for name, image in images.items():
        t = time.monotonic()
        loader.load(image, cluster.nodes)
        steps[f"load:{name}"] = time.monotonic() - t
    applier = Applier(api)
    refs = {n: i.ref for n, i in images.items()}
    order = validate([Task(s.name, lambda _: None, s.depends_on) for s in suite.services.values()])
    for svc_name in order:
        svc = suite.services[svc_name]
        t = time.monotonic()
        objs, srcs = load_manifests(svc.manifests)
        used = {n: r for n, r in refs.items() if any(f"${{image:{n}}}" in p.read_text() for p in svc.manifests)}
        rendered = render(objs, srcs, used)
        applier.apply(list(rendered.objects), namespace=suite.namespace)
        Waiter(api).wait([Target(o["kind"], o["metadata"]["name"], suite.namespace)
                          for o in rendered.objects if is_waitable(o)])
        steps[f"service:{svc_name}"] = time.monotonic() - t
    return {"seconds": round(time.monotonic() - t0, 2), "steps": {k: round(v, 2) for k, v in steps.items()}}


def graph(suite: Any, engine: Any, clusters: KindClusters, run_id: str) -> dict[str, Any]:
    if clusters.exists(suite.cluster.name):
        clusters.delete(suite.cluster.name)
    t0 = time.monotonic()
    env = Orchestrator(suite, engine, run_id, clusters=clusters, reuse=False, no_cache=True).up()
    wall = time.monotonic() - t0
    critical = sum(t.seconds for t in env.timings if t.id in env.critical_path)
    return {"seconds": round(wall, 2), "graph_seconds": round(env.seconds, 2), "critical_path": list(env.critical_path),
            "critical_path_seconds": round(critical, 2), "wall_over_critical": round(wall / critical, 3),
            "timings": {t.id: [round(t.start, 2), round(t.end, 2)] for t in env.timings}}


def warm(suite: Any, engine: Any, clusters: KindClusters, run_id: str) -> dict[str, Any]:
    """Re-run over the environment just brought up by `graph` (same run id, reuse on)."""
    events: list[tuple[str, str]] = []
    orch = Orchestrator(suite, engine, run_id, clusters=clusters, reuse=True,
                        on_event=lambda task, ev, s: events.append((task, ev)))
    loads: list[Any] = []
    original = orch.loader.load

    def spy(image: Any, nodes: Any) -> Any:
        result = original(image, nodes)
        loads.append(result)
        return result

    orch.loader.load = spy  # type: ignore[method-assign]
    t0 = time.monotonic()
    env = orch.up()
    wall = time.monotonic() - t0
    rebuilt = [t.id for t in env.timings if t.kind == "build" and t.seconds > 2.0]
    return {"seconds": round(wall, 2), "reused_cluster": env.reused_cluster,
            "transfers": sum(1 for r in loads for n in r.nodes if n.action == "loaded"),
            "node_actions": sorted({n.action for r in loads for n in r.nodes}),
            "builds_over_2s": rebuilt,
            "timings": {t.id: round(t.seconds, 2) for t in env.timings},
            "goal": "<= 2 s overhead beyond pods' readiness (pods are already ready: overhead = seconds)"}


def xdist(workers: int) -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "pytest", str(SUITE), "-q", "-p", "no:cacheprovider", "-n", str(workers),
                    "--kti-no-reuse-cluster"], check=True, capture_output=True, cwd=ROOT)
    return round(time.monotonic() - t0, 2)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="graph,warm,xdist")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "suite.json")
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    engine = get_engine()
    clusters = KindClusters(engine)
    suite = load_suite(SUITE)
    results: dict[str, Any] = {}
    run_ids: list[str] = []
    try:
        if "graph" in wanted or "warm" in wanted:
            seq_id, graph_id = new_run_id(), new_run_id()
            run_ids += [seq_id, graph_id]
            seq = sequential(suite, engine, clusters, seq_id)
            clusters.delete(suite.cluster.name)
            par = graph(suite, engine, clusters, graph_id)
            results["cold_up"] = {"sequential": seq, "graph": par,
                                  "sequential_over_graph": round(seq["seconds"] / par["seconds"], 2),
                                  "goal": "sequential_over_graph >= 2, wall_over_critical <= 1.15"}
            if "warm" in wanted:
                results["warm_rerun"] = warm(suite, engine, clusters, graph_id)
            clusters.delete(suite.cluster.name)
        if "xdist" in wanted:
            one = xdist(1)
            four = xdist(4)
            results["xdist_setup"] = {"n1_seconds": one, "n4_seconds": four, "n4_over_n1": round(four / one, 2),
                                      "goal": "n4_over_n1 <= 1.1 (one worker creates, all share)"}
    finally:
        for rid in run_ids:
            remove_run_images(engine, rid)
        if clusters.exists(suite.cluster.name):
            clusters.delete(suite.cluster.name)
    write_results(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
