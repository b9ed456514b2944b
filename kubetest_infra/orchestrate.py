"""Bring a suite up: builds, cluster, loads and deploys as one dependency graph.

Tasks (see :mod:`kubetest_infra.graph`)::

    build:<image>        every suite image, at once, beside the cluster
    external:<image>     the override, the public ref if present or pullable, else a local build
    cluster              create or reuse the Kind cluster (same engine as the builds)
    namespace            the suite namespace                              ← cluster
    load:<image>         into every node, as soon as image and cluster exist
    service:<name>       render, apply, wait (rollout/Job, then HTTP/TCP) ← namespace, its images' loads,
                                                                            its depends_on services

Before anything starts, every manifest is rendered with the references the run *will* produce (they
are deterministic: ``{registry}/{image}:{suite}-{run_id}``), so a drifting reference is refused
before a single build. On failure or Ctrl-C, what this run created is removed (unless ``keep``).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from kubernetes import client, config

from kubetest_infra.apply import Applier
from kubetest_infra.build import LABEL_DIGEST, Builder, BuildSpec, BuiltImage
from kubetest_infra.cleanup import remove_run_images
from kubetest_infra.cluster import Cluster, ClusterConfig, KindClusters
from kubetest_infra.diagnostics import collect
from kubetest_infra.engine import Engine
from kubetest_infra.errors import ConfigError, KtiError
from kubetest_infra.graph import GraphResult, Listener, Task, Timing, Undo, run_graph
from kubetest_infra.load import Loader
from kubetest_infra.render import PLACEHOLDER, load_manifests, render
from kubetest_infra.suite import Service, Suite
from kubetest_infra.tags import image_ref, resolve_run_id
from kubetest_infra.wait import Target, Waiter, WaitPolicy, read_workload, selector_for

WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "Pod")
EXPORT_LOGS_ENV = "KTI_KIND_EXPORT_LOGS"  # "1": diagnostics bundles include `kind export logs`


class ServiceCheckError(KtiError):
    """A service's HTTP/TCP readiness check did not pass."""


@dataclass(frozen=True)
class Environment:
    """What ``up`` produced: exact image references, the kubeconfig, endpoints and timings."""

    suite: str
    run_id: str
    cluster: str
    kubeconfig: str
    namespace: str
    images: Mapping[str, str]  # name → exact ref (built and external)
    image_ids: Mapping[str, str]
    endpoints: Mapping[str, str]
    reused_cluster: bool
    timings: tuple[Timing, ...] = field(default=())
    critical_path: tuple[str, ...] = field(default=())
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "suite": self.suite, "run_id": self.run_id, "cluster": self.cluster, "kubeconfig": self.kubeconfig,
            "namespace": self.namespace, "images": dict(self.images), "image_ids": dict(self.image_ids),
            "endpoints": dict(self.endpoints), "reused_cluster": self.reused_cluster,
            "seconds": round(self.seconds, 2), "critical_path": list(self.critical_path),
            "timings": [{"task": t.id, "kind": t.kind, "start": round(t.start, 2), "end": round(t.end, 2),
                         "seconds": round(t.seconds, 2), "status": t.status} for t in self.timings],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Environment:
        timings = tuple(Timing(t["task"], t["kind"], t["start"], t["end"], t["status"])
                        for t in data.get("timings", []))
        return cls(data["suite"], data["run_id"], data["cluster"], data["kubeconfig"], data["namespace"],
                   data["images"], data.get("image_ids", {}), data["endpoints"], data.get("reused_cluster", False),
                   timings, tuple(data.get("critical_path", [])), data.get("seconds", 0.0))

    def service_url(self, service: str, path: str = "") -> str:
        if service not in self.endpoints:
            raise ConfigError(f"service {service!r} has no endpoint in suite {self.suite}",
                              hint=f"services with an http/tcp check: {', '.join(sorted(self.endpoints)) or 'none'}")
        return self.endpoints[service].rstrip("/") + path

    def api_client(self) -> Any:
        return config.new_client_from_config(config_file=self.kubeconfig)  # type: ignore[no-untyped-call]


def referenced_images(service: Service) -> set[str]:
    names: set[str] = set()
    for path in service.manifests:
        names.update(PLACEHOLDER.findall(path.read_text()))
    return names


class Orchestrator:
    """Runs one suite's graph. ``on_event`` receives (task, event, seconds) for progress displays."""

    def __init__(self, suite: Suite, engine: Engine, run_id: str, *, clusters: KindClusters | None = None,
                 reuse: bool = True, keep: bool = False, no_cache: bool = False, max_workers: int = 4,
                 on_event: Listener | None = None, wait_policy: WaitPolicy | None = None,
                 node_image: str | None = None) -> None:
        self.suite = suite
        self.engine = engine
        self.run_id = run_id
        self.clusters = clusters or KindClusters(engine)
        self.reuse = reuse
        self.keep = keep
        self.builder = Builder(engine, run_id, suite.name, no_cache=no_cache)
        self.loader = Loader(engine)
        self.max_workers = max_workers
        self.on_event = on_event
        self.wait_policy = wait_policy or WaitPolicy()
        self.cluster_config = suite.cluster if suite.cluster.node_image or not node_image else \
            _with_image(suite.cluster, node_image)
        self.undo = Undo()
        self._api: Any = None
        self._applier_obj: Applier | None = None
        self._lock = threading.Lock()

    # -- planning --------------------------------------------------------------------------
    def planned_refs(self) -> dict[str, str]:
        refs = {n: image_ref(n, self.suite.name, self.run_id) for n in self.suite.images}
        for name, ext in self.suite.external_images.items():
            refs[name] = ext.ref
        return refs

    def preflight(self) -> None:
        """Render every manifest with the planned references; refuse drift before anything runs."""
        planned = self.planned_refs()
        local_planned = {n: image_ref(n, self.suite.name, self.run_id) for n in self.suite.external_images}
        for svc in self.suite.services.values():
            unknown = referenced_images(svc) - set(planned)
            if unknown:
                raise ConfigError(f"service {svc.name}: manifests use ${{image:...}} for unknown image(s) "
                                  f"{', '.join(sorted(unknown))}",
                                  hint=f"declare them under images or external_images in {self.suite.path}")
            objs, srcs = load_manifests(svc.manifests)
            render(objs, srcs, planned, allowed_refs=local_planned.values())

    def tasks(self) -> list[Task]:
        t: list[Task] = []
        for name in self.suite.images:
            t.append(Task(f"build:{name}", partial(self._build, name), kind="build"))
        for name in self.suite.external_images:
            t.append(Task(f"external:{name}", partial(self._external, name), kind="external"))
        t.append(Task("cluster", self._cluster, kind="cluster"))
        t.append(Task("namespace", self._namespace, ("cluster",), kind="namespace"))
        for name in self.suite.images:
            t.append(Task(f"load:{name}", partial(self._load, f"build:{name}"), (f"build:{name}", "cluster"),
                          kind="load"))
        for name in self.suite.external_images:
            t.append(Task(f"load:{name}", partial(self._load, f"external:{name}"), (f"external:{name}", "cluster"),
                          kind="load"))
        for svc in self.suite.services.values():
            deps = ["cluster", "namespace", *(f"load:{n}" for n in sorted(referenced_images(svc))),
                    *(f"service:{d}" for d in svc.depends_on)]
            t.append(Task(f"service:{svc.name}", partial(self._service, svc), tuple(deps), kind="service"))
        return t

    # -- running ---------------------------------------------------------------------------
    def up(self) -> Environment:
        self.preflight()
        result: GraphResult = run_graph(self.tasks(), max_workers=self.max_workers, on_event=self.on_event,
                                        undo=self.undo, keep=self.keep)
        v = result.values
        cluster: Cluster = v["cluster"]
        images: dict[str, str] = {}
        ids: dict[str, str] = {}
        for key, value in v.items():
            if key.startswith(("build:", "external:")):
                images[key.split(":", 1)[1]] = value.ref
                ids[key.split(":", 1)[1]] = value.image_id
        endpoints = {s: v[f"service:{s}"] for s in self.suite.services if v.get(f"service:{s}")}
        env = Environment(self.suite.name, self.run_id, cluster.name, str(cluster.kubeconfig), self.suite.namespace,
                          images, ids, endpoints, cluster.reused, result.timings, result.critical_path, result.seconds)
        write_state(env)
        return env

    def _api_client(self, cluster: Cluster) -> Any:
        with self._lock:
            if self._api is None:
                self._api = config.new_client_from_config(  # type: ignore[no-untyped-call]
                    config_file=str(cluster.kubeconfig))
            return self._api

    def _applier(self, cluster: Cluster) -> Applier:
        """One Applier (one API discovery) shared by every task of the run."""
        api = self._api_client(cluster)
        with self._lock:
            if self._applier_obj is None:
                self._applier_obj = Applier(api)
            return self._applier_obj

    def _build(self, name: str, _deps: Mapping[str, Any]) -> BuiltImage:
        spec = self.suite.images[name]
        image = self.builder.build(BuildSpec(name, spec.context, spec.dockerfile, spec.build_args, spec.target))
        self.undo.add(f"image {image.ref}", partial(self.engine.untag, image.ref))
        return image

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
                              hint="add a build: section for an offline build, or set its override variable")
        b = ext.build
        image = self.builder.build(BuildSpec(name, b.context, b.dockerfile, b.build_args, b.target))
        self.undo.add(f"image {image.ref}", partial(self.engine.untag, image.ref))
        return image

    def _cluster(self, _deps: Mapping[str, Any]) -> Cluster:
        existed = self.clusters.exists(self.cluster_config.name)
        cluster = self.clusters.ensure(self.cluster_config, reuse=self.reuse, recreate=not self.reuse)
        if not cluster.reused or not existed:
            self.undo.add(f"cluster {cluster.name}", lambda: self.clusters.delete(cluster.name))
        return cluster

    def _namespace(self, deps: Mapping[str, Any]) -> str:
        core: Any = client.CoreV1Api(self._api_client(deps["cluster"]))
        ns = self.suite.namespace
        try:
            core.read_namespace(ns)
        except client.exceptions.ApiException as exc:
            if exc.status != 404:
                raise
            core.create_namespace({"metadata": {"name": ns, "labels": {"kubetest-infra/suite": self.suite.name}}})
            self.undo.add(f"namespace {ns}", partial(core.delete_namespace, ns))
        return ns

    def _load(self, source: str, deps: Mapping[str, Any]) -> BuiltImage:
        image: BuiltImage = deps[source]
        self.loader.load(image, deps["cluster"].nodes)
        return image

    def _service(self, svc: Service, deps: Mapping[str, Any]) -> str | None:
        images = {k.split(":", 1)[1]: v.ref for k, v in deps.items() if k.startswith("load:")}
        cluster: Cluster = deps["cluster"]
        api = self._api_client(cluster)
        objs, srcs = load_manifests(svc.manifests)
        ids = {v.ref: v.image_id for k, v in deps.items() if k.startswith("load:")}
        rendered = render(objs, srcs, images, image_ids=ids)
        self._applier(cluster).apply(list(rendered.objects), namespace=self.suite.namespace)
        targets = [Target(o["kind"], o["metadata"]["name"], self.suite.namespace)
                   for o in rendered.objects if o["kind"] in WORKLOADS]
        diag_dir = Path(cluster.kubeconfig).parent / "diagnostics"
        export = partial(self.clusters.export_logs, cluster.name) if os.environ.get(EXPORT_LOGS_ENV) == "1" else None
        waiter = Waiter(api, _with_timeout(self.wait_policy, svc.timeout), node_images=self.clusters.node_images,
                        diagnose=lambda ts, why: str(collect(api, ts, why, diag_dir, nodes=cluster.nodes,
                                                             node_images=self.clusters.node_images,
                                                             kind_export=export)))
        waiter.wait(targets)
        deadline = time.monotonic() + (svc.timeout or 120)
        if svc.http is not None:
            url = f"http://127.0.0.1:{svc.http.port}"
            _wait_http(url + svc.http.path, svc.http.status, deadline, svc.name)
            return url
        if svc.tcp_port is not None:
            _wait_tcp("127.0.0.1", svc.tcp_port, deadline, svc.name)
            return f"tcp://127.0.0.1:{svc.tcp_port}"
        return None


def _with_image(cfg: ClusterConfig, node_image: str) -> ClusterConfig:
    return replace(cfg, node_image=node_image)


def _with_timeout(policy: WaitPolicy, timeout: float | None) -> WaitPolicy:
    return replace(policy, timeout=timeout) if timeout else policy


def _wait_http(url: str, status: int, deadline: float, service: str) -> None:
    def probe() -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:  # noqa: S310 - loopback NodePort
                code = resp.status
        except urllib.error.HTTPError as exc:
            code = exc.code
        return None if code == status else f"HTTP {code}"

    _poll(probe, deadline, f"service {service}: {url} did not answer {status}")


def _wait_tcp(host: str, port: int, deadline: float, service: str) -> None:
    def probe() -> str | None:
        with socket.create_connection((host, port), timeout=2):
            return None

    _poll(probe, deadline, f"service {service}: {host}:{port} refused connections")


def _poll(probe: Callable[[], str | None], deadline: float, failure: str) -> None:
    """Call ``probe`` every 0.5 s until it returns None (ready) or the deadline passes."""
    last = ""
    while time.monotonic() < deadline:
        try:
            outcome = probe()
        except OSError as exc:
            outcome = str(exc)
        if outcome is None:
            return
        last = outcome
        time.sleep(0.5)
    raise ServiceCheckError(f"{failure} (last: {last})",
                            hint="check the NodePort and the cluster's port mappings in the suite file")


def choose_run_id(suite: Suite, clusters: KindClusters, explicit: str | None, reuse: bool) -> str:
    """An explicit id (or $KTI_RUN_ID) wins; a warm re-run with reuse keeps the running environment's id,
    so unchanged images keep their references and nothing rolls out; otherwise a fresh CSPRNG id."""
    if explicit or os.environ.get("KTI_RUN_ID"):
        return resolve_run_id(explicit)
    if reuse:
        previous = read_state(clusters, suite.cluster.name)
        if previous is not None and previous.suite == suite.name and clusters.exists(suite.cluster.name):
            return previous.run_id
    return resolve_run_id(None)


def state_file(kubeconfig: Path | str) -> Path:
    return Path(kubeconfig).parent / "environment.json"


def write_state(env: Environment) -> Path:
    path = state_file(env.kubeconfig)
    path.write_text(json.dumps(env.to_json(), indent=2))
    (path.parent / "timings.json").write_text(json.dumps(
        {"seconds": round(env.seconds, 2), "critical_path": list(env.critical_path),
         "tasks": env.to_json()["timings"]}, indent=2))
    return path


def read_state(clusters: KindClusters, cluster_name: str) -> Environment | None:
    path = state_file(clusters.kubeconfig_path(cluster_name))
    if not path.is_file():
        return None
    return Environment.from_json(json.loads(path.read_text()))


def down(suite: Suite, engine: Engine, clusters: KindClusters) -> list[str]:
    """Delete the suite's cluster (if this library created it) and the images of its last run."""
    done = []
    env = read_state(clusters, suite.cluster.name)
    if clusters.exists(suite.cluster.name):
        state = clusters._state(suite.cluster.name)
        if state is None or state.get("created_by") != "kubetest-infra":
            raise KtiError(f"cluster {suite.cluster.name} was not created by kubetest-infra; not deleting it",
                           hint=f"delete it yourself: kind delete cluster --name {suite.cluster.name}")
        clusters.delete(suite.cluster.name)
        done.append(f"cluster {suite.cluster.name}")
    if env is not None:
        removal = remove_run_images(engine, env.run_id)
        done.extend(f"image {r}" for r in removal.removed)
    return done



def service_logs(env: Environment, suite: Suite, service: str, tail: int = 200) -> str:
    """Logs of the pods of one service's workloads (current containers)."""
    if service not in suite.services:
        raise ConfigError(f"unknown service {service!r} in suite {suite.name}",
                          hint=f"services: {', '.join(sorted(suite.services))}")
    api = env.api_client()
    core: Any = client.CoreV1Api(api)
    objs, _ = load_manifests(suite.services[service].manifests)
    out: list[str] = []
    for obj in objs:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind not in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            continue
        selector = selector_for(kind, read_workload(api, Target(kind, name, env.namespace)))
        for pod in core.list_namespaced_pod(env.namespace, label_selector=selector).items:
            for c in pod.spec.containers:
                text = core.read_namespaced_pod_log(pod.metadata.name, env.namespace, container=c.name,
                                                    tail_lines=tail)
                out.append(f"==> {kind}/{name} pod {pod.metadata.name} container {c.name} <==\n{text.rstrip()}")
    return "\n".join(out) if out else f"no pods for service {service}"
