"""The one table of workload kinds: where their pod template lives, how they are read and waited for.

Render (which containers to substitute and guard), apply (rank), wait (readiness, which pods belong to
the current template), diagnostics and ``kti logs`` all read :data:`WORKLOADS`; nothing else lists kinds.

============ =========================== ==================================================
kind         pod spec path               waited for
============ =========================== ==================================================
Deployment   spec.template.spec          rollout complete, current-template pods Ready
StatefulSet  spec.template.spec          updateRevision pods Ready
DaemonSet    spec.template.spec          current-generation pods Ready on every node
ReplicaSet   spec.template.spec          replicas Ready
Job          spec.template.spec          ``Complete`` (``Failed`` fails; ``backoffLimit`` retries)
Pod          spec                        Ready, or Succeeded
CronJob      spec.jobTemplate.spec…      not waited for (it runs on a schedule): applied only
============ =========================== ==================================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from kubetest_infra.errors import KtiError

Obj = dict[str, Any]


@dataclass(frozen=True)
class WorkloadKind:
    kind: str
    api: str  # client class: AppsV1Api | BatchV1Api | CoreV1Api
    reader: str  # read_namespaced_* method of that client
    lister: str  # list_namespaced_* method of that client
    pod_spec_path: tuple[str, ...]
    waitable: bool = True
    rolls_out: bool = False  # a controller replaces pods on template changes (status.observedGeneration)

    @property
    def template_path(self) -> tuple[str, ...]:
        """The pod template (its ``metadata`` carries labels and annotations)."""
        return self.pod_spec_path[:-1]


WORKLOADS: Mapping[str, WorkloadKind] = {w.kind: w for w in (
    WorkloadKind("Deployment", "AppsV1Api", "read_namespaced_deployment", "list_namespaced_deployment",
                 ("spec", "template", "spec"), rolls_out=True),
    WorkloadKind("StatefulSet", "AppsV1Api", "read_namespaced_stateful_set", "list_namespaced_stateful_set",
                 ("spec", "template", "spec"), rolls_out=True),
    WorkloadKind("DaemonSet", "AppsV1Api", "read_namespaced_daemon_set", "list_namespaced_daemon_set",
                 ("spec", "template", "spec"), rolls_out=True),
    WorkloadKind("ReplicaSet", "AppsV1Api", "read_namespaced_replica_set", "list_namespaced_replica_set",
                 ("spec", "template", "spec"), rolls_out=True),
    WorkloadKind("Job", "BatchV1Api", "read_namespaced_job", "list_namespaced_job", ("spec", "template", "spec")),
    WorkloadKind("Pod", "CoreV1Api", "read_namespaced_pod", "list_namespaced_pod", ("spec",)),
    WorkloadKind("CronJob", "BatchV1Api", "read_namespaced_cron_job", "list_namespaced_cron_job",
                 ("spec", "jobTemplate", "spec", "template", "spec"), waitable=False),
)}

WAITABLE: tuple[str, ...] = tuple(k for k, w in WORKLOADS.items() if w.waitable)


def is_workload(obj: Mapping[str, Any]) -> bool:
    return str(obj.get("kind")) in WORKLOADS


def is_waitable(obj: Mapping[str, Any]) -> bool:
    w = WORKLOADS.get(str(obj.get("kind")))
    return w is not None and w.waitable


def pod_spec(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a workload object, or None (not a workload, or the path is missing)."""
    w = WORKLOADS.get(str(obj.get("kind")))
    if w is None:
        return None
    node: Any = obj
    for key in w.pod_spec_path:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


def containers(obj: Obj) -> list[tuple[str, dict[str, Any]]]:
    """Every container of a workload object with the path it sits at (``spec.template.spec.containers[0]``)."""
    w = WORKLOADS.get(str(obj.get("kind")))
    spec = pod_spec(obj)
    if w is None or spec is None:
        return []
    found: list[tuple[str, dict[str, Any]]] = []
    for list_name in CONTAINER_LISTS:
        for i, c in enumerate(spec.get(list_name) or []):
            if isinstance(c, dict):
                found.append((".".join(w.pod_spec_path) + f".{list_name}[{i}]", c))
    return found


def template_metadata(obj: Obj) -> dict[str, Any] | None:
    """The pod template's ``metadata`` (created when missing), or None for non-workloads."""
    w = WORKLOADS.get(str(obj.get("kind")))
    if w is None:
        return None
    node: Any = obj
    for key in w.template_path:
        if not isinstance(node, dict):
            return None
        node = node.setdefault(key, {})
    if not isinstance(node, dict):
        return None
    meta = node.setdefault("metadata", {})
    return meta if isinstance(meta, dict) else None


def label_selector(selector: Mapping[str, Any] | None) -> str:
    """A ``LabelSelector`` (``matchLabels`` and ``matchExpressions``) as the API's query string.

    An empty selector would select every pod of the namespace: that is refused, never returned.
    """
    selector = selector or {}
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op = expr.get("key", ""), expr.get("operator", "")
        values = ",".join(sorted(str(v) for v in expr.get("values") or []))
        if op == "In":
            parts.append(f"{key} in ({values})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({values})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
        else:
            raise KtiError(f"unknown label selector operator {op!r} for key {key!r}",
                           hint="operators are In, NotIn, Exists and DoesNotExist")
    if not parts:
        raise KtiError("the workload has an empty label selector: it would select every pod of the namespace",
                       hint="give spec.selector matchLabels or matchExpressions")
    return ",".join(parts)


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Does a ``LabelSelector`` (``matchLabels`` and ``matchExpressions``) select ``labels``? (pure)"""
    selector = selector or {}
    if not selector.get("matchLabels") and not selector.get("matchExpressions"):
        return False  # never "everything"
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key", ""), expr.get("operator", ""), set(expr.get("values") or [])
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values) or \
                (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


def selector_for(kind: str, obj: Obj) -> str:
    """The label selector of a workload's pods ("" for a Pod, which is its own pod)."""
    if kind == "Pod":
        return ""
    if kind == "Job":
        meta = obj.get("metadata") or {}
        uid = meta.get("uid", "")
        labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        if "batch.kubernetes.io/controller-uid" in labels or "controller-uid" in labels:
            return label_selector((obj.get("spec") or {}).get("selector"))
        return f"controller-uid={uid}" if uid else f"job-name={meta.get('name', '')}"
    return label_selector((obj.get("spec") or {}).get("selector"))


def read_workload(api_client: Any, kind: str, name: str, namespace: str) -> Obj:
    """One workload in its JSON form (camelCase), through the kubernetes client."""
    w = WORKLOADS.get(kind)
    if w is None:
        raise KtiError(f"cannot read {kind}/{namespace}/{name}",
                       hint=f"workload kinds are {', '.join(WORKLOADS)}")
    api = getattr(client, w.api)(api_client)
    reader: Callable[[str, str], Any] = getattr(api, w.reader)
    obj: Obj = api_client.sanitize_for_serialization(reader(name, namespace))
    return obj
