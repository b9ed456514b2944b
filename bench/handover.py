"""The stale window after a rollout, with and without the traffic-aware hand-over, side by side.

A server that ignores SIGTERM (as python does as PID 1) is rolled out again and again through
``Session.up`` (warm re-runs: one changed file, same run id); right after each ``up`` returns, the
NodePort is asked for ``--probe`` seconds on new connections and every answer of the *previous*
version is counted as stale. Both modes run in one process on one cluster, rounds interleaved
(hand-over on, off, on, off, ...), so machine load affects both alike.

Run: ``.venv/bin/python bench/handover.py [--rounds 10] [--probe 1.5]``; JSON in bench/results/handover.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import write_results

from conftest import lab_kind_binary, lab_node_image
from kubetest_infra.cluster import KindClusters
from kubetest_infra.engine import get_engine
from kubetest_infra.session import Session
from kubetest_infra.suite import load_suite
from tests.kind.stale_window import rounds, write_suite

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10, help="warm re-runs per mode")
    ap.add_argument("--probe", type=float, default=1.5, help="seconds of requests after each up")
    args = ap.parse_args()
    engine = get_engine()
    with tempfile.TemporaryDirectory(prefix="kti-bench-handover-") as tmp:
        clusters = KindClusters(engine, state_dir=Path(tmp) / "state", kind_binary=lab_kind_binary())
        suite_file = write_suite(Path(tmp) / "suite", cluster="kti-bench-handover", node_image=lab_node_image() or "",
                                 port=int(os.environ.get("KTI_BENCH_HANDOVER_PORT", "38097")),
                                 base=os.environ.get("BUSYBOX_IMAGE", "busybox:1.36"))
        started = time.monotonic()
        try:
            rounds(suite_file, engine, clusters, 1)  # cold: cluster, first build; not measured
            results: dict[str, list[dict[str, float]]] = {"handover": [], "no_handover": []}
            for _ in range(args.rounds):
                for mode in ("handover", "no_handover"):
                    r = rounds(suite_file, engine, clusters, 1, handover=mode == "handover",
                               probe_seconds=args.probe)[0]
                    results[mode].append({"up_seconds": round(r.up_seconds, 2), "answers": r.answers,
                                          "stale": r.stale, "errors": r.errors})
        finally:
            Session(load_suite(suite_file), engine, clusters=clusters).down()
    summary = {}
    for mode, rs in results.items():
        summary[mode] = {
            "rounds": len(rs), "rounds_with_stale_answers": sum(1 for r in rs if r["stale"]),
            "stale_answers": sum(r["stale"] for r in rs), "answers": sum(r["answers"] for r in rs),
            "errors": sum(r["errors"] for r in rs),
            "up_seconds_median": round(statistics.median(r["up_seconds"] for r in rs), 2),
        }
    write_results({"benchmark": "handover", "load_average": os.getloadavg(), "probe_seconds": args.probe,
                   "seconds": round(time.monotonic() - started, 1), "summary": summary, "rounds": results},
                  ROOT / "bench" / "results" / "handover.json")


if __name__ == "__main__":
    main()
