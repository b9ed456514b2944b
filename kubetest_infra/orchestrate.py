"""Bring a suite up: builds, cluster, loads and deploys as one dependency graph.

Tasks (see :mod:`kubetest_infra.graph`)::

    build:<image>        every suite image, at once, beside the cluster
    external:<image>     the override, the public ref if present or pullable, else a local build
    cluster              create or reuse the Kind cluster (same engine as the builds)
    nodes                the nodes to load into: while this run creates the cluster, as soon as
                         every node's containerd answers (seconds into ``kind create``, long before
                         kubeadm is done); otherwise the cluster's nodes once ``cluster`` is done
    namespace            the suite namespace                              ← cluster
    load:<image>         into every node (layer-aware, verified, pinned)   ← its image, nodes
    service:<name>       its source (manifests, a chart, an overlay: :mod:`.sources`), render,
                         apply, wait — a chart in phases: pre hooks, the release, post hooks
                         (:mod:`.hooks`) — then traffic hand-over, then the HTTP/TCP check
                                                 ← namespace, its images' loads, its depends_on services
                         images loaded while the cluster was being created are checked again on
                         every node of the Ready cluster first (and loaded again where missing)

Before anything starts, every manifest is rendered with the references the run *will* produce (they
are deterministic: ``{registry}/{image}:{suite}-{run_id}``), so a drifting reference is refused
before a single build. Everything the run creates is written to its ledger (:mod:`.state`) *before*
it is created; on failure or Ctrl-C exactly that is removed (unless ``keep``). Ownership, attaching
and teardown across sessions live in :mod:`.session`; this module only wires the graph.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from kubernetes import client

from kubetest_infra import hooks, sources
from kubetest_infra import preflight as pre
from kubetest_infra.apply import Applied, Applier
from kubetest_infra.build import LABEL_DIGEST, Builder, BuildSpec, BuiltImage
from kubetest_infra.cluster import Cluster, ClusterError, KindClusters
from kubetest_infra.delivery import Delivered, Delivery, KindDelivery, Registry, RegistryDelivery
from kubetest_infra.diagnostics import collect
from kubetest_infra.engine import Engine
from kubetest_infra.errors import ConfigError
from kubetest_infra.graph import GraphResult, Listener, Task, Undo, run_graph
from kubetest_infra.handover import KindIptables, wait_handover
from kubetest_infra.kube import api_client
from kubetest_infra.kubewatch import Informer
from kubetest_infra.load import Loader, LoadError, kind_node_names
from kubetest_infra.probes import ServiceCheckError, wait_http, wait_tcp
from kubetest_infra.remote import RemoteCluster, namespace_metadata
from kubetest_infra.render import cluster_scoped_problems
from kubetest_infra.state import Environment, Item, Ledger, Owner
from kubetest_infra.suite import Service, Suite
from kubetest_infra.teardown import remove_items
from kubetest_infra.wait import Target, Waiter, WaitPolicy, current_pods
from kubetest_infra.workloads import WORKLOADS, is_waitable, selector_matches

__all__ = ["Environment", "Orchestrator", "ServiceCheckError"]

EXPORT_LOGS_ENV = "KTI_KIND_EXPORT_LOGS"  # "1": diagnostics bundles include `kind export logs`
HANDOVER_TIMEOUT = 30.0


class Orchestrator:
    """Runs one suite's graph. ``on_event`` receives (task, event, seconds) for progress displays."""

    def __init__(self, suite: Suite, engine: Engine, run_id: str, *, clusters: KindClusters | None = None,
                 reuse: bool = True, keep: bool = False, no_cache: bool = False, max_workers: int = 4,
                 on_event: Listener | None = None, wait_policy: WaitPolicy | None = None,
                 node_image: str | None = None, ledger: Ledger | None = None, handover: bool = True,
                 pull: bool = False, loader: Loader | None = None, early_loads: bool = True,
                 remote: RemoteCluster | None = None, registry: Registry | None = None) -> None:
        self.suite = suite
        self.remote = remote  # a cluster reached by kubeconfig: never created nor deleted here
        self.engine = engine
        self.run_id = run_id
        self.clusters = clusters or KindClusters(engine)
        self.reuse = reuse
        self.keep = keep
        self.builder = Builder(engine, run_id, suite.name, no_cache=no_cache, pull=pull)
        self.loader = loader or Loader(engine)
        self.early_loads = early_loads  # False only to measure what loading during `kind create` saves
        self.max_workers = max_workers
        self.on_event = on_event
        self.wait_policy = wait_policy or WaitPolicy()
        self.handover = handover  # False only to measure the stale window it closes (bench/handover.py)
        self.cluster_config = suite.cluster if suite.cluster.node_image or not node_image else \
            replace(suite.cluster, node_image=node_image)
        self.ledger = ledger or Ledger(self.clusters.state_dir, f"run-{run_id}-{os.getpid()}", run_id, suite.name,
                                       Owner.current("orchestrator"))
        self.delivery: Delivery = KindDelivery(self.loader) if registry is None else \
            RegistryDelivery(engine, registry, record=self._record_push)
        self.undo = Undo()
        self.undo.add("what this run created", self._undo)
        self._api: Any = None
        self._applier_obj: Applier | None = None
        self._informer: Informer | None = None
        self._plan: pre.Plan | None = None
        self._caps: sources.Capabilities | None = None
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._creating = threading.Event()  # this run started `kind create`
        self._cluster_done = threading.Event()  # the cluster task ended (ready or failed)
        self._made: Cluster | None = None
        self._early: set[str] = set()  # refs loaded before the cluster was Ready: checked again after

    # -- planning --------------------------------------------------------------------------
    def planned_refs(self) -> dict[str, str]:
        return pre.planned_refs(self.suite, self.run_id)

    def preflight(self) -> pre.Plan:
        """Everything knowable without a cluster (see :mod:`.preflight`), the drift guard with the
        references this run will produce included; every problem at once, before anything starts."""
        checked = [s.name for s in self.suite.services.values() if s.http is not None or s.tcp_port is not None]
        if self.remote is not None and checked:
            raise ConfigError(f"services {', '.join(checked)}: an http/tcp readiness check needs a host port, and a "
                              "cluster reached by kubeconfig has none", hint="remove ready.http/tcp from those "
                              "services for now (their workloads are still waited for); port-forward access is not "
                              "built yet")
        self._plan = pre.check(self.suite, self.planned_refs(),
                               allowed_refs=pre.local_refs(self.suite, self.run_id).values())
        return self._plan

    def tasks(self) -> list[Task]:
        t: list[Task] = []
        for name in self.suite.images:
            t.append(Task(f"build:{name}", partial(self._build, name), kind="build"))
        for name in self.suite.external_images:
            t.append(Task(f"external:{name}", partial(self._external, name), kind="external"))
        t.append(Task("cluster", self._cluster, kind="cluster"))
        t.append(Task("nodes", self._nodes, kind="nodes"))
        t.append(Task("namespace", self._namespace, ("cluster",), kind="namespace"))
        for name in self.suite.images:
            t.append(Task(f"load:{name}", partial(self._load, f"build:{name}"), (f"build:{name}", "nodes"),
                          kind="load"))
        for name in self.suite.external_images:
            t.append(Task(f"load:{name}", partial(self._load, f"external:{name}"), (f"external:{name}", "nodes"),
                          kind="load"))
        for svc in self.suite.services.values():
            plan = self._plan or self.preflight()
            deps = ["cluster", "namespace", *(f"load:{n}" for n in sorted(plan.references[svc.name])),
                    *(f"service:{d}" for d in svc.depends_on)]
            t.append(Task(f"service:{svc.name}", partial(self._service, svc), tuple(deps), kind="service"))
        return t

    # -- running ---------------------------------------------------------------------------
    def up(self) -> Environment:
        """Run the graph; on failure or interrupt remove what the ledger lists (unless ``keep``)."""
        self.preflight()
        try:
            result: GraphResult = run_graph(self.tasks(), max_workers=self.max_workers, on_event=self.on_event,
                                            undo=self.undo, keep=self.keep, on_interrupt=self._interrupt)
        finally:
            if self._informer is not None:
                self._informer.stop()
        v = result.values
        cluster: Cluster = v["cluster"]
        images: dict[str, str] = {}
        ids: dict[str, str] = {}
        digests: dict[str, str] = {}
        reused: list[str] = []
        for key, value in v.items():
            if key.startswith(("build:", "external:")):
                name = key.split(":", 1)[1]
                images[name], ids[name], digests[name] = value.ref, value.image_id, value.input_digest
                if value.reused:
                    reused.append(name)
        for key, value in v.items():
            if key.startswith("load:") and isinstance(value, Delivered):
                images[key.split(":", 1)[1]] = value.ref  # a registry delivery: the pushed digest
        endpoints = {s: v[f"service:{s}"] for s in self.suite.services if v.get(f"service:{s}")}
        return Environment(self.suite.name, self.run_id, cluster.name, str(cluster.kubeconfig), self.suite.namespace,
                           images, ids, endpoints, cluster.reused, result.timings, result.critical_path,
                           result.seconds, digests, tuple(sorted(reused)))

    def _interrupt(self) -> None:
        """Ctrl-C/SIGTERM: waits and probes return at once (graph tasks must not be waited for)."""
        self._cancelled.set()
        if self._informer is not None:
            self._informer.stop()

    def _undo(self) -> None:
        done = remove_items(self.ledger.items, engine=self.engine, clusters=self.clusters)
        for item in done.removed:
            self.ledger.forget(item)
        if done.failed:
            raise ConfigError("could not remove: " + "; ".join(f"{i}: {why}" for i, why in done.failed),
                              hint=f"the run's ledger {self.ledger.path} keeps them; 'kti gc' retries")

    def _record_push(self, kind: str, name: str) -> None:
        """A registry delivery is about to create a local tag or push a registry tag."""
        if kind == "image":
            self.ledger.record(Item("image", name, self.engine.name))
        else:
            self.ledger.record(Item("tag", name, "registry"))

    def _api_client(self, cluster: Cluster) -> Any:
        with self._lock:
            if self._api is None:
                self._api = api_client(cluster.kubeconfig, cluster.context)
            return self._api

    def _applier(self, cluster: Cluster) -> Applier:
        """One Applier (one API discovery) shared by every task of the run."""
        api = self._api_client(cluster)
        with self._lock:
            if self._applier_obj is None:
                self._applier_obj = Applier(api)
            return self._applier_obj

    def _informer_for(self, cluster: Cluster) -> Informer:
        """One set of watches on the suite namespace, shared by every service task of the run."""
        api = self._api_client(cluster)
        with self._lock:
            if self._informer is None:
                self._informer = Informer(api, self.suite.namespace)
                if self._cancelled.is_set():
                    self._informer.stop()
            return self._informer

    def _build_spec(self, spec: BuildSpec) -> BuiltImage:
        ref = self.builder.ref_for(spec)
        if self.engine.inspect_image(ref) is None:  # a tag this run creates (a warm run finds its own)
            self.ledger.record(Item("image", ref, self.engine.name))
        return self.builder.build(spec)

    def _build(self, name: str, _deps: Mapping[str, Any]) -> BuiltImage:
        spec = self.suite.images[name]
        return self._build_spec(BuildSpec(name, spec.context, spec.dockerfile, spec.build_args, spec.target))

    def _external(self, name: str, _deps: Mapping[str, Any]) -> BuiltImage:
        ext = self.suite.external_images[name]
        override = os.environ.get(ext.env) if ext.env else None
        for ref in [r for r in (override, ext.ref) if r]:
            info = self.engine.inspect_image(ref)
            if info is None and ref == ext.ref and not override:
                pulled = self.engine.run("pull", ref, check=False, timeout=300)
                info = self.engine.inspect_image(ref) if pulled.returncode == 0 else None
            if info is not None:
                return BuiltImage(name, ref, info.id, info.labels.get(LABEL_DIGEST, ""), True,
                                  0.0, 0.0, self.engine.name, self.run_id)
            if override:
                raise ConfigError(f"${ext.env}={override} is not in the {self.engine.name} engine",
                                  hint="build or load that image first, or unset the variable")
        if ext.build is None:
            raise ConfigError(f"external image {name} ({ext.ref}) is not present and cannot be pulled",
                              hint=f"add external_images.{name}.build in {self.suite.path} for an offline build, "
                              "or set its override variable")
        b = ext.build
        return self._build_spec(BuildSpec(name, b.context, b.dockerfile, b.build_args, b.target))

    def _cluster(self, _deps: Mapping[str, Any]) -> Cluster:
        if self.remote is not None:
            try:
                self._made = self.remote.connect()  # never created, never recorded: not ours
                return self._made
            finally:
                self._cluster_done.set()
        name = self.cluster_config.name

        def creating() -> None:
            self.ledger.record(Item("cluster", name))
            self._creating.set()

        try:
            self._made = self.clusters.ensure(self.cluster_config, reuse=self.reuse, recreate=not self.reuse,
                                                 on_create=creating)
            return self._made
        finally:
            self._cluster_done.set()

    def _nodes(self, _deps: Mapping[str, Any]) -> tuple[str, ...]:
        """Where loads go. Early only into a cluster this run is creating (a cluster found is first
        checked for ownership by the cluster task); a node that does not answer yet is asked again."""
        names = kind_node_names(self.cluster_config.name, 1, self.cluster_config.workers)
        while True:
            if self._cluster_done.is_set():
                if self._made is None:
                    raise ClusterError(f"cluster {self.cluster_config.name} was not created: nothing to load into",
                                       hint="see the cluster task's error")
                return self._made.nodes
            if self._cancelled.is_set():
                raise ClusterError("interrupted before the nodes existed", hint="run again")
            if self.early_loads and self._creating.is_set() and all(self.loader.answers(n) for n in names):
                return tuple(names)
            self._cluster_done.wait(0.5)

    def _namespace(self, deps: Mapping[str, Any]) -> str:
        cluster: Cluster = deps["cluster"]
        core: Any = client.CoreV1Api(self._api_client(cluster))
        ns = self.suite.namespace
        try:
            found = core.read_namespace(ns, _request_timeout=30)
            run = ((found.metadata.labels or {}).get("kubetest-infra/run") if found.metadata else None)
            if self.remote is not None and run != self.run_id:
                raise ConfigError(f"namespace {ns} already exists on the cluster of {self.remote.kubeconfig} "
                                  f"and is not this run's (its run label: {run or 'none'})",
                                  hint="a shared cluster gives every run its own namespace: use a new run id, or "
                                  "another namespace template")
        except client.exceptions.ApiException as exc:
            if exc.status != 404:
                raise
            self.ledger.record(Item("namespace", ns, self.remote.where if self.remote else cluster.name))
            core.create_namespace({"metadata": namespace_metadata(ns, self.suite.name, self.run_id, self.ledger.owner)},
                                  _request_timeout=30)
        return ns

    def _load(self, source: str, deps: Mapping[str, Any]) -> Delivered:
        image: BuiltImage = deps[source]
        if self.remote is not None and isinstance(self.delivery, KindDelivery):
            raise ConfigError("a cluster reached by kubeconfig has no Kind nodes to load images into",
                              hint="pass --registry HOST[:PORT][/PREFIX] the cluster pulls from")
        if not isinstance(self.delivery, KindDelivery):
            return self.delivery.deliver(image, self._made)
        cluster = self.cluster_config.name
        ours = image.run_id == self.run_id  # a reference only this run (its environment) makes
        if ours:
            self.ledger.record(Item("node-image", image.ref, cluster))
        early = not self._cluster_done.is_set()
        loaded = self.loader.load(image, deps["nodes"])
        if not ours and any(n.action == "loaded" for n in loaded.nodes):
            self.ledger.record(Item("node-image", image.ref, cluster))  # a shared reference this run put there
        if early:
            with self._lock:
                self._early.add(image.ref)
        return Delivered(image.name, image.ref, image.image_id, self.delivery.pull_policy, image=image)

    def _settle(self, images: Sequence[BuiltImage], cluster: Cluster) -> None:
        """Images loaded while ``kind create`` ran: verified on every node of the Ready cluster (a
        retried creation replaces the nodes), loaded again where missing."""
        with self._lock:
            todo = [i for i in images if i.ref in self._early]
            self._early.difference_update(i.ref for i in todo)
        for image in todo:
            try:
                self.loader.verify(image, cluster.nodes)  # a read-back: no node lock, no transfer
            except LoadError:
                self.loader.load(image, cluster.nodes)  # a node was replaced (a retried create): load again

    def _service(self, svc: Service, deps: Mapping[str, Any]) -> str | None:
        delivered: dict[str, Delivered] = {k.split(":", 1)[1]: v for k, v in deps.items() if k.startswith("load:")}
        images = {n: d.ref for n, d in delivered.items()}
        cluster: Cluster = deps["cluster"]
        self._settle([d.image for d in delivered.values() if d.image is not None and d.pull_policy == "Never"],
                     cluster)
        api = self._api_client(cluster)
        applier = self._applier(cluster)
        loaded = sources.load(self.suite, svc, images, capabilities=self._capabilities(svc, cluster))
        ids = {d.ref: d.image_id for d in delivered.values()}
        rendered = loaded.render(images, image_ids=ids, namespace=self.suite.namespace,
                                 local_registries=self.delivery.registries, pull_policy=self.delivery.pull_policy)
        if self.remote is not None:
            scoped = cluster_scoped_problems(rendered.objects, rendered.sources)
            if scoped:
                raise ConfigError(f"service {svc.name}: cluster-scoped objects on a shared cluster; nothing was "
                                  "applied:\n" + "\n".join(f"  - {p}" for p in scoped),
                                  hint="a run on a cluster reached by kubeconfig creates objects in its own "
                                  "namespace only: install cluster-scoped objects (CRDs, ClusterRoles) once, "
                                  "outside the suite")
        diag_dir = Path(cluster.kubeconfig).parent / "diagnostics"
        export = partial(self.clusters.export_logs, cluster.name) if os.environ.get(EXPORT_LOGS_ENV) == "1" else None
        informer = self._informer_for(cluster)
        policy = service_policy(self.wait_policy, svc)
        waiter = Waiter(api, policy, node_images=self.clusters.node_images, informer=informer,
                        diagnose=lambda ts, why: str(collect(api, ts, why, diag_dir, nodes=cluster.nodes,
                                                             node_images=self.clusters.node_images,
                                                             kind_export=export)))
        targets: list[Target] = []

        def apply_and_wait(objects: Sequence[dict[str, Any]]) -> list[Applied]:
            """One phase (a chart's hook, or every object of the service): apply, then wait for it."""
            applied = applier.apply(list(objects), namespace=self.suite.namespace)
            phase = [Target(o["kind"], o["metadata"]["name"], self.suite.namespace) for o in objects if is_waitable(o)]
            versions = {Target(a.kind, a.name, a.namespace or self.suite.namespace): (a.uid, a.generation)
                        for a in applied}
            waiter.wait(phase, versions)
            targets.extend(phase)
            return applied

        release = hooks.Release(applier, self.suite.namespace, loaded.release, apply_and_wait)
        release.run(hooks.plan(rendered.objects, loaded.hooks, release.record()))
        if self.handover and cluster.nodes:
            self._hand_over(informer, targets, cluster)
        deadline = time.monotonic() + (svc.timeout or 120)
        hint = f"check services.{svc.name}.ready in {self.suite.path}: the host port must be a cluster.ports " \
               "host_port mapped to the Service's NodePort"
        if svc.http is not None:
            url = f"http://127.0.0.1:{svc.http.port}"
            wait_http(url + svc.http.path, svc.http.status, deadline=deadline, service=svc.name, hint=hint,
                      cancelled=self._cancelled)
            return url
        if svc.tcp_port is not None:
            wait_tcp("127.0.0.1", svc.tcp_port, deadline=deadline, service=svc.name, hint=hint,
                     cancelled=self._cancelled)
            return f"tcp://127.0.0.1:{svc.tcp_port}"
        return None

    def _capabilities(self, svc: Service, cluster: Cluster) -> sources.Capabilities | None:
        """The cluster's version and API versions for ``helm template`` (asked once per run)."""
        if svc.helm is None:
            return None
        if self._caps is None:
            caps = sources.cluster_capabilities(self._api_client(cluster), self._applier(cluster).dynamic)
            with self._lock:
                self._caps = self._caps or caps
        return self._caps

    def _hand_over(self, informer: Informer, targets: list[Target], cluster: Cluster) -> None:
        """Traffic reaches only the current pods of each long-running workload (see :mod:`.handover`)."""
        dataplane = KindIptables(self.engine.run, cluster.nodes)
        deadline = time.monotonic() + HANDOVER_TIMEOUT
        for t in targets:
            if not WORKLOADS[t.kind].rolls_out:
                continue  # Jobs and bare Pods are not behind a rollout
            with informer.cond:
                obj = informer.get(t.kind, t.name)
                pods = informer.items("Pod")
                rsets = informer.items("ReplicaSet")
            if obj is None:
                continue
            selector = (obj.get("spec") or {}).get("selector")
            mine = current_pods(t.kind, obj, pods, rsets)
            selected = [p for p in pods
                        if selector_matches(selector, (p.get("metadata") or {}).get("labels") or {})]
            wait_handover(informer, t.namespace, mine, selected, deadline=deadline, dataplane=dataplane)


def service_workloads(suite: Suite, service: Service, images: Mapping[str, str]) -> list[tuple[str, str]]:
    """(kind, name) of the workloads a service's source defines (``images``: name → the run's reference)."""
    objs = sources.load(suite, service, images).objects
    return [(str(o["kind"]), str(o["metadata"]["name"])) for o in objs if str(o.get("kind")) in WORKLOADS]


def service_policy(policy: WaitPolicy, svc: Service) -> WaitPolicy:
    """The run's wait policy with the service's own settings (``timeout``, ``crash_restarts``,
    ``stable_seconds`` in suite.yaml) on top."""
    if svc.timeout is not None:
        policy = replace(policy, timeout=svc.timeout)
    if svc.crash_restarts is not None:
        policy = replace(policy, crash_restarts=svc.crash_restarts)
    if svc.stable_seconds is not None:
        policy = replace(policy, stable_seconds=svc.stable_seconds)
    return policy
