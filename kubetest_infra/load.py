"""Loading built images into every node of a Kind cluster: layer-aware, staged, verified, pinned.

For a batch of images and nodes (:meth:`Loader.load_many`; :meth:`Loader.load` is a batch of one):

1. **probe** each node once (one ``docker exec``): image records, committed snapshots, content digests;
2. **plan** per node and image (:mod:`loadplan`): ``present`` (nothing moves), ``retagged`` (the
   image is there under another name: a tag, no bytes) or a transfer of config + manifest + only the
   layers above the longest prefix of the image's chain that the node has already unpacked;
3. **stream** one archive per group of nodes that need the same bytes, fanned out with no temp file:
   an OCI layout assembled from the engine's own layer store (:mod:`layerstore`: no ``docker save``,
   each layer hashed against its diff id as it streams), or, when that store cannot be read here
   (podman, a remote engine), ``docker save`` re-emitted with staging names;
4. ``ctr images import`` creates a **staging** record; it is verified (config digest = image id,
   rootfs snapshot committed) before the real reference is tagged, labelled
   ``io.cri-containerd.pinned=pinned`` (the kubelet's image GC skips pinned images on containerd ≥
   1.6.22/1.7.3) and ``kubetest-infra.io/loaded=true``, and the staging record removed. An
   interrupted load leaves at most a staging record (removed by a later load once stale), never a
   half-imported image under the reference the kubelet looks up;
5. **verify** again from the node: the reference resolves to the image id and its rootfs snapshot is
   committed, or :class:`LoadError` names the node and what it found.

A partial transfer that fails (a layer the probe saw was garbage-collected meanwhile) is retried once
as a full transfer. Loads into the same node are serialised (a lock per node), so concurrent loads of
images sharing a base send that base once. Per-node timings, bytes and layers sent come back as values.

:meth:`Loader.wait_for_containerd` lets loads start while ``kind create`` is still running (a node's
containerd answers seconds after its container starts); :meth:`Loader.unload` unpins and removes
what was loaded (teardown).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO, Any, Literal

from kubetest_infra.build import BuiltImage
from kubetest_infra.engine import Engine
from kubetest_infra.errors import CommandError, KtiError
from kubetest_infra.layerstore import DockerStore
from kubetest_infra.loadplan import (
    LABELS,
    LOAD,
    LOADED_LABEL,
    PINNED,
    PROBE,
    NodePlan,
    NodeState,
    Readback,
    load_args,
    parse_outcome,
    parse_probe,
    parse_readback,
    plan_node,
    staging_name,
    stale_staging,
)
from kubetest_infra.oci import FormatError, ImageParts, chain_ids, oci_layout, rename_docker_archive
from kubetest_infra.runner import CommandResult
from kubetest_infra.tags import parse_ref

log = logging.getLogger("kubetest_infra.load")

Action = Literal["present", "retagged", "loaded"]
Mode = Literal["", "layers", "archive"]


class LoadError(KtiError):
    """An image did not reach a node intact."""


@dataclass(frozen=True)
class NodeLoad:
    node: str
    action: Action
    seconds: float
    bytes_sent: int = 0
    layers_sent: int = 0
    layers_total: int = 0
    mode: Mode = ""  # how bytes moved: an OCI layout of the needed layers, or a whole `docker save`
    fallback: bool = False  # a partial transfer failed and a full one succeeded
    phases: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "action": self.action, "seconds": round(self.seconds, 3),
                "bytes_sent": self.bytes_sent, "layers_sent": self.layers_sent, "layers_total": self.layers_total,
                "mode": self.mode, "fallback": self.fallback,
                "phases": {k: round(v, 3) for k, v in self.phases.items()}}


@dataclass(frozen=True)
class LoadedImage:
    ref: str
    image_id: str
    nodes: tuple[NodeLoad, ...]
    seconds: float

    @property
    def transferred(self) -> bool:
        return any(n.action == "loaded" for n in self.nodes)

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "image_id": self.image_id, "seconds": round(self.seconds, 3),
                "nodes": [n.to_json() for n in self.nodes]}


def normalize_ref(ref: str) -> str:
    """containerd's name for a reference: ``redis:7`` → ``docker.io/library/redis:7``."""
    parsed = parse_ref(ref)
    if parsed.domain:
        return ref
    path = parsed.path if "/" in parsed.path else f"library/{parsed.path}"
    tag = f":{parsed.tag}" if parsed.tag else ""
    digest = f"@{parsed.digest}" if parsed.digest else ""
    return f"docker.io/{path}{tag}{digest}"


def local_image(engine: Engine, ref: str) -> BuiltImage:
    """A local image, by reference, as a :class:`BuiltImage` the loader accepts (``kti load``)."""
    info = engine.inspect_image(ref)
    if info is None:
        raise LoadError(f"image {ref!r} is not present in the {engine.name} engine",
                        hint=f"build or pull it first ('{engine.binary} images' lists what is there)")
    return BuiltImage(name=ref, ref=ref, image_id=info.id, input_digest="", reused=True, build_seconds=0.0,
                      digest_seconds=0.0, engine=engine.name, run_id="")


def kind_node_names(cluster: str, control_planes: int = 1, workers: int = 0) -> list[str]:
    """The node container names ``kind create cluster`` will give (known before the nodes exist)."""
    names = [f"{cluster}-control-plane{'' if i == 1 else i}" for i in range(1, control_planes + 1)]
    names += [f"{cluster}-worker{'' if i == 1 else i}" for i in range(1, workers + 1)]
    return names


_RESOLVE = (
    'd=$(ctr -n k8s.io images ls "name==$1" | awk \'NR==2 {print $3}\') && [ -n "$d" ] '
    '&& ctr -n k8s.io content get "$d"'
)


def _json_doc(text: str) -> dict[str, Any]:
    """A JSON object from ctr's output, or {} when there is none."""
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


@dataclass
class _Job:
    """One image of a batch: what we know about it and what happened on each node."""

    image: BuiltImage
    name: str  # containerd's name for the ref
    diff_ids: tuple[str, ...]
    parts: ImageParts | None  # None: the engine store is not readable, a whole docker save is sent
    staging: str = ""
    staged_target: str = ""
    done: dict[str, NodeLoad] = field(default_factory=dict)

    @property
    def rootfs(self) -> str:
        return chain_ids(self.diff_ids)[-1] if self.diff_ids else ""

    @property
    def proven(self) -> str:
        """A manifest digest already known to carry this image's config ("-" when none): ours, or the
        one the node made from ``docker save`` once its config was read back and checked."""
        if self.parts is not None:
            return self.parts.manifest_digest
        return self.staged_target or "-"


@dataclass
class _Counter:
    sent: int = 0

    def wrap(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.sent += len(chunk)
            yield chunk


PAUSED_WAIT = 60.0  # seconds a paused node may take to run again before a load step gives up


class Loader:
    """Loads images into Kind nodes through the run's engine."""

    def __init__(self, engine: Engine, snapshotter: str = "overlayfs", timeout: float = 600, *,
                 labels: Mapping[str, str] | None = None, read_store: bool = True) -> None:
        self.engine = engine
        self.snapshotter = snapshotter
        self.timeout = timeout
        self.labels = dict(LABELS if labels is None else labels)
        self._read_store = read_store
        self._store: DockerStore | None = None
        self._store_why = ""
        self._store_checked = False
        self._guard = threading.Lock()
        self._node_locks: dict[str, threading.Lock] = {}
        # when the load holding each node's lock began: a node (re)started since then is reported as such
        self._began: dict[str, float] = {}

    # -- what the engine and nodes hold ----------------------------------------------------
    @property
    def store(self) -> DockerStore | None:
        """The engine's layer store when it can be read here (else ``store_unavailable`` says why)."""
        with self._guard:
            if not self._store_checked:
                self._store_checked = True
                if self._read_store:
                    self._store, self._store_why = DockerStore.open(self.engine)
                else:
                    self._store_why = "disabled"
            return self._store

    @property
    def store_unavailable(self) -> str:
        _ = self.store
        return self._store_why

    def node_images(self, node: str) -> dict[str, str]:
        """Normalised reference → target (manifest) digest, from the node's containerd."""
        out = self.engine.run("exec", node, "ctr", "-n", "k8s.io", "images", "ls", timeout=60).stdout
        images: dict[str, str] = {}
        for line in out.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3 and parts[2].startswith("sha256:"):
                images[parts[0]] = parts[2]
        return images

    def config_digest(self, node: str, target: str) -> str | None:
        """The image id (config digest) behind a manifest or index digest in the node's content store."""
        res = self.engine.run("exec", node, "ctr", "-n", "k8s.io", "content", "get", target, check=False,
                              timeout=60)
        doc = _json_doc(res.stdout) if res.returncode == 0 else {}
        if isinstance(doc.get("config"), dict):
            return str(doc["config"].get("digest"))
        for entry in doc.get("manifests") or []:  # an index: the linux/amd64 (or only) manifest
            platform = entry.get("platform") or {}
            if platform.get("os", "linux") == "linux" and platform.get("architecture", "amd64") == "amd64":
                return self.config_digest(node, str(entry.get("digest")))
        return None

    def node_image_id(self, node: str, ref: str) -> str | None:
        """The image id the node's containerd resolves ``ref`` to, or None (one exec per call)."""
        # The reference is a positional parameter of a fixed script, never part of the script text.
        res = self.engine.run("exec", node, "sh", "-c", _RESOLVE, "kti", normalize_ref(ref), check=False, timeout=60)
        doc = _json_doc(res.stdout) if res.returncode == 0 else {}
        if not doc:
            return None
        if isinstance(doc.get("config"), dict):
            return str(doc["config"].get("digest"))
        target = self.node_images(node).get(normalize_ref(ref))  # an index: resolve its platform manifest
        return self.config_digest(node, target) if target else None

    def _exec(self, node: str, *argv: str, timeout: float) -> CommandResult:
        """``docker exec NODE argv`` (unchecked). A paused node (a frozen VM, ``docker pause``) refuses any
        exec at once: wait up to :data:`PAUSED_WAIT` seconds for it to run again, then try once more."""
        res = self.engine.run("exec", node, *argv, check=False, timeout=timeout)
        if res.returncode == 0 or "is paused" not in res.stderr:
            return res
        deadline = time.monotonic() + PAUSED_WAIT
        while time.monotonic() < deadline:
            state = self.engine.run("inspect", "-f", "{{.State.Paused}}", node, check=False, timeout=30)
            if state.returncode != 0 or state.stdout.strip() != "true":
                break
            time.sleep(0.5)
        return self.engine.run("exec", node, *argv, check=False, timeout=timeout)

    def probe(self, node: str) -> NodeState:
        """One exec: the node's image records, committed snapshots and content digests."""
        res = self._exec(node, "sh", "-c", PROBE, "kti", self.snapshotter, timeout=60)
        if res.returncode != 0:
            raise LoadError(f"cannot read the containerd state of node {node}: "
                            f"{self._node_problem(node, res.stderr)}",
                            hint="check the node is running ('kind get nodes', 'docker ps') and its containerd "
                            "answers ('docker exec NODE ctr version')")
        return parse_probe(node, res.stdout)

    def _run_load(self, node: str, quads: Sequence[tuple[str, str, str, str, str]], *, stale: Sequence[str] = (),
                  labels: Mapping[str, str] | None = None) -> tuple[set[str], dict[str, str], dict[str, Readback]]:
        """Run :data:`LOAD` without an import: (names handled, names refused with why, read-backs)."""
        args = load_args(self.snapshotter, "-", do_import=False, stale=stale,
                         labels=self.labels if labels is None else labels, quads=quads)
        res = self._exec(node, "sh", "-c", LOAD, "kti", *args, timeout=120)
        if res.returncode != 0:
            raise LoadError(f"node {node}: {self._node_problem(node, res.stderr)}",
                            hint="check the node is running ('docker ps') and its containerd answers")
        handled, failed = parse_outcome(res.stdout)
        return handled, failed, parse_readback(res.stdout)

    def readback(self, node: str, pairs: Sequence[tuple[str, str]]) -> dict[str, Readback]:
        """What each (name, rootfs chain id) resolves to on ``node``: target, manifest, labels, rootfs."""
        return self._run_load(node, [(n, "-", c, "-", "-") for n, c in pairs], labels={})[2]

    def wait_for_containerd(self, node: str, timeout: float = 180, interval: float = 0.5) -> float:
        """Wait until ``node``'s container exists and its containerd answers; the seconds waited.

        kind starts containerd in each node seconds after ``kind create`` starts, long before the
        cluster is Ready: loads can begin then (verification again once the cluster is Ready).
        """
        started = time.monotonic()
        while True:
            res = self.engine.run("exec", node, "ctr", "-n", "k8s.io", "version", check=False, timeout=30)
            if res.returncode == 0 and "Server:" in res.stdout:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise LoadError(f"the containerd of node {node} did not answer within {timeout:.0f} s: "
                                f"{(res.stderr or res.stdout).strip()[-200:]}",
                                hint="check that 'kind create cluster' is running and the node started "
                                "('docker ps -a', 'kind export logs')")
            time.sleep(interval)

    # -- loading ---------------------------------------------------------------------------
    def load(self, image: BuiltImage, nodes: Sequence[str]) -> LoadedImage:
        """Load one image into ``nodes`` (all concurrently) and verify every node."""
        return self.load_many([image], nodes)[0]

    def load_many(self, images: Sequence[BuiltImage], nodes: Sequence[str], *,
                  wait_for_nodes: float | None = None) -> list[LoadedImage]:
        """Load several images into ``nodes`` at once: one probe, one stream and one commit per node.

        ``wait_for_nodes`` (seconds): first wait for each node's containerd to answer (loads that
        start while the cluster is being created).
        """
        if not nodes:
            raise LoadError(f"no nodes to load {', '.join(i.ref for i in images)} into",
                            hint="create the cluster first")
        started = time.monotonic()
        nodes = list(dict.fromkeys(nodes))
        if wait_for_nodes is None:
            self._check_nodes(nodes)
        with ExitStack() as stack:
            for node in sorted(nodes):
                stack.enter_context(self._node_lock(node))
                self._began[node] = time.time()
            if wait_for_nodes is not None:  # the nodes may not exist yet (kind create is running)
                with ThreadPoolExecutor(max_workers=len(nodes), thread_name_prefix="kti-wait") as pool:
                    list(pool.map(lambda n: self.wait_for_containerd(n, wait_for_nodes), nodes))
                self._check_nodes(nodes)
            with ThreadPoolExecutor(max_workers=len(nodes), thread_name_prefix="kti-probe") as pool:
                probes = [pool.submit(self._timed_probe, n) for n in nodes]  # while the engine side is read
                jobs = self._jobs(images)
                timed = [p.result() for p in probes]
            self._load_locked(jobs, nodes, timed)
        total = time.monotonic() - started
        return [LoadedImage(j.image.ref, j.image.image_id, tuple(j.done[n] for n in nodes), total) for j in jobs]

    def _node_lock(self, node: str) -> threading.Lock:
        with self._guard:
            return self._node_locks.setdefault(node, threading.Lock())

    def _jobs(self, images: Sequence[BuiltImage]) -> list[_Job]:
        refs = [i.ref for i in images]
        if len(set(refs)) != len(refs):
            raise LoadError(f"the same reference is loaded twice in one batch: {refs}",
                            hint="load each reference once")
        found = self.engine.inspect_images(refs)  # in argument order when every ref exists
        local = found if len(found) == len(refs) else [self.engine.inspect_image(r) for r in refs]
        store = self.store
        jobs = []
        for image, info in zip(images, local, strict=True):
            if info is None or info.id != image.image_id:
                raise LoadError(
                    f"{image.ref} does not resolve to the built image {image.image_id[:19]} in the "
                    f"{self.engine.name} engine (found {info.id[:19] if info else 'nothing'})",
                    hint="the tag was removed or overwritten after the build; build again and load the returned ref")
            parts = None
            if store is not None:
                try:
                    parts = store.parts(image.image_id)
                except FormatError:
                    parts = None  # read through docker save instead
            diff_ids = parts.diff_ids if parts else self._diff_ids(image.ref)
            jobs.append(_Job(image, normalize_ref(image.ref), diff_ids, parts))
        return jobs

    def _diff_ids(self, ref: str) -> tuple[str, ...]:
        out = self.engine.run("image", "inspect", ref, "--format", "{{json .RootFS.Layers}}").stdout
        return tuple(json.loads(out or "[]") or ())

    def _load_locked(self, jobs: list[_Job], nodes: list[str], timed: list[tuple[NodeState, float]]) -> None:
        states = {s.node: s for s, _ in timed}
        probe_s = {s.node: t for s, t in timed}
        plans = {(n, j.name): self._plan(j, states[n]) for n in nodes for j in jobs}
        with ThreadPoolExecutor(max_workers=len(nodes), thread_name_prefix="kti-name") as pool:
            list(pool.map(lambda n: self._name_in_place(jobs, n, plans, states[n], probe_s[n]), nodes))
        pending = [n for n in nodes if any(plans[n, j.name].action == "transfer" for j in jobs)]
        if pending:
            self._transfer(jobs, pending, plans, states, probe_s)

    def _timed_probe(self, node: str) -> tuple[NodeState, float]:
        t0 = time.monotonic()
        return self.probe(node), time.monotonic() - t0

    def _plan(self, job: _Job, state: NodeState) -> NodePlan:
        full = NodePlan("transfer", send=tuple(range(len(job.diff_ids))))
        rootfs = job.rootfs in state.snapshots
        if job.parts is not None:
            plan = plan_node(job.parts, job.name, state)
            if plan.action == "present" and self._unlabelled(state, job.name):
                return NodePlan("retag", retag_from="-")  # there, but not pinned yet: label it
            if plan.action == "transfer" and rootfs and job.image.image_id in state.images:
                # the CRI plugin's record named by the image id: the image is there under another manifest
                return NodePlan("retag", retag_from=job.image.image_id)
            return plan
        if rootfs and job.name in state.images:
            return NodePlan("retag", retag_from="-")  # archive path: no manifest digest to compare, read back
        if rootfs and job.image.image_id in state.images:
            return NodePlan("retag", retag_from=job.image.image_id)
        return full

    def _name_in_place(self, jobs: list[_Job], node: str, plans: dict[tuple[str, str], NodePlan],
                       state: NodeState, probe_s: float) -> None:
        """``present`` (proven by the manifest digest) or, with no bytes moved, a tag/label verified by read-back."""
        for job in jobs:
            if plans[node, job.name].action == "present":
                job.done[node] = NodeLoad(node, "present", probe_s, layers_total=len(job.diff_ids),
                                          phases={"probe": probe_s})
        todo = [j for j in jobs if plans[node, j.name].action == "retag"]
        if not todo:
            return
        t0 = time.monotonic()
        quads = []
        for job in todo:
            source = plans[node, job.name].retag_from
            expect = state.images[source].target if source != "-" else "-"
            quads.append((source, job.name, job.rootfs, expect, job.proven))
        _, _, found = self._run_load(node, quads)
        for job in todo:
            if self._problem(job, found.get(job.name)):  # did not verify: send the bytes instead
                plans[node, job.name] = NodePlan("transfer", send=tuple(range(len(job.diff_ids))))
                continue
            action: Action = "present" if plans[node, job.name].retag_from == "-" else "retagged"
            seconds = time.monotonic() - t0
            job.done[node] = NodeLoad(node, action, probe_s + seconds, layers_total=len(job.diff_ids),
                                      phases={"probe": probe_s, "name": seconds})

    def _unlabelled(self, state: NodeState, name: str) -> bool:
        record = state.images.get(name)
        return record is not None and any(record.labels.get(k) != v for k, v in self.labels.items())

    def _problem(self, job: _Job, rb: Readback | None, name: str = "") -> str:
        """Why ``name`` (default: the job's reference) on a node is not the built image, '' when it is."""
        name = name or job.name
        if rb is None or not rb.target:
            return "missing"
        if rb.target != job.proven and rb.config_digest != job.image.image_id:
            return f"resolves to {rb.config_digest or rb.target}"
        if rb.layer_digests and len(rb.layer_digests) != len(job.diff_ids):
            return f"its manifest lists {len(rb.layer_digests)} layers, the image has {len(job.diff_ids)}"
        if not rb.snapshot:
            return f"its rootfs snapshot {job.rootfs[:19]} is not committed"
        missing = [k for k, v in self.labels.items() if rb.labels.get(k) != v] if name == job.name else []
        if missing:
            return f"label {missing[0]} is not set"
        return ""

    # -- transfers -------------------------------------------------------------------------
    def _transfer(self, jobs: list[_Job], nodes: list[str], plans: dict[tuple[str, str], NodePlan],
                  states: Mapping[str, NodeState], probe_s: Mapping[str, float]) -> None:
        groups: dict[tuple[Any, ...], list[str]] = {}
        for node in nodes:
            key = tuple((j.name, plans[node, j.name].action == "transfer", plans[node, j.name].send) for j in jobs)
            groups.setdefault(key, []).append(node)
        outcomes: dict[str, tuple[str, float, int, bool]] = {}  # node → (problem, seconds, bytes, fell back)

        def run_group(group: list[str]) -> None:
            todo = [j for j in jobs if plans[group[0], j.name].action == "transfer"]
            sends = {j.name: plans[group[0], j.name].send for j in todo}
            result = self._deliver(todo, sends, group, states)
            for node in group:
                outcomes[node] = (*result[node], False)
            # Once more, whole, on a node that still runs: a layer the probe saw was collected meanwhile,
            # or the node's containerd restarted (kind restarts it while creating a cluster with patches).
            retry = [n for n in group if result[n][0] and not self._restarted(n) and self._answers(n)]
            if retry:
                full = {j.name: tuple(range(len(j.diff_ids))) for j in todo}
                again = self._deliver(todo, full, retry, states)
                for node in retry:
                    problem, seconds, sent = again[node]
                    outcomes[node] = (problem, outcomes[node][1] + seconds, outcomes[node][2] + sent, True)
                    for j in todo:
                        plans[node, j.name] = NodePlan("transfer", send=full[j.name])

        with ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="kti-stream") as pool:
            list(pool.map(run_group, groups.values()))
        for node in nodes:
            _, seconds, sent, fallback = outcomes[node]
            for job in jobs:
                plan = plans[node, job.name]
                if plan.action == "transfer":
                    phases = {"probe": probe_s[node], "transfer": seconds}
                    job.done[node] = NodeLoad(node, "loaded", probe_s[node] + seconds, sent, len(plan.send),
                                              len(job.diff_ids), "layers" if job.parts else "archive", fallback,
                                              phases)
        failed = {n: o[0] for n, o in outcomes.items() if o[0]}
        if failed:
            refs = ", ".join(j.image.ref for j in jobs if any(plans[n, j.name].action == "transfer" for n in failed))
            raise LoadError(f"loading {refs} failed on " + "; ".join(f"{n}: {p}" for n, p in sorted(failed.items())),
                            hint="check the nodes are running ('kind get nodes', 'docker ps') and have disk space "
                            "('kti doctor'); nothing was tagged on a node where the import did not verify")

    def _check_nodes(self, nodes: Sequence[str]) -> None:
        """Every node is a container of this engine: a node of another engine's cluster is refused up front."""
        res = self.engine.run("ps", "-a", "--format", "{{.Names}}", check=False, timeout=30)
        if res.returncode != 0:
            return  # the probe that follows reports an engine that does not answer
        known = set(res.stdout.split())
        missing = [n for n in nodes if n not in known]
        if missing:
            other = "docker" if self.engine.name == "podman" else "podman"
            raise LoadError(f"node(s) {', '.join(missing)} are not containers of the {self.engine.name} engine",
                            hint=f"the images and the cluster must share one engine: a cluster created with the "
                            f"{other} provider needs --engine {other} (KTI_ENGINE={other}) for build and load; "
                            f"or the cluster is gone ('kind get clusters')")

    def _running(self, node: str) -> bool:
        return self._container(node)[0]

    def _container(self, node: str) -> tuple[bool, float]:
        """Whether the node's container runs, and when it (re)started (epoch seconds; 0 if unknown)."""
        res = self.engine.run("inspect", "-f", "{{.State.Running}} {{.State.StartedAt}}", node, check=False,
                              timeout=30)
        running, _, started = res.stdout.strip().partition(" ")
        try:  # RFC 3339 with nanoseconds: keep seconds
            stamp = datetime.strptime(started[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            stamp = 0.0
        return running == "true", stamp

    def _restarted(self, node: str) -> bool:
        """The node's container stopped, or started again, since this load began."""
        running, started = self._container(node)
        return not running or started >= self._began.get(node, math.inf) - 1

    def answers(self, node: str) -> bool:
        """Whether ``node``'s container runs and its containerd answers now (one try)."""
        res = self.engine.run("exec", node, "ctr", "-n", "k8s.io", "version", check=False, timeout=30)
        return res.returncode == 0 and "Server:" in res.stdout

    def _answers(self, node: str, timeout: float = 60) -> bool:
        try:
            self.wait_for_containerd(node, timeout)
        except LoadError:
            return False
        return True

    def _node_problem(self, node: str, stderr: str) -> str:
        """Why an exec on ``node`` failed. An exec cut off by its container's end has no output, and the
        engine reports the container's exit a moment later: give that state a few seconds to settle."""
        for attempt in range(8):
            running, started = self._container(node)
            if not running:
                return "its container is not running (stopped, killed or removed during the load)"
            if started >= self._began.get(node, math.inf) - 1:
                return "its container restarted during the load (killed or crashed, then restarted)"
            if stderr.strip() or attempt == 7:
                break
            time.sleep(0.5)
        return stderr.strip()[-300:] or "the exec ended with no output"

    def _deliver(self, todo: list[_Job], sends: Mapping[str, tuple[int, ...]], group: list[str],
                 states: Mapping[str, NodeState]) -> dict[str, tuple[str, float, int]]:
        """Stream one archive into every node of ``group`` and name what verified; per node (problem, s, bytes)."""
        t0 = time.monotonic()
        now = time.time()
        for i, job in enumerate(todo):
            job.staging = staging_name(i, now)
        stale = {n: stale_staging(list(states[n].images), now) for n in group}
        platform = todo[0].parts.platform.spec if todo[0].parts else "linux/amd64"
        counter = _Counter()
        layers = all(j.parts is not None for j in todo)
        if layers:  # the manifest digest is known: the node verifies and names in the same exec
            quads = [(j.staging, j.name, j.rootfs, j.proven, j.proven) for j in todo]
        else:  # `docker save`: the manifest is made by the node; stage, read back, verify here, then name
            for job in todo:
                job.staged_target = ""
            quads = [(j.staging, "-", j.rootfs, "-", "-") for j in todo]
        importers = [[self.engine.binary, "exec", "-i", node, "sh", "-c", LOAD, "kti",
                      *load_args(self.snapshotter, platform, do_import=True, stale=stale[node], labels=self.labels,
                                 quads=quads)] for node in group]
        try:
            if layers:
                try:
                    results = self.engine.runner.stream(counter.wrap(self._layout(todo, sends)), importers,
                                                        timeout=self.timeout)
                except FormatError as exc:
                    # Our own check refused the bytes (a layer that does not hash to its diff id): each import
                    # saw its input end before index.json and created nothing. Send `docker save` instead.
                    for job in todo:
                        job.parts = None
                    log.warning("falling back to docker save: %s", exc)
                    return self._deliver(todo, {j.name: tuple(range(len(j.diff_ids))) for j in todo}, group, states)
            else:
                results = self._stream_archive(todo, importers, counter)
        except CommandError as exc:
            raise LoadError(f"streaming {', '.join(j.image.ref for j in todo)} from the {self.engine.name} engine "
                            f"failed: {exc.message}",
                            hint="check the engine ('kti doctor') and its free disk space") from exc
        out: dict[str, tuple[str, float, int]] = {}
        for node, res in zip(group, results, strict=True):
            problem = self._outcome(node, res, todo, staged_only=not layers)
            if not problem and not layers:
                problem = self._name_staged(node, todo)
            out[node] = (problem, time.monotonic() - t0, counter.sent)
        return out

    def _outcome(self, node: str, res: CommandResult, todo: list[_Job], *, staged_only: bool) -> str:
        if res.returncode != 0:
            return f"import failed: {self._node_problem(node, res.stderr)}"
        _, failed = parse_outcome(res.stdout)
        found = parse_readback(res.stdout)
        for job in todo:
            name = job.staging if staged_only else job.name
            if job.name in failed:
                return f"{job.image.ref} did not verify after the import: {failed[job.name]}"
            problem = self._problem(job, found.get(name), name)
            if problem:
                return f"the imported {job.image.ref} did not verify: {problem}"
            if staged_only:
                job.staged_target = found[name].target
        return ""

    def _name_staged(self, node: str, todo: list[_Job]) -> str:
        """Archive path: the staged images verified here; give them their names (verified again)."""
        quads = [(j.staging, j.name, j.rootfs, j.staged_target, j.staged_target) for j in todo]
        _, failed, found = self._run_load(node, quads)
        for job in todo:
            problem = failed.get(job.name) or self._problem(job, found.get(job.name))
            if problem:
                return f"{job.image.ref} did not verify once named: {problem}"
        return ""

    def _layout(self, todo: list[_Job], sends: Mapping[str, tuple[int, ...]]) -> Iterator[bytes]:
        store = self.store
        assert store is not None
        seen: set[str] = set()
        layers = []
        for job in todo:
            assert job.parts is not None
            for i in sends[job.name]:
                if job.parts.diff_ids[i] not in seen:
                    seen.add(job.parts.diff_ids[i])
                    layers.append(store.layer(job.parts, i))
        return oci_layout([(j.parts, j.staging) for j in todo if j.parts is not None], layers)

    def _stream_archive(self, todo: list[_Job], importers: list[list[str]], counter: _Counter) -> list[CommandResult]:
        """``docker save`` of the images, re-emitted with staging names (podman: through an archive file)."""
        names = {j.image.image_id: j.staging for j in todo}
        refs = [j.image.ref for j in todo]

        def transform(out: IO[bytes]) -> Iterable[bytes]:
            return counter.wrap(rename_docker_archive(out, names))

        archive = self._save_archive(refs) if self.engine.name == "podman" else None
        try:
            producer = ["cat", archive] if archive else [self.engine.binary, "save", *refs]
            return self.engine.runner.pipe(producer, importers, timeout=self.timeout, transform=transform)
        finally:
            if archive:
                os.unlink(archive)

    def _save_archive(self, refs: Sequence[str]) -> str:
        fd, path = tempfile.mkstemp(prefix="kti-image-", suffix=".tar")
        os.close(fd)
        try:
            self.engine.run("save", "--format", "docker-archive", "-o", path, *refs, timeout=self.timeout)
        except BaseException:
            os.unlink(path)
            raise
        return path

    # -- verification and teardown ---------------------------------------------------------
    def verify(self, image: BuiltImage, nodes: Sequence[str]) -> None:
        """Every node resolves ``image.ref`` to its image id and has its rootfs (e.g. once the cluster is Ready)."""
        if not nodes:
            return
        job = _Job(image, normalize_ref(image.ref), self._diff_ids(image.ref), None)
        with ThreadPoolExecutor(max_workers=len(nodes), thread_name_prefix="kti-verify") as pool:
            found = list(pool.map(lambda n: self.readback(n, [(job.name, job.rootfs)]).get(job.name), nodes))
        bad = [f"{node}: {p}" for node, rb in zip(nodes, found, strict=True) if (p := self._problem(job, rb))]
        if bad:
            raise LoadError(f"{image.ref} (expected {image.image_id}) is not intact on: " + "; ".join(bad),
                            hint="load it again; if it keeps failing check the node's disk ('kti doctor')")

    def unload(self, refs: Sequence[str], nodes: Sequence[str], *, remove: bool = True) -> dict[str, list[str]]:
        """Unpin (and with ``remove`` delete) the records of ``refs`` that a kti load created, on every node.

        Only records labelled ``kubetest-infra.io/loaded=true`` are touched; the CRI plugin's
        ``sha256:<id>`` record of an image goes too when no other name on the node points at it.
        Nodes that no longer run are skipped. Returns node → names changed.
        """
        names = [normalize_ref(r) for r in refs]

        def one(node: str) -> list[str]:
            if not self._running(node):
                return []
            state = self.probe(node)
            ours = [n for n in names if n in state.images and state.images[n].labels.get(LOADED_LABEL) == "true"]
            if not ours:
                return []
            if not remove:  # unpin; the kti label stays: the record is still ours to remove later
                unpin = [f"{k}=" for k in PINNED]
                for name in ours:
                    self.engine.run("exec", node, "ctr", "-n", "k8s.io", "images", "label", name, *unpin, check=False,
                                    timeout=60)
                return ours
            doomed = list(ours)
            targets = {state.images[n].target for n in ours}
            for record in state.images.values():
                if record.name.startswith("sha256:") and record.target in targets:
                    others = [r for r in state.images.values() if r.target == record.target
                              and r.name not in doomed and not r.name.startswith("sha256:")]
                    if not others:
                        doomed.append(record.name)
            self.engine.run("exec", node, "ctr", "-n", "k8s.io", "images", "rm", *doomed, check=False, timeout=120)
            return doomed

        with ThreadPoolExecutor(max_workers=max(1, len(nodes)), thread_name_prefix="kti-unload") as pool:
            return dict(zip(nodes, pool.map(one, nodes), strict=True))


def summarize(loaded: Sequence[LoadedImage]) -> list[dict[str, Any]]:
    """Rows for a timing table: image, node, action, seconds, MB and layers sent."""
    return [{"ref": img.ref, **n.to_json()} for img in loaded for n in img.nodes]

