"""Applying and deleting objects: server-side apply in rank order, through the Kubernetes client.

Ordering (after lightkube's ``sort_objects``): CRDs (then wait for ``Established``), Namespaces,
storage/config/identity (StorageClass, PV, PVC, ConfigMap, Secret, ServiceAccount, quotas), RBAC,
Services, workloads, everything else (custom resources, ingresses), admission webhooks last so they
cannot block the objects they would validate. Deletion runs in reverse.
Transient API errors (429, 5xx, connection resets) are retried a bounded number of times.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError, NotFoundError, ResourceNotFoundError
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from kubetest_infra.errors import ConfigError, KtiError
from kubetest_infra.workloads import WORKLOADS

Obj = dict[str, Any]

_RANKS: dict[str, int] = {
    "CustomResourceDefinition": 0,
    "Namespace": 1,
    "PriorityClass": 2, "StorageClass": 2, "PersistentVolume": 2, "ResourceQuota": 2, "LimitRange": 2,
    "PersistentVolumeClaim": 3, "ConfigMap": 3, "Secret": 3, "ServiceAccount": 3,
    "ClusterRole": 4, "ClusterRoleBinding": 4, "Role": 4, "RoleBinding": 4,
    "Service": 5,
    **dict.fromkeys(WORKLOADS, 6),
    "MutatingWebhookConfiguration": 9, "ValidatingWebhookConfiguration": 9,
}
_OTHER_RANK = 7
FIELD_MANAGER = "kubetest-infra"


class ApplyError(KtiError):
    """The API server refused an object."""


class UnknownKindError(ConfigError):
    """No API resource serves this apiVersion/kind."""


def rank(obj: Obj) -> int:
    return _RANKS.get(str(obj.get("kind")), _OTHER_RANK)


def sort_for_apply(objects: Iterable[Obj]) -> list[Obj]:
    return sorted(objects, key=rank)  # stable: file order within a rank


def sort_for_delete(objects: Iterable[Obj]) -> list[Obj]:
    return sorted(objects, key=rank, reverse=True)


def describe(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    ns = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')}/{ns}{meta.get('name')}"


@dataclass(frozen=True)
class Applied:
    kind: str
    name: str
    namespace: str | None
    api_version: str
    uid: str = ""
    generation: int = 0  # what the server answered: a waiter judges nothing older than this


def _transient(exc: BaseException) -> bool:
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status == 429 or status >= 500
    return isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__name__ in (
        "MaxRetryError", "ProtocolError", "NewConnectionError")


_retry = retry(retry=retry_if_exception(_transient), stop=stop_after_attempt(5),
               wait=wait_exponential(multiplier=0.2, max=3), reraise=True)


class Applier:
    """Server-side apply and delete through a kubernetes ``ApiClient``."""

    def __init__(self, api_client: Any, field_manager: str = FIELD_MANAGER, crd_timeout: float = 60.0) -> None:

        self.api_client = api_client
        self.dynamic = DynamicClient(api_client)  # type: ignore[no-untyped-call]
        self.field_manager = field_manager
        self.crd_timeout = crd_timeout

    def _resource(self, obj: Obj) -> Any:

        try:
            return self.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        except ResourceNotFoundError as exc:
            raise UnknownKindError(
                f"{describe(obj)}: the cluster serves no kind {obj['kind']!r} in {obj['apiVersion']!r}",
                hint="check apiVersion/kind spelling, or apply the CustomResourceDefinition that defines it",
            ) from exc

    def apply(self, objects: Sequence[Obj], namespace: str | None = None) -> list[Applied]:
        """Apply ``objects`` in rank order; namespaced objects without a namespace get ``namespace``."""
        applied: list[Applied] = []
        pending_crds: list[Obj] = []
        for obj in sort_for_apply(objects):
            if pending_crds and obj.get("kind") != "CustomResourceDefinition":
                self._wait_established(pending_crds)
                pending_crds = []
            applied.append(self._apply_one(obj, namespace))
            if obj.get("kind") == "CustomResourceDefinition":
                pending_crds.append(obj)
        if pending_crds:
            self._wait_established(pending_crds)
        return applied

    def _apply_one(self, obj: Obj, namespace: str | None) -> Applied:

        resource = self._resource(obj)
        meta = obj.setdefault("metadata", {})
        ns: str | None = None
        if resource.namespaced:
            ns = meta.get("namespace") or namespace
            if not ns:
                raise ConfigError(f"{describe(obj)} is namespaced but names no namespace",
                                  hint="set metadata.namespace or pass a default namespace")
            meta["namespace"] = ns
        try:
            live = _retry(resource_apply)(self.dynamic, resource, obj, ns, self.field_manager)
        except DynamicApiError as exc:
            if not (obj.get("kind") == "Job" and _immutable(exc)):
                raise _api_error(obj, exc) from exc
            # A Job's pod template cannot change (a new run has a new image tag): replace the Job.
            self._delete_and_wait(resource, meta["name"], ns)
            try:
                live = _retry(resource_apply)(self.dynamic, resource, obj, ns, self.field_manager)
            except DynamicApiError as again:
                raise _api_error(obj, again) from again
        live_meta = getattr(live, "metadata", None)
        return Applied(obj["kind"], meta["name"], ns, obj["apiVersion"], str(getattr(live_meta, "uid", "") or ""),
                       int(getattr(live_meta, "generation", 0) or 0))

    def _delete_and_wait(self, resource: Any, name: str, namespace: str | None, timeout: float = 120) -> None:
        try:
            resource.delete(name=name, namespace=namespace, body={"propagationPolicy": "Foreground"})
        except NotFoundError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                resource.get(name=name, namespace=namespace)
            except NotFoundError:
                return
            time.sleep(0.3)
        raise ApplyError(f"{resource.kind}/{namespace}/{name} was not deleted within {timeout:.0f} s",
                         hint="check its finalizers and pods")

    def _wait_established(self, crds: Sequence[Obj]) -> None:
        api = self.dynamic.resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")
        deadline = time.monotonic() + self.crd_timeout
        for crd in crds:
            name = crd["metadata"]["name"]
            while True:
                live = api.get(name=name).to_dict()
                conds = {c["type"]: c["status"] for c in (live.get("status") or {}).get("conditions") or []}
                if conds.get("Established") == "True":
                    break
                if time.monotonic() > deadline:
                    raise ApplyError(f"CustomResourceDefinition {name} not Established after {self.crd_timeout:.0f} s",
                                     hint=f"check its conditions: kubectl get crd {name} -o yaml")
                time.sleep(0.5)
        self.dynamic.resources.invalidate_cache()

    def get(self, obj: Obj, namespace: str | None = None) -> Obj | None:
        """The live object named like ``obj`` (its JSON form), or None when it does not exist."""
        resource = self._resource(obj)
        meta = obj.get("metadata") or {}
        ns = (meta.get("namespace") or namespace) if resource.namespaced else None
        try:
            live = _retry(resource.get)(name=meta["name"], namespace=ns)
        except NotFoundError:
            return None
        except DynamicApiError as exc:
            raise _api_error(obj, exc) from exc
        out: Obj = live.to_dict()
        return out

    def delete(self, objects: Sequence[Obj], namespace: str | None = None, *,
               wait: float | None = None) -> list[str]:
        """Delete in reverse rank order; missing objects are fine. Returns what was deleted.

        ``wait``: seconds to wait until every deleted object is gone (a name about to be created again).
        """

        deleted: list[tuple[Any, str, str | None, Obj]] = []
        for obj in sort_for_delete(objects):
            try:
                resource = self._resource(obj)
            except UnknownKindError:
                continue  # its CRD is already gone
            meta = obj.get("metadata") or {}
            ns = (meta.get("namespace") or namespace) if resource.namespaced else None
            try:
                _retry(resource.delete)(name=meta["name"], namespace=ns,
                                        body={"propagationPolicy": "Background"})
                deleted.append((resource, meta["name"], ns, obj))
            except NotFoundError:
                continue
            except DynamicApiError as exc:
                raise _api_error(obj, exc) from exc
        if wait is not None:
            deadline = time.monotonic() + wait
            for resource, name, ns, _ in deleted:
                self._gone(resource, name, ns, deadline, wait)
        return [describe(obj) for *_, obj in deleted]

    def _gone(self, resource: Any, name: str, namespace: str | None, deadline: float, timeout: float) -> None:
        while True:
            try:
                resource.get(name=name, namespace=namespace)
            except NotFoundError:
                return
            if time.monotonic() > deadline:
                raise ApplyError(f"{resource.kind}/{namespace}/{name} was not deleted within {timeout:.0f} s",
                                 hint="check its finalizers and pods")
            time.sleep(0.3)


def resource_apply(dynamic: Any, resource: Any, obj: Obj, namespace: str | None, manager: str) -> Any:
    return dynamic.server_side_apply(resource, body=obj, namespace=namespace, field_manager=manager,
                                     force_conflicts=True)


def _immutable(exc: Any) -> bool:
    return getattr(exc, "status", None) == 422 and "field is immutable" in str(getattr(exc, "body", ""))


def _shorten(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else f"{text[: limit // 2]} … {text[-limit // 2:]}"


def _status_text(exc: Any) -> str:
    """The API's Status message and causes, each shortened (422 messages embed whole Go structs)."""
    try:
        status = json.loads(getattr(exc, "body", "") or "{}")
    except (TypeError, ValueError):
        status = {}
    causes = (status.get("details") or {}).get("causes") or []
    if causes:
        return "; ".join(f"{c.get('field', '?')}: {_shorten(str(c.get('message', '')))}" for c in causes)
    if status.get("message"):
        return _shorten(str(status["message"]), 600)
    return _shorten(str(getattr(exc, "summary", lambda: str(exc))()), 600)


def _api_error(obj: Obj, exc: Any) -> KtiError:
    status = getattr(exc, "status", None)
    text = _status_text(exc)
    if status == 404 and "namespaces" in text and "not found" in text:
        ns = (obj.get("metadata") or {}).get("namespace")
        return ConfigError(f"{describe(obj)}: namespace {ns!r} does not exist",
                           hint="add a Namespace object to the manifests (it is applied first) or create it")
    if status in {400, 422}:
        return ConfigError(f"{describe(obj)} is invalid: {text}", hint="fix the field named in the message")
    return ApplyError(f"applying {describe(obj)} failed (HTTP {status}): {text}",
                      hint="check the API server and RBAC; the object is shown above")
