"""What a chart or an overlay costs next to plain manifests, side by side in one run.

1. Preflight (no cluster): ``check_suite`` of suites/datastorage (plain manifests), suites/datastorage-helm
   (a chart: ``helm template``) and suites/datastorage-kustomize (an overlay: ``kubectl kustomize``),
   rounds interleaved so machine load hits all three alike; the seconds spent in helm/kubectl are
   reported apart from the rest.
2. With ``--cluster``: suites/datastorage-helm brought up cold, then ``--warm`` warm re-runs through
   ``Session.up`` (the environment kept between them): seconds per ``up``, the ``service:datastorage``
   task (render + hooks + apply + wait + probe), the time in ``helm template``, and whether anything
   was rebuilt, loaded or rolled out. The environment is removed at the end.

Run: ``.venv/bin/python bench/sources.py [--rounds 10] [--cluster] [--warm 3]``; JSON in
bench/results/sources.json. Report ``uptime`` with the figures (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import write_results

from conftest import lab_kind_binary
from kubetest_infra.cluster import KindClusters
from kubetest_infra.engine import get_engine
from kubetest_infra.load import Loader
from kubetest_infra.preflight import check_suite
from kubetest_infra.runner import SubprocessRunner
from kubetest_infra.session import Session
from kubetest_infra.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]
SUITES = {"manifests": "datastorage", "helm": "datastorage-helm", "kustomize": "datastorage-kustomize"}


@contextmanager
def tool_seconds() -> Iterator[list[float]]:
    """Seconds of every ``helm template`` / ``kubectl kustomize`` run while inside."""
    spent: list[float] = []
    real = SubprocessRunner.run

    def timed(self: SubprocessRunner, argv: Any, **kw: Any) -> Any:
        started = time.monotonic()
        try:
            return real(self, argv, **kw)
        finally:
            if len(argv) > 1 and argv[1] in ("template", "kustomize"):
                spent.append(time.monotonic() - started)

    SubprocessRunner.run = timed  # type: ignore[method-assign]
    try:
        yield spent
    finally:
        SubprocessRunner.run = real  # type: ignore[method-assign]


def preflight(rounds: int) -> dict[str, Any]:
    suites = {kind: load_suite(ROOT / "suites" / name) for kind, name in SUITES.items()}
    seconds: dict[str, list[float]] = {k: [] for k in suites}
    tools: dict[str, list[float]] = {k: [] for k in suites}
    for _ in range(rounds):
        for kind, suite in suites.items():
            with tool_seconds() as spent:
                started = time.monotonic()
                check_suite(suite)
                seconds[kind].append(time.monotonic() - started)
            tools[kind].append(sum(spent))
    return {kind: {"median_s": round(statistics.median(seconds[kind]), 3),
                   "max_s": round(max(seconds[kind]), 3),
                   "in_helm_or_kubectl_median_s": round(statistics.median(tools[kind]), 3)} for kind in suites}


def cluster(warm: int) -> dict[str, Any]:
    engine = get_engine()
    suite_file = ROOT / "suites" / "datastorage-helm" / "suite.yaml"
    loads: list[str] = []
    real_load = Loader.load

    def load(loader: Loader, *args: Any, **kwargs: Any) -> Any:
        result = real_load(loader, *args, **kwargs)
        loads.extend(n.action for n in result.nodes)
        return result

    Loader.load = load  # type: ignore[method-assign]
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kti-bench-sources-") as tmp:
        clusters = KindClusters(engine, state_dir=Path(tmp) / "state", kind_binary=lab_kind_binary())
        try:
            for i in range(warm + 1):
                loads.clear()
                with tool_seconds() as spent:
                    started = time.monotonic()
                    env = Session(load_suite(suite_file), engine, clusters=clusters).up(keep_env=True)
                    up = time.monotonic() - started
                task = next(t for t in env.timings if t.id == "service:datastorage")
                rounds.append({"round": "cold" if i == 0 else f"warm {i}", "up_s": round(up, 2),
                               "service_datastorage_s": round(task.seconds, 2),
                               "helm_template_s": round(sum(spent), 3), "helm_template_runs": len(spent),
                               "rebuilt": sorted(set(env.images) - set(env.reused_images)),
                               "load_actions": sorted(set(loads)),
                               "tasks_s": {t.id: round(t.seconds, 2) for t in env.timings},
                               "graph_s": round(env.seconds, 2)})
        finally:
            Session(load_suite(suite_file), engine, clusters=clusters).down(force=True)
            Loader.load = real_load  # type: ignore[method-assign]
    return {"rounds": rounds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10, help="preflight rounds per source kind")
    ap.add_argument("--cluster", action="store_true", help="also bring the chart suite up: cold, then warm")
    ap.add_argument("--warm", type=int, default=3, help="warm re-runs after the cold one")
    args = ap.parse_args()
    results: dict[str, Any] = {"load_average": os.getloadavg(), "preflight": preflight(args.rounds)}
    if args.cluster:
        results["datastorage_helm"] = cluster(args.warm)
        results["load_average_after"] = os.getloadavg()
    write_results(results, ROOT / "bench" / "results" / "sources.json")


if __name__ == "__main__":
    main()
