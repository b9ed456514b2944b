"""Traffic-aware hand-over: tests get a service only when traffic reaches nothing but its current pods.

A rollout looks complete (new pods Ready, old ones terminating) well before traffic stops reaching the
old pods: an old pod that ignores SIGTERM keeps answering through its grace period, and kube-proxy
programs each node's rules some hundreds of milliseconds after the EndpointSlice changed. A check over
HTTP cannot tell, since the old pod answers 200 too. So after the workload is ready, for every Service
that selects its pods:

1. **EndpointSlices** list every current pod as a *ready* endpoint, and no ready endpoint belongs to
   any other pod. (A terminating old endpoint may remain ``serving``: kube-proxy uses terminating
   endpoints only when a Service has no ready endpoint at all, KEP-1669.)
2. **The dataplane** — where the library can read it (Kind nodes, kube-proxy in iptables mode) — every
   node's ``KUBE-SVC-…`` chains for the Service's ports jump to exactly those endpoints. This is the
   proxy lag that (1) alone cannot see.

Where no dataplane can be read (a remote cluster), access goes through a port-forward to a current pod,
which never passes through kube-proxy. Pure parts: :func:`selects`, :func:`endpoint_problem`,
:func:`parse_iptables`, :func:`dataplane_problem`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from kubetest_infra.errors import KtiError
from kubetest_infra.kubewatch import Informer

Obj = dict[str, Any]
DATAPLANE_POLL = 0.2


class HandOverTimeout(KtiError):
    """Traffic still reaches pods other than the current ones."""


def selects(selector: Mapping[str, str] | None, labels: Mapping[str, str] | None) -> bool:
    """Does a Service selector (a plain label map) select a pod with ``labels``?"""
    if not selector:
        return False  # a Service without selector has hand-made endpoints: not ours to judge
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


@dataclass(frozen=True)
class Endpoint:
    address: str
    pod: str
    ready: bool
    serving: bool
    terminating: bool


def slice_endpoints(slices: Sequence[Obj]) -> list[Endpoint]:
    out = []
    for s in slices:
        for ep in s.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            ready = cond.get("ready") is not False  # absent means ready (the API's rule)
            serving = cond.get("serving", ready) is not False
            pod = ((ep.get("targetRef") or {}).get("name")) or ""
            for addr in ep.get("addresses") or []:
                out.append(Endpoint(str(addr), str(pod), ready, serving, bool(cond.get("terminating", False))))
    return out


def endpoint_problem(service: str, slices: Sequence[Obj], current: set[str], old: set[str]) -> str | None:
    """None when no ready endpoint is an ``old`` pod and every ``current`` pod is a ready endpoint."""
    eps = slice_endpoints(slices)
    stale = sorted({e.pod for e in eps if e.ready and e.pod in old})
    if stale:
        return f"Service {service} still has ready endpoints of other pods: {', '.join(stale)}"
    ready = {e.pod for e in eps if e.ready}
    missing = sorted(current - ready)
    if missing:
        return f"Service {service} does not yet list {', '.join(missing)} as ready endpoints"
    return None


_SVC_RULE = re.compile(r'^-A (KUBE-SVC-\w+) .*--comment "?([^" ]+) -> ([0-9a-fA-F.:\[\]]+)"? .*-j (KUBE-SEP-\w+)')
_SVC_CHAIN = re.compile(r'^-A KUBE-SERVICES .*--comment "?([^" ]+) cluster IP"? .*-j (KUBE-SVC-\w+)')


def parse_iptables(text: str) -> dict[str, set[str]]:
    """kube-proxy's iptables rules → ``"ns/svc:port"`` → endpoints ``"ip:port"`` it load-balances to."""
    routes: dict[str, set[str]] = {}
    for line in text.splitlines():
        m = _SVC_CHAIN.match(line)
        if m:
            routes.setdefault(m.group(1), set())
            continue
        m = _SVC_RULE.match(line)
        if m:
            routes.setdefault(m.group(2), set()).add(m.group(3))
    return routes


def dataplane_problem(node: str, routes: Mapping[str, set[str]], namespace: str, service: str,
                      pod_ips: set[str]) -> str | None:
    """None when every port of the Service on ``node`` routes exactly to ``pod_ips`` (its ready endpoints)."""
    prefix = f"{namespace}/{service}:"
    ports = {k: v for k, v in routes.items() if k.startswith(prefix) or k == f"{namespace}/{service}"}
    if not ports:
        return f"node {node} has no kube-proxy rules for Service {namespace}/{service} yet"
    for port, eps in sorted(ports.items()):
        ips = {e.rsplit(":", 1)[0].strip("[]") for e in eps}
        if ips != pod_ips:
            extra, missing = sorted(ips - pod_ips), sorted(pod_ips - ips)
            return (f"node {node}: {port} routes to {', '.join(sorted(eps)) or 'nothing'}"
                    + (f" (not current: {', '.join(extra)})" if extra else "")
                    + (f" (missing: {', '.join(missing)})" if missing else ""))
    return None


class Dataplane(Protocol):
    """Where packets are actually routed: kube-proxy's rules per node."""

    def routes(self) -> dict[str, dict[str, set[str]]]:
        """node → ``"ns/svc:port"`` → endpoints; a node whose rules cannot be read is left out."""
        ...


class KindIptables:
    """kube-proxy's iptables rules read from each Kind node (``<engine> exec NODE iptables-save -t nat``)."""

    def __init__(self, run: Callable[..., Any], nodes: Sequence[str]) -> None:
        self.run = run  # Engine.run
        self.nodes = tuple(nodes)
        self.supported: bool | None = None

    def routes(self) -> dict[str, dict[str, set[str]]]:
        def read(node: str) -> tuple[str, dict[str, set[str]] | None]:
            res = self.run("exec", node, "iptables-save", "-t", "nat", check=False, timeout=30)
            if res.returncode != 0 or "KUBE-SERVICES" not in res.stdout:
                return node, None  # not iptables mode (ipvs, nftables): nothing to read here
            return node, parse_iptables(res.stdout)

        with ThreadPoolExecutor(max_workers=max(1, len(self.nodes)), thread_name_prefix="kti-iptables") as pool:
            found = dict(pool.map(read, self.nodes))
        self.supported = any(v is not None for v in found.values())
        return {n: r for n, r in found.items() if r is not None}


def wait_handover(informer: Informer, namespace: str, current: Sequence[Obj], workload_pods: Sequence[Obj], *,
                  deadline: float, dataplane: Dataplane | None = None) -> list[str]:
    """Block until every Service selecting the ``current`` pods routes only to them.

    ``workload_pods``: every pod the workload's selector matches (older templates and terminating ones
    included): those must not be ready endpoints any more. Returns the Services checked; raises
    :class:`HandOverTimeout` with the last reason at ``deadline``.
    """
    names = {str((p.get("metadata") or {}).get("name")) for p in current}
    old = {str((p.get("metadata") or {}).get("name")) for p in workload_pods} - names
    labels = [(p.get("metadata") or {}).get("labels") or {} for p in current]
    if not names:
        return []
    informer.ensure("Service", "EndpointSlice")
    while True:
        with informer.cond:
            version = informer.version
            services = [s for s in informer.items("Service")
                        if any(selects((s.get("spec") or {}).get("selector"), lab) for lab in labels)]
            slices = informer.items("EndpointSlice")
        by_service = {str(svc["metadata"]["name"]): [s for s in slices if ((s.get("metadata") or {}).get(
            "labels") or {}).get("kubernetes.io/service-name") == svc["metadata"]["name"]] for svc in services}
        problem = next((p for name, mine in by_service.items()
                        if (p := endpoint_problem(name, mine, names, old)) is not None), None)
        if problem is None and dataplane is not None:
            problem = _dataplane(dataplane, namespace, services, by_service)
        if problem is None:
            return sorted(by_service)
        if time.monotonic() >= deadline:
            raise HandOverTimeout(f"hand-over not complete: {problem}",
                                  hint="the rollout finished but traffic can still reach other pods; check "
                                  "kube-proxy on the nodes (kubectl -n kube-system logs -l k8s-app=kube-proxy)")
        if problem.startswith("node "):
            time.sleep(DATAPLANE_POLL)  # kube-proxy's rules have no watch: look again shortly
        else:
            informer.wait_change(version, max(0.0, min(deadline - time.monotonic(), 5.0)))


def _dataplane(dataplane: Dataplane, namespace: str, services: Sequence[Obj],
               slices: Mapping[str, Sequence[Obj]]) -> str | None:
    proxied = [s for s in services if (s.get("spec") or {}).get("clusterIP") not in (None, "", "None")
               and (s.get("spec") or {}).get("type", "ClusterIP") != "ExternalName"]
    if not proxied:
        return None
    routes = dataplane.routes()
    for node, table in sorted(routes.items()):
        for svc in proxied:
            name = str(svc["metadata"]["name"])
            ips = {e.address for e in slice_endpoints(slices.get(name, ())) if e.ready}
            problem = dataplane_problem(node, table, namespace, name, ips)
            if problem:
                return problem
    return None
