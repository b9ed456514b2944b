"""Benchmarks for the core: digest speed, reuse vs full build, parallel vs sequential builds.

Run: ``.venv/bin/python bench/run.py [--only digest,reuse,parallel] [--out bench/results/core.json]``.
Prints one JSON document (also written to --out); every comparison is measured side by side in the
same run. Images created here are removed at the end (by run id).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import base_image, write_results

from kubetest_infra.build import Builder, BuildSpec
from kubetest_infra.cleanup import remove_run_images
from kubetest_infra.digest import DigestCache, compute_digest
from kubetest_infra.engine import get_engine
from kubetest_infra.tags import new_run_id

ROOT = Path(__file__).resolve().parents[1]


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def make_tree(root: Path, files: int, total_bytes: int) -> None:
    size = total_bytes // files
    chunk = os.urandom(size)
    for i in range(files):
        d = root / f"d{i // 100:03d}"
        if i % 100 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.bin").write_bytes(chunk[: size - 8] + i.to_bytes(8, "little"))
    (root / "Dockerfile").write_text("FROM scratch\nCOPY . /ctx/\n")
    (root / ".dockerignore").write_text("**/*.tmp\n!keep.tmp\n")
    old = time.time() - 60  # older than the racy window, as a checkout would be
    for p in root.rglob("*"):
        os.utime(p, (old, old))


def bench_digest(tmp: Path, repeats: int) -> dict[str, object]:
    ctx = tmp / "digest-ctx"
    make_tree(ctx, 10_000, 100 * 1024 * 1024)
    cache_path = tmp / "digest-cache.json"
    cold = []
    warm = []
    for _ in range(repeats):
        cache_path.unlink(missing_ok=True)
        cold.append(timed(lambda: compute_digest(ctx, cache=DigestCache(cache_path))))
        warm.append(timed(lambda: compute_digest(ctx, cache=DigestCache(cache_path))))
    result = compute_digest(ctx, cache=DigestCache(cache_path))
    return {
        "files": result.file_count,
        "bytes": result.total_bytes,
        "cold_seconds_median": round(statistics.median(cold), 3),
        "warm_seconds_median": round(statistics.median(warm), 3),
        "cold_seconds_all": [round(x, 3) for x in cold],
        "warm_seconds_all": [round(x, 3) for x in warm],
        "cold_over_warm": round(statistics.median(cold) / statistics.median(warm), 1),
        "goal_warm_seconds": 1.0,
        "note": "cold = no digest cache (file contents in the page cache); warm = on-disk stat cache",
    }


SERVICE_DOCKERFILE = """ARG BASE_IMAGE
FROM ${BASE_IMAGE}
WORKDIR /app
COPY . /app
RUN python3 -m compileall -q /app && \\
    python3 -c "import hashlib,pathlib; [hashlib.sha256(p.read_bytes()) for p in pathlib.Path('/app').rglob('*.py')]"
"""


def make_service(root: Path, modules: int, tag: str) -> Path:
    root.mkdir(parents=True)
    (root / "Dockerfile").write_text(SERVICE_DOCKERFILE)
    for i in range(modules):
        body = "\n".join(f"def f{j}(x):\n    return x * {j} + {i}  # {tag}\n" for j in range(40))
        (root / f"mod_{i:04d}.py").write_text(body)
    return root


def bench_reuse(tmp: Path, base: str, repeats: int) -> dict[str, object]:
    engine = get_engine()
    ctx = make_service(tmp / "reuse-svc", 400, new_run_id())
    spec = BuildSpec("benchreuse", ctx, build_args={"BASE_IMAGE": base})
    full, reuse, run_ids = [], [], []
    for _ in range(repeats):
        b1 = Builder(engine, new_run_id(), "bench", no_cache=True, cache_dir=tmp / "c")
        b2 = Builder(engine, new_run_id(), "bench", cache_dir=tmp / "c")
        run_ids += [b1.run_id, b2.run_id]
        full.append(timed(lambda b=b1: b.build(spec)))  # type: ignore[misc]
        img = b2.build(spec)
        assert img.reused
        reuse.append(img.build_seconds)
    for r in run_ids:
        remove_run_images(engine, r)
    return {
        "full_build_seconds_median": round(statistics.median(full), 3),
        "reuse_retag_seconds_median": round(statistics.median(reuse), 3),
        "full_over_reuse": round(statistics.median(full) / statistics.median(reuse), 1),
        "full_all": [round(x, 3) for x in full],
        "reuse_all": [round(x, 3) for x in reuse],
        "note": "full = --no-cache build of 400 modules + compileall; reuse = digest + retag of the same inputs",
    }


def bench_parallel(tmp: Path, base: str, repeats: int) -> dict[str, object]:
    engine = get_engine()
    seq, par = [], []
    run_ids: list[str] = []
    for r in range(repeats):
        specs = [BuildSpec(f"benchpar{i}", make_service(tmp / f"par-{r}-{i}", 150, new_run_id()),
                           build_args={"BASE_IMAGE": base}) for i in range(3)]
        bs = Builder(engine, new_run_id(), "bench", no_cache=True, cache_dir=tmp / "c")
        bp = Builder(engine, new_run_id(), "bench", no_cache=True, cache_dir=tmp / "c")
        run_ids += [bs.run_id, bp.run_id]
        seq.append(timed(lambda b=bs, s=specs: [b.build(x) for x in s]))  # type: ignore[misc]
        par.append(timed(lambda b=bp, s=specs: b.build_many(s, max_workers=3)))  # type: ignore[misc]
    for rid in run_ids:
        remove_run_images(engine, rid)
    return {
        "sequential_seconds_median": round(statistics.median(seq), 3),
        "parallel_seconds_median": round(statistics.median(par), 3),
        "sequential_over_parallel": round(statistics.median(seq) / statistics.median(par), 2),
        "sequential_all": [round(x, 3) for x in seq],
        "parallel_all": [round(x, 3) for x in par],
        "cores": os.cpu_count(),
        "note": "3 --no-cache builds (150 modules each), one after another vs build_many(max_workers=3)",
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="digest,reuse,parallel")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "core.json")
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="kti-bench-"))
    results: dict[str, object] = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "engine": get_engine().info().__dict__,
    }
    try:
        if "digest" in wanted:
            results["digest_10k_files_100mb"] = bench_digest(tmp, args.repeats)
        if "reuse" in wanted or "parallel" in wanted:
            base = base_image()
            if "reuse" in wanted:
                results["reuse_vs_full_build"] = bench_reuse(tmp, base, args.repeats)
            if "parallel" in wanted:
                results["parallel_vs_sequential_3_images"] = bench_parallel(tmp, base, args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_results(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
