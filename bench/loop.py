"""Issue 14's suite-level goals on the DataStorage suite, side by side in one run.

Phase ``cold``: a cold ``up`` of a copy of ``suites/datastorage`` (its own cluster and host port; the
images already built, so the builds are reuses) with today's code path — loads start as soon as the
nodes' containerd answers during ``kind create``, layers read from the engine's store — against the
previous one — loads after the cluster is Ready, from ``docker save`` — alternating, ``--repeats``
each; every run creates and removes its cluster. Per run: total seconds and the timing table (when
each task started and ended relative to the start).

Phase ``loop``: the edit→running loop. The environment is brought up once (kept), then ``--edits``
times a line of the DataStorage service's ``app.py`` changes and a warm ``up`` runs: seconds until the
new code answers on the service's URL, and where they went (build, load with bytes and layers sent,
services), whether only the changed image was rebuilt and reloaded.

Phase ``loop-notification``: the same loop on ``suites/notification``, editing the Notification
service, which no Job runs (the DataStorage loop re-runs its migrations Job: it runs the changed image).

Run under ``/work/wt/kind-slot`` on the lab: ``.venv/bin/python bench/loop.py [--only cold,loop,loop-notification]
[--repeats 2] [--edits 3]``; JSON to bench/results/loop.json (load averages included).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import write_results

from conftest import lab_kind_binary
from kubetest_infra.cluster import KindClusters
from kubetest_infra.engine import Engine, get_engine
from kubetest_infra.load import LoadedImage, Loader
from kubetest_infra.orchestrate import Orchestrator
from kubetest_infra.session import Session, finish_ledger
from kubetest_infra.state import Environment
from kubetest_infra.suite import load_suite
from kubetest_infra.tags import new_run_id

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = os.environ.get("KTI_BENCH_CLUSTER", "kti-bench-loop")
PORT = int(os.environ.get("KTI_BENCH_HOSTPORT", "38099"))


# suite → (its host port, the service edited, its sources, the line changed in app.py)
LOOPS = {
    "datastorage": (38081, "datastorage", "datastorage", 'self.send_json(200, {"status": "healthy"})'),
    "notification": (38082, "notification", "notification", 'self.reply(200, {"status": "healthy"})'),
}


def copy_suite(work: Path, suite: str = "datastorage") -> Path:
    """A suite of the repository with its own cluster and host port; the sources copied (edited later)."""
    for name in ("datastorage", "notification"):
        shutil.copytree(ROOT / "examples" / name, work / "examples" / name, dirs_exist_ok=True)
    shutil.copytree(ROOT / "images", work / "images", dirs_exist_ok=True)
    shutil.copytree(ROOT / "manifests", work / "manifests", dirs_exist_ok=True)
    (work / "suites" / suite).mkdir(parents=True)
    text = (ROOT / "suites" / suite / "suite.yaml").read_text()
    text = text.replace(f"name: kti-{suite}", f"name: {CLUSTER}").replace(str(LOOPS[suite][0]), str(PORT))
    (work / "suites" / suite / "suite.yaml").write_text(text)
    return work / "suites" / suite / "suite.yaml"


def load_avg() -> float:
    return os.getloadavg()[0]


def table(env: Environment) -> dict[str, list[float]]:
    """Task → [start, end], seconds since the graph started, in order of start."""
    return {t.id: [round(t.start, 2), round(t.end, 2)] for t in sorted(env.timings, key=lambda t: t.start)}


class CountingLoader(Loader):
    """The real loader, keeping what each load did (bytes and layers sent per node)."""

    def __init__(self, engine: Engine, **kw: Any) -> None:
        super().__init__(engine, **kw)
        self.loaded: list[LoadedImage] = []

    def load(self, image: Any, nodes: Any) -> LoadedImage:
        out = super().load(image, nodes)
        self.loaded.append(out)
        return out


def cold(suite_file: Path, engine: Engine, clusters: KindClusters, repeats: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"new": [], "previous": []}
    suite = load_suite(suite_file)
    for _ in range(repeats):
        for mode in ("new", "previous"):
            loader = CountingLoader(engine, read_store=mode == "new")
            orch = Orchestrator(suite, engine, new_run_id(), clusters=clusters, reuse=False, loader=loader,
                                early_loads=mode == "new")
            la = load_avg()
            t0 = time.monotonic()
            try:
                env = orch.up()
                seconds = time.monotonic() - t0
            finally:
                finish_ledger(orch.ledger, engine, clusters)
            runs[mode].append({"seconds": round(seconds, 2), "load_avg_start": round(la, 1),
                               "critical_path": list(env.critical_path), "timings": table(env)})
            print(f"cold {mode}: {seconds:.1f} s (load {la:.1f})", file=sys.stderr)
    med = {m: statistics.median(r["seconds"] for r in rs) for m, rs in runs.items()}
    return {"runs": runs, "median_seconds": med, "ratio_new_over_previous": round(med["new"] / med["previous"], 3),
            "goal": "<= 0.65"}


def answer(url: str, expected: str, timeout: float = 60) -> float:
    """Seconds until ``url`` answers with ``expected`` in its body."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if expected in resp.read().decode():
                    return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} never answered {expected!r}")


def loop(suite_file: Path, engine: Engine, clusters: KindClusters, edits: int) -> dict[str, Any]:
    _, service, source, line = LOOPS[suite_file.parent.name]
    app = suite_file.parents[2] / "examples" / source / "app.py"
    original = app.read_text()
    assert line in original, f"the line the bench edits is gone from examples/{source}/app.py"
    out: list[dict[str, Any]] = []
    session = Session(load_suite(suite_file), engine, clusters=clusters, command="bench")
    try:
        first = session.up(run_id=new_run_id(), keep_env=True)
        url = first.endpoints[service]
        for n in range(1, edits + 1):
            app.write_text(original.replace(line, line.replace('"healthy"}', f'"healthy", "edit": {n}}}')))
            loader = CountingLoader(engine)
            la = load_avg()
            t0 = time.monotonic()
            env = Session(load_suite(suite_file), engine, clusters=clusters, command="bench").up(
                keep_env=True, loader=loader)
            up_seconds = time.monotonic() - t0
            served = answer(url + "/health", f'"edit": {n}') + up_seconds  # new code, first ask after the up
            sent = [{"ref": li.ref.rsplit("/", 1)[-1], **{k: v for k, v in n_.to_json().items()
                                                           if k in ("node", "action", "bytes_sent", "layers_sent",
                                                                    "layers_total", "seconds")}}
                    for li in loader.loaded for n_ in li.nodes]
            out.append({"edit": n, "up_seconds": round(up_seconds, 2), "served_seconds": round(served, 2),
                        "load_avg_start": round(la, 1), "rebuilt": sorted(set(env.images) - set(env.reused_images)),
                        "loads": sent, "timings": table(env), "critical_path": list(env.critical_path)})
            print(f"edit {n}: up {up_seconds:.1f} s (load {la:.1f})", file=sys.stderr)
    finally:
        app.write_text(original)
        Session(load_suite(suite_file), engine, clusters=clusters, command="bench").down(force=True)
    return {"edits": out, "median_up_seconds": statistics.median(e["up_seconds"] for e in out), "goal": "<= 5 s"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", default="cold,loop,loop-notification")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--edits", type=int, default=3)
    args = ap.parse_args()
    engine = get_engine()
    results: dict[str, Any] = {"cluster": CLUSTER}
    with tempfile.TemporaryDirectory(prefix="kti-bench-loop-") as tmp:
        clusters = KindClusters(engine, state_dir=Path(tmp) / "state", kind_binary=lab_kind_binary())
        suite_file = copy_suite(Path(tmp) / "w")
        phases = args.only.split(",")
        if "cold" in phases:
            results["cold"] = cold(suite_file, engine, clusters, args.repeats)
        if "loop" in phases:
            results["loop"] = loop(suite_file, engine, clusters, args.edits)
        if "loop-notification" in phases:  # a service no Job runs: only its Deployment rolls out
            results["loop_notification"] = loop(copy_suite(Path(tmp) / "n", "notification"), engine, clusters,
                                                args.edits)
    write_results(results, ROOT / "bench" / "results" / "loop.json")


if __name__ == "__main__":
    main()
