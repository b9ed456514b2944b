"""Where the seconds of an image load go, and our loader against ``kind load docker-image``.

Phase ``decompose`` (issue 14, item 1): one fresh image (the python base + a random-content layer,
~190 MB) loaded into 1 and 2 nodes, step by step, each repeated and interleaved:

- export: ``docker save > /dev/null`` vs reading the layers from the engine's store (ours);
- transport: ``docker save | docker exec -i NODE cat > /dev/null``; and from a saved file (page cache),
  which isolates ``docker exec``'s stream from the export;
- ingest: ``ctr images import --no-unpack -`` (content store only) and a full import (ingest + unpack)
  from the saved file: unpack = the difference;
- the node's disk: 190 MB written with and without fsync, ``docker exec`` and ``ctr`` round trips;
- ``kind load docker-image`` (``--nodes`` for one node).

Phase ``goals`` (the issue's table), ours vs kind side by side in the same run:

- cold load, one fresh image, 2 nodes;
- incremental: the same image with only its top layer (< 1 MB) changed, 2 nodes; bytes sent;
- 3 fresh images sharing one base, cold, 2 nodes: one call each (kind: one call with 3 images, as
  ``kind load docker-image a b c``; also 3 separate kind calls).

Run under ``/work/wt/kind-slot`` on the lab:
``.venv/bin/python bench/load.py [--repeats 3] [--only decompose,goals] [--keep]``;
JSON to bench/results/load.json (load averages included).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import base_image, write_results

from conftest import lab_kind_binary, lab_node_image
from kubetest_infra.build import Builder, BuildSpec, BuiltImage
from kubetest_infra.cleanup import remove_run_images
from kubetest_infra.cluster import ClusterConfig, KindClusters
from kubetest_infra.engine import Engine, get_engine
from kubetest_infra.load import LoadedImage, Loader
from kubetest_infra.oci import chain_ids
from kubetest_infra.runner import SubprocessRunner
from kubetest_infra.tags import new_run_id

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = os.environ.get("KTI_BENCH_CLUSTER", "kti-delivery-bench")
DEVNULL = ["sh", "-c", "cat > /dev/null"]  # read the stream inside the node, send nothing back
STATE = Path(os.environ.get("KTI_STATE_DIR", "/tmp/kti-state-delivery")) / "bench"


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def sh(*argv: str, stdin: Any = None, stdout: Any = subprocess.DEVNULL) -> None:
    subprocess.run(argv, check=True, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)


def med(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


class CpuMeter:
    """CPU seconds spent by the bench cluster's node containers (their cgroups: containerd, ctr, shims'
    children), by this process and its children (docker/kind CLIs), and by dockerd (shared with other
    sessions: noisy). CPU work does not inflate with the load average the way wall time does."""

    def __init__(self, nodes: list[str]) -> None:
        self.cgroups: list[Path] = []
        for node in nodes:
            cid = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", node], capture_output=True, text=True,
                                 check=True).stdout.strip()
            for cand in (Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage"),
                         Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat")):
                if cand.is_file():
                    self.cgroups.append(cand)
                    break
        self.dockerd = subprocess.run(["pgrep", "-xo", "dockerd"], capture_output=True, text=True).stdout.strip()

    def _nodes(self) -> float:
        total = 0.0
        for path in self.cgroups:
            text = path.read_text()
            if path.name == "cpuacct.usage":
                total += int(text) / 1e9
            else:
                total += int(dict(line.split() for line in text.splitlines())["usage_usec"]) / 1e6
        return total

    def _dockerd(self) -> float:
        try:
            fields = Path(f"/proc/{self.dockerd}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def snapshot(self) -> tuple[float, float, float]:
        t = os.times()
        return self._nodes(), t.user + t.system + t.children_user + t.children_system, self._dockerd()

    def since(self, before: tuple[float, float, float]) -> dict[str, float]:
        after = self.snapshot()
        return {"nodes": round(after[0] - before[0], 3), "host": round(after[1] - before[1], 3),
                "dockerd": round(after[2] - before[2], 3)}


class Bench:
    def __init__(self, engine: Engine, clusters: KindClusters, nodes: list[str], run_id: str, tmp: Path) -> None:
        self.engine = engine
        self.clusters = clusters
        self.nodes = nodes
        self.run_id = run_id
        self.tmp = tmp
        self.runner = SubprocessRunner()
        self.meter = CpuMeter(nodes)
        self.loader = Loader(engine)
        self.samples: dict[str, list[float]] = {}
        self.cpu: dict[str, list[dict[str, float]]] = {}
        self.kind_env = {**os.environ, "KIND_EXPERIMENTAL_PROVIDER": engine.name}
        # what the node image brought (kubeadm's images): never touched
        baseline_file = STATE / f"{CLUSTER}.baseline.json"
        if baseline_file.is_file():
            self.baseline: dict[str, set[str]] = {k: set(v) for k, v in json.loads(baseline_file.read_text()).items()}
        else:
            self.baseline = {n: set(self.node_images(n)) for n in nodes}
            baseline_file.write_text(json.dumps({k: sorted(v) for k, v in self.baseline.items()}))

    # -- images ------------------------------------------------------------------------------
    def build(self, name: str, random_mb: float, base: str, top_kb: int = 0) -> BuiltImage:
        """The base + a random layer of ``random_mb`` (+ a random top layer of ``top_kb``, rewritten on
        every call: the same context built again changes only that top layer)."""
        ctx = self.tmp / f"ctx-{name}"
        ctx.mkdir(parents=True, exist_ok=True)
        lines = ["ARG BASE_IMAGE", "FROM ${BASE_IMAGE}", "COPY blob /blob"]
        if not (ctx / "blob").exists():
            (ctx / "blob").write_bytes(os.urandom(int(random_mb * 1024 * 1024)))
        if top_kb:
            (ctx / "marker").write_bytes(os.urandom(top_kb * 1024))
            lines.append("COPY marker /marker")
        (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
        return Builder(self.engine, self.run_id, "bench").build(
            BuildSpec(name, ctx, build_args={"BASE_IMAGE": base}))

    def measure(self, key: str, fn: Callable[[], object]) -> object:
        """Run ``fn``; record its wall seconds and CPU seconds under ``key``."""
        before = self.meter.snapshot()
        t = time.monotonic()
        value = fn()
        self.samples.setdefault(key, []).append(round(time.monotonic() - t, 3))
        self.cpu.setdefault(key, []).append(self.meter.since(before))
        return value

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"median_seconds": {k: med(v) for k, v in self.samples.items()},
                               "median_cpu_seconds": {k: {part: med([c[part] for c in v]) for part in v[0]}
                                                      for k, v in self.cpu.items()},
                               "all_seconds": dict(self.samples)}
        self.samples, self.cpu = {}, {}
        return out

    def diff_ids(self, ref: str) -> list[str]:
        out = subprocess.run(["docker", "image", "inspect", ref, "--format", "{{json .RootFS.Layers}}"],
                             check=True, capture_output=True, text=True).stdout
        return list(json.loads(out))

    # -- node state --------------------------------------------------------------------------
    def purge(self, nodes: list[str] | None = None) -> None:
        """Remove every image record the bench added (the CRI plugin's ``sha256:<id>`` records too) and,
        through a synchronous GC, their content and snapshots: the next load is cold again."""
        for node in nodes or self.nodes:
            doomed = [n for n in self.node_images(node) if n not in self.baseline[node]]
            if doomed:
                subprocess.run(["docker", "exec", node, "ctr", "-n", "k8s.io", "images", "rm", "--sync", *doomed],
                               capture_output=True, check=False)

    def node_images(self, node: str) -> list[str]:
        return subprocess.run(["docker", "exec", node, "ctr", "-n", "k8s.io", "images", "ls", "-q"],
                              capture_output=True, text=True, check=True).stdout.split()

    def snapshot_present(self, node: str, key: str) -> bool:
        return subprocess.run(["docker", "exec", node, "ctr", "-n", "k8s.io", "snapshots", "info", key],
                              capture_output=True, check=False).returncode == 0

    def fan(self, producer: list[str], consumer_tail: list[str], nodes: list[str]) -> None:
        consumers = [["docker", "exec", "-i", n, *consumer_tail] for n in nodes]
        results = self.runner.pipe(producer, consumers, timeout=600)
        bad = [r for r in results if r.returncode != 0]
        if bad:
            raise RuntimeError(f"{bad[0].argv}: {bad[0].stderr[-400:]}")

    def kind_load(self, refs: list[str], nodes: list[str]) -> None:
        argv = [self.clusters.kind, "load", "docker-image", *refs, "--name", CLUSTER]
        if len(nodes) < len(self.nodes):
            argv += ["--nodes", ",".join(nodes)]
        subprocess.run(argv, check=True, capture_output=True, env=self.kind_env)


def decompose(b: Bench, image: BuiltImage, repeats: int) -> dict[str, Any]:
    from kubetest_infra.layerstore import DockerStore
    from kubetest_infra.oci import oci_layout

    archive = b.tmp / "image.tar"
    sh("docker", "save", "-o", str(archive), image.ref)
    size = archive.stat().st_size
    store, why = DockerStore.open(b.engine)
    diffs = b.diff_ids(image.ref)
    base_chain = chain_ids(diffs)[0]
    one, two = b.nodes[:1], b.nodes
    ctr = ["ctr", "-n", "k8s.io", "images", "import", "--platform", "linux/amd64", "--snapshotter=overlayfs"]

    def add(key: str, fn: Callable[[], object]) -> None:
        b.measure(key, fn)

    def store_read() -> None:
        assert store is not None
        parts = store.parts(image.image_id)
        for _ in oci_layout([(parts, "x")], [store.layer(parts, i) for i in range(len(parts.layers))]):
            pass

    for _ in range(repeats):
        b.purge()
        for node in b.nodes:
            assert not b.snapshot_present(node, base_chain), f"{node} still has the base layer: not a cold load"
        add("export_docker_save", lambda: sh("docker", "save", image.ref))
        if store is not None:
            add("export_store_read_verified", store_read)
        add("transport_save_to_1_node", lambda: b.fan(["docker", "save", image.ref], DEVNULL, one))
        add("transport_save_to_2_nodes", lambda: b.fan(["docker", "save", image.ref], DEVNULL, two))
        add("transport_file_to_1_node", lambda: b.fan(["cat", str(archive)], DEVNULL, one))
        add("transport_file_to_2_nodes", lambda: b.fan(["cat", str(archive)], DEVNULL, two))
        for label, nodes in (("1_node", one), ("2_nodes", two)):
            add(f"ingest_no_unpack_file_{label}",
                lambda nodes=nodes: b.fan(["cat", str(archive)], [*ctr, "--no-unpack", "-"], nodes))
            b.purge()
            add(f"import_unpack_file_{label}",
                lambda nodes=nodes: b.fan(["cat", str(archive)], [*ctr, "-"], nodes))
            b.purge()
            add(f"today_save_import_{label}",
                lambda nodes=nodes: b.fan(["docker", "save", image.ref], [*ctr, "-"], nodes))
            b.purge()
            add(f"kind_load_{label}", lambda nodes=nodes: b.kind_load([image.ref], nodes))
            b.purge()
            add(f"ours_load_{label}", lambda nodes=nodes: b.loader.load(image, nodes))
            b.purge()
        first = b.nodes[0]
        mb = max(1, size >> 20)
        for flag, key in (("conv=fsync", "node_disk_write_fsync"), ("", "node_disk_write_no_fsync")):
            script = f"dd if=/dev/zero of=/var/lib/containerd/kti-bench.dd bs=1M count={mb} {flag} 2>/dev/null; " \
                     "rm -f /var/lib/containerd/kti-bench.dd"
            add(key, lambda script=script, n=first: sh("docker", "exec", n, "sh", "-c", script))
        add("docker_exec_true", lambda n=first: sh("docker", "exec", n, "true"))
        add("docker_exec_ctr_version", lambda n=first: sh("docker", "exec", n, "ctr", "version"))
    out: dict[str, Any] = {"image_bytes": size, "layers": len(diffs), "store_reader": why or "available",
                           **b.summary()}
    m = out["median_seconds"]
    out["derived"] = {
        "unpack_1_node": round(m["import_unpack_file_1_node"] - m["ingest_no_unpack_file_1_node"], 3),
        "unpack_2_nodes": round(m["import_unpack_file_2_nodes"] - m["ingest_no_unpack_file_2_nodes"], 3),
        "fsync_share_of_disk_write": round(1 - m["node_disk_write_no_fsync"] / m["node_disk_write_fsync"], 2),
        "export_mb_per_s": round(size / 1e6 / m["export_docker_save"], 1),
        "docker_exec_mb_per_s_1_node": round(size / 1e6 / m["transport_file_to_1_node"], 1),
    }
    return out


def sent(loaded: object) -> int:
    """Bytes our loader sent per node (the same stream goes to every node of a group)."""
    items = loaded if isinstance(loaded, list) else [loaded]
    return max((n.bytes_sent for li in items if isinstance(li, LoadedImage) for n in li.nodes), default=0)


def goals(b: Bench, repeats: int, random_mb: float, base: str) -> dict[str, Any]:
    """The issue's goal table, ours vs kind side by side in the same run (order alternated)."""
    nodes = b.nodes
    out: dict[str, Any] = {}
    extra_tags: list[str] = []
    try:
        # 1. cold load, one fresh image, 2 nodes
        img = b.build("cold", random_mb, base)
        bytes_ours: list[int] = []
        for r in range(repeats):
            for who in (("ours", "kind") if r % 2 == 0 else ("kind", "ours")):
                b.purge()
                if who == "ours":
                    bytes_ours.append(sent(b.measure("cold_ours", lambda: b.loader.load(img, nodes))))
                else:
                    b.measure("cold_kind", lambda: b.kind_load([img.ref], nodes))
        out["cold_one_image_2_nodes"] = {**b.summary(), "image_bytes": b.engine.inspect_image(img.ref).size,
                                         "bytes_sent_per_node_ours": bytes_ours}

        # 2. incremental: the same image with only its top layer changed (256 KiB), 2 nodes
        v1 = b.build("incr", random_mb, base, top_kb=256)
        keep_v1 = f"localhost/kti-bench-keep:v1-{b.run_id}"
        b.engine.tag(v1.ref, keep_v1)
        extra_tags.append(keep_v1)
        v2 = b.build("incr", random_mb, base, top_kb=256)
        keep_v2 = f"localhost/kti-bench-keep:v2-{b.run_id}"
        b.engine.tag(v2.ref, keep_v2)
        extra_tags.append(keep_v2)
        assert v1.ref == v2.ref
        assert v1.image_id != v2.image_id
        top = b.diff_ids(keep_v2)[-1]
        assert top not in b.diff_ids(keep_v1)
        assert b.diff_ids(keep_v1)[:-1] == b.diff_ids(keep_v2)[:-1]
        bytes_ours = []
        for r in range(repeats):
            for who in (("ours", "kind") if r % 2 == 0 else ("kind", "ours")):
                b.purge()
                b.engine.tag(keep_v1, v1.ref)  # the nodes hold version 1 (loaded by the same tool) ...
                if who == "ours":
                    b.loader.load(v1, nodes)
                else:
                    b.kind_load([v1.ref], nodes)
                b.engine.tag(keep_v2, v2.ref)  # ... and the edit produced version 2 under the same ref
                if who == "ours":
                    bytes_ours.append(sent(b.measure("incremental_ours", lambda: b.loader.load(v2, nodes))))
                else:
                    b.measure("incremental_kind", lambda: b.kind_load([v2.ref], nodes))
        out["incremental_top_layer_2_nodes"] = {
            **b.summary(), "image_bytes": b.engine.inspect_image(keep_v2).size,
            "top_layer_bytes": 256 * 1024, "bytes_sent_per_node_ours": bytes_ours,
            "bytes_sent_per_node_kind": "the whole image (docker save of every layer)"}

        # 3. three fresh images sharing one base, cold, 2 nodes
        imgs = [b.build(f"share{i}", random_mb, base) for i in range(3)]
        refs = [i.ref for i in imgs]
        bytes_ours = []
        for r in range(repeats):
            runs = ["ours_one_call", "kind_one_call", "kind_three_calls", "ours_three_calls"]
            for who in (runs if r % 2 == 0 else runs[::-1]):
                b.purge()
                if who == "ours_one_call":
                    bytes_ours.append(sent(b.measure("shared_base_ours_one_call",
                                                     lambda: b.loader.load_many(imgs, nodes))))
                elif who == "ours_three_calls":
                    b.measure("shared_base_ours_three_calls", lambda: [b.loader.load(i, nodes) for i in imgs])
                elif who == "kind_one_call":
                    b.measure("shared_base_kind_one_call", lambda: b.kind_load(refs, nodes))
                else:
                    b.measure("shared_base_kind_three_calls", lambda: [b.kind_load([ref], nodes) for ref in refs])
        out["three_images_shared_base_2_nodes"] = {**b.summary(), "bytes_sent_per_node_ours_one_call": bytes_ours,
                                                   "image_bytes_each": b.engine.inspect_image(refs[0]).size}
    finally:
        for tag in extra_tags:
            b.engine.untag(tag)
    ratios = {}
    for key, ours, kind in (("cold_one_image_2_nodes", "cold_ours", "cold_kind"),
                            ("incremental_top_layer_2_nodes", "incremental_ours", "incremental_kind"),
                            ("three_images_shared_base_2_nodes", "shared_base_ours_one_call",
                             "shared_base_kind_one_call"),
                            ("three_images_shared_base_2_nodes", "shared_base_ours_one_call",
                             "shared_base_kind_three_calls")):
        m = out[key]["median_seconds"]
        ratios[f"{kind}_over_{ours}"] = round(m[kind] / m[ours], 2)
    out["kind_over_ours"] = ratios
    out["goals"] = {"cold": ">= 1.5", "incremental": ">= 10, bytes sent ~ changed layers", "shared_base": ">= 2"}
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="decompose,goals")
    parser.add_argument("--random-mb", type=float, default=12.0, help="size of the random layer on the base")
    parser.add_argument("--keep", action="store_true", help="keep the bench cluster")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "load.json")
    args = parser.parse_args()
    phases = set(args.only.split(","))
    engine = get_engine()
    clusters = KindClusters(engine, state_dir=STATE, kind_binary=lab_kind_binary())
    results: dict[str, Any] = {"started": datetime.now(timezone.utc).isoformat(), "loadavg_start": loadavg(),
                               "cpus": os.cpu_count()}
    t = time.monotonic()
    cluster = clusters.ensure(ClusterConfig(CLUSTER, node_image=lab_node_image(), workers=1))
    results["cluster"] = {"nodes": list(cluster.nodes), "create_seconds": round(time.monotonic() - t, 1),
                          "reused": cluster.reused}
    run_id = new_run_id()
    tmp = Path(tempfile.mkdtemp(prefix="kti-delivery-bench-"))
    b = Bench(engine, clusters, list(cluster.nodes), run_id, tmp)
    try:
        if "decompose" in phases:
            image = b.build("loadbench", args.random_mb, base_image())
            results["decompose"] = decompose(b, image, args.repeats)
            results["loadavg_after_decompose"] = loadavg()
        if "goals" in phases:
            results["goals"] = goals(b, args.repeats, args.random_mb, base_image())
            results["loadavg_after_goals"] = loadavg()
    finally:
        b.purge()
        remove_run_images(engine, run_id)
        shutil.rmtree(tmp, ignore_errors=True)
        if not args.keep:
            clusters.delete(cluster.name)
    results["loadavg_end"] = loadavg()
    write_results(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
