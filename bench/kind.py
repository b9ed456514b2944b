"""Benchmarks of the Kind pipeline on the offline lab.

- load of the same image: ours (stream, per-node skip/retag, verified) vs stock ``kind load
  docker-image``, cold (image absent from every node) and repeat (already present);
- failure detection latency: a Deployment whose image was never loaded; from the kubelet's
  ``ErrImageNeverPull`` event, and from the apply, to our ``PodStartError``.

Run: ``.venv/bin/python bench/kind.py [--repeats 3] [--keep]``; prints JSON, writes bench/results/kind.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from kubernetes import client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import base_image, write_results

from conftest import lab_kind_binary, lab_node_image
from kubetest_infra.apply import Applier
from kubetest_infra.build import Builder, BuildSpec
from kubetest_infra.cleanup import remove_run_images
from kubetest_infra.cluster import ClusterConfig, KindClusters
from kubetest_infra.engine import get_engine
from kubetest_infra.kube import api_client
from kubetest_infra.load import Loader, normalize_ref
from kubetest_infra.tags import new_run_id
from kubetest_infra.wait import PodStartError, Target, Waiter, WaitPolicy

ROOT = Path(__file__).resolve().parents[1]


def remove_from_nodes(engine_bin: str, nodes: list[str], ref: str) -> None:
    for node in nodes:  # remove the image record and, with --sync, its content (garbage collected)
        subprocess.run([engine_bin, "exec", node, "ctr", "-n", "k8s.io", "images", "rm", "--sync",
                        normalize_ref(ref)], capture_output=True, check=False)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the bench cluster")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "kind.json")
    args = parser.parse_args()
    engine = get_engine()
    state = Path(tempfile.mkdtemp(prefix="kti-bench-state-"))
    clusters = KindClusters(engine, state_dir=state, kind_binary=lab_kind_binary())
    cfg = ClusterConfig("kti-bench", node_image=lab_node_image(), workers=1)
    t0 = time.monotonic()
    cluster = clusters.ensure(cfg)
    create_seconds = time.monotonic() - t0
    run_id = new_run_id()
    results: dict[str, object] = {"cluster": {"nodes": list(cluster.nodes), "create_seconds": round(create_seconds, 1)}}
    try:
        tmp = Path(tempfile.mkdtemp(prefix="kti-bench-"))
        (tmp / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY blob /blob\n")
        (tmp / "blob").write_bytes(os.urandom(20 * 1024 * 1024))
        spec = BuildSpec("loadbench", tmp, build_args={"BASE_IMAGE": base_image()})
        image = Builder(engine, run_id, "bench").build(spec)
        size = engine.inspect_image(image.ref).size  # type: ignore[union-attr]
        loader = Loader(engine)
        nodes = list(cluster.nodes)
        env = {**os.environ, "KIND_EXPERIMENTAL_PROVIDER": engine.name}
        kind_cmd = [clusters.kind, "load", "docker-image", image.ref, "--name", cluster.name]
        ours_cold, kind_cold, ours_repeat, kind_repeat = [], [], [], []
        for _ in range(args.repeats):
            remove_from_nodes(engine.binary, nodes, image.ref)
            t = time.monotonic()
            loader.load(image, nodes)
            ours_cold.append(time.monotonic() - t)
            t = time.monotonic()
            loader.load(image, nodes)
            ours_repeat.append(time.monotonic() - t)
            remove_from_nodes(engine.binary, nodes, image.ref)
            t = time.monotonic()
            subprocess.run(kind_cmd, check=True, capture_output=True, env=env)
            kind_cold.append(time.monotonic() - t)
            t = time.monotonic()
            subprocess.run(kind_cmd, check=True, capture_output=True, env=env)
            kind_repeat.append(time.monotonic() - t)
        med = statistics.median
        results["load_same_image"] = {
            "image_bytes": size, "nodes": len(nodes),
            "ours_cold_median": round(med(ours_cold), 3), "kind_cold_median": round(med(kind_cold), 3),
            "kind_over_ours_cold": round(med(kind_cold) / med(ours_cold), 2),
            "ours_repeat_median": round(med(ours_repeat), 3), "kind_repeat_median": round(med(kind_repeat), 3),
            "ours_cold_all": [round(x, 3) for x in ours_cold], "kind_cold_all": [round(x, 3) for x in kind_cold],
            "ours_repeat_all": [round(x, 3) for x in ours_repeat],
            "kind_repeat_all": [round(x, 3) for x in kind_repeat],
            "goal": "kind_over_ours_cold >= 1.5, ours_repeat <= 0.3 s",
        }
        results["failure_detection"] = detect_latency(engine, cluster.kubeconfig, args.repeats, run_id)
    finally:
        remove_run_images(engine, run_id)
        if not args.keep:
            clusters.delete(cluster.name)
    write_results(results, args.out)
    return 0


def detect_latency(engine: object, kubeconfig: Path, repeats: int, run_id: str) -> dict[str, object]:
    api = api_client(str(kubeconfig))
    core = client.CoreV1Api(api)
    from_event, from_apply = [], []
    for i in range(repeats):
        ns = f"bench-{run_id[:6]}-{i}"
        core.create_namespace({"metadata": {"name": ns}})
        dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "ghost", "namespace": ns},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "ghost"}},
                        "template": {"metadata": {"labels": {"app": "ghost"}},
                                     "spec": {"containers": [{"name": "c", "image": f"localhost/ghost:b-{run_id}",
                                                              "imagePullPolicy": "Never"}]}}}}
        t_apply = time.time()
        Applier(api).apply([dep])
        try:
            Waiter(api, WaitPolicy(timeout=120)).wait([Target("Deployment", "ghost", ns)])
        except PodStartError:
            t_err = time.time()
        else:
            raise AssertionError("the ghost deployment became ready")
        events = [e for e in core.list_namespaced_event(ns).items if e.reason == "ErrImageNeverPull"]
        first = min((e.event_time or e.first_timestamp or e.metadata.creation_timestamp) for e in events)
        first_ts = first.replace(tzinfo=first.tzinfo or timezone.utc).timestamp()
        from_event.append(t_err - first_ts)
        from_apply.append(t_err - t_apply)
        core.delete_namespace(ns)
    return {
        "event_to_exception_seconds_median": round(statistics.median(from_event), 2),
        "apply_to_exception_seconds_median": round(statistics.median(from_apply), 2),
        "event_to_exception_all": [round(x, 2) for x in from_event],
        "apply_to_exception_all": [round(x, 2) for x in from_apply],
        "note": "event timestamps have 1 s resolution (firstTimestamp); kubernaut's suites waited 300 s",
        "goal": "event_to_exception <= 5 s",
        "measured_at": datetime.now(timezone.utc).isoformat(),
    }


if __name__ == "__main__":
    sys.exit(main())
