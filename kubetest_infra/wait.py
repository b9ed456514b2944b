"""Readiness that fails fast: watch-driven, with the evidence attached.

Success is a complete rollout with Ready pods (Deployments, StatefulSets, DaemonSets), a ``Complete``
Job, or a Ready/Succeeded Pod. Failure is raised as soon as a pod shows a state that will not heal on
its own — ``ErrImageNeverPull``, ``ErrImagePull``/``ImagePullBackOff``, ``InvalidImageName``,
``CreateContainerConfigError``/``CreateContainerError``, ``CrashLoopBackOff`` (after a configurable
number of restarts), ``OOMKilled``, unschedulable past a grace period, a failed Job or a Deployment past
its ``progressDeadlineSeconds`` — carrying the reason, pod, container, image, recent events and the log
tail (current and previous container), and a ``Hint:`` per reason.

Classification (:func:`classify_pod`, :func:`target_status`) is pure and works on plain dicts; the
:class:`Waiter` drives it from a pod watch, re-checking on every event and at least every 2 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from kubernetes import client, watch

from kubetest_infra.errors import KtiError

Obj = dict[str, Any]
IMMEDIATE = ("ErrImageNeverPull", "ErrImagePull", "ImagePullBackOff", "InvalidImageName",
             "CreateContainerConfigError", "CreateContainerError", "RunContainerError")
WATCH_SLICE = 2.0

HINTS: Mapping[str, str] = {
    "ErrImageNeverPull": "the image is not on the node and imagePullPolicy is Never: load the exact reference "
    "the build returned into the cluster (every node) and deploy that reference",
    "ErrImagePull": "the node cannot pull the image (no registry reachable, or a wrong name): build it locally, "
    "load it into Kind and use imagePullPolicy: Never",
    "ImagePullBackOff": "the node cannot pull the image (no registry reachable, or a wrong name): build it "
    "locally, load it into Kind and use imagePullPolicy: Never",
    "InvalidImageName": "the image reference is malformed: fix it in the manifest",
    "CreateContainerConfigError": "a ConfigMap, Secret or key the container references is missing: see the events",
    "CreateContainerError": "the runtime could not create the container: see the events",
    "RunContainerError": "the runtime could not start the container (entrypoint, mounts): see the events",
    "CrashLoopBackOff": "the container keeps exiting: read its log below (previous run included)",
    "OOMKilled": "the container ran out of memory: raise resources.limits.memory or fix the leak",
    "Unschedulable": "no node fits the pod (resources, taints, node selectors, PVCs): see the scheduler event",
    "JobFailed": "the Job's pods failed: read the log below",
    "ProgressDeadlineExceeded": "the Deployment made no progress within progressDeadlineSeconds: see events",
    "PodFailed": "the pod failed: read the log below",
}


@dataclass(frozen=True)
class WaitPolicy:
    timeout: float | None = None  # None: the largest progressDeadlineSeconds of the targets, else 300 s
    crashloop_restarts: int = 2
    unschedulable_grace: float = 30.0
    log_lines: int = 40


@dataclass(frozen=True)
class Target:
    kind: str
    name: str
    namespace: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PodProblem:
    reason: str
    pod: str
    namespace: str
    container: str
    image: str
    message: str
    node: str


class PodStartError(KtiError):
    """A workload cannot become ready; carries the evidence."""

    def __init__(self, target: Target, problem: PodProblem, *, events: Sequence[str] = (), logs: str = "",
                 node_images: Sequence[str] = (), diagnostics: str | None = None, seconds: float = 0.0) -> None:
        self.target = target
        self.problem = problem
        self.events = tuple(events)
        self.logs = logs
        self.node_images = tuple(node_images)
        self.diagnostics = diagnostics
        self.seconds = seconds
        p = problem
        lines = [f"{target} cannot start: {p.reason} after {seconds:.1f} s",
                 f"  pod {p.namespace}/{p.pod}, container {p.container!r}, image {p.image}, node {p.node or '-'}"]
        if p.message:
            lines.append(f"  message: {p.message}")
        if self.events:
            lines.append("  recent events:")
            lines.extend(f"    {e}" for e in self.events[-8:])
        if logs.strip():
            lines.append("  log tail:")
            lines.extend(f"    {line}" for line in logs.strip().splitlines()[-20:])
        if diagnostics:
            lines.append(f"  diagnostics: {diagnostics}")
        hint = HINTS.get(p.reason, "see the events and logs above")
        if p.reason == "ErrImageNeverPull":
            repo = p.image.rsplit(":", 1)[0] if ":" in p.image.rsplit("/", 1)[-1] else p.image
            related = [i for i in self.node_images if i.startswith(repo)]
            shown = related or list(self.node_images)[:10]
            hint += f". On node {p.node}: " + (", ".join(shown) if shown else "no images of ours")
        super().__init__("\n".join(lines), hint)


class ReadinessTimeout(KtiError):
    def __init__(self, pending: Mapping[Target, str], seconds: float, diagnostics: str | None = None) -> None:
        self.pending = dict(pending)
        self.diagnostics = diagnostics
        lines = [f"not ready after {seconds:.0f} s:"] + [f"  {t}: {why}" for t, why in self.pending.items()]
        if diagnostics:
            lines.append(f"  diagnostics: {diagnostics}")
        super().__init__("\n".join(lines), hint="raise the timeout if the workload is just slow; otherwise read the "
                         "diagnostics (events, pod states, logs)")


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def classify_pod(pod: Obj, policy: WaitPolicy, now: datetime | None = None) -> PodProblem | None:
    """The first unrecoverable problem of a pod, or None. ``pod`` is the API's JSON form (camelCase)."""
    now = now or datetime.now(timezone.utc)
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    containers = (spec.get("initContainers") or []) + (spec.get("containers") or [])
    images = {c.get("name"): c.get("image", "") for c in containers}

    def problem(reason: str, container: str, message: str) -> PodProblem:
        return PodProblem(reason, meta.get("name", ""), meta.get("namespace", ""), container,
                          images.get(container, ""), message, spec.get("nodeName", ""))

    statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
    for cs in statuses:
        name = cs.get("name", "")
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason", "")
        if reason in IMMEDIATE:
            return problem(reason, name, waiting.get("message", ""))
        for state in ((cs.get("state") or {}).get("terminated"), (cs.get("lastState") or {}).get("terminated")):
            if state and state.get("reason") == "OOMKilled":
                return problem("OOMKilled", name, f"exit code {state.get('exitCode')}")
        if reason == "CrashLoopBackOff" and int(cs.get("restartCount", 0)) >= policy.crashloop_restarts:
            last = (cs.get("lastState") or {}).get("terminated") or {}
            return problem("CrashLoopBackOff", name, f"restarted {cs.get('restartCount')} times; last exit code "
                           f"{last.get('exitCode')} ({last.get('reason', '')}) {waiting.get('message', '')}".strip())
    if status.get("phase") == "Failed":
        return problem("PodFailed", next(iter(images), ""), status.get("message") or status.get("reason") or "")
    for cond in status.get("conditions") or []:
        unschedulable = cond.get("status") == "False" and cond.get("reason") == "Unschedulable"
        if cond.get("type") == "PodScheduled" and unschedulable:
            since = _parse_time(cond.get("lastTransitionTime")) or now
            if (now - since).total_seconds() >= policy.unschedulable_grace:
                return problem("Unschedulable", next(iter(images), ""), cond.get("message", ""))
    return None


def pod_ready(pod: Obj) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") == "Succeeded":
        return True
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


@dataclass(frozen=True)
class TargetStatus:
    ready: bool
    detail: str
    failure: str | None = None  # JobFailed | ProgressDeadlineExceeded
    message: str = ""


def target_status(kind: str, obj: Obj, pods: Sequence[Obj]) -> TargetStatus:
    """Readiness of one workload from its JSON and its pods (pure)."""
    spec, status, meta = obj.get("spec") or {}, obj.get("status") or {}, obj.get("metadata") or {}
    conds = {c.get("type"): c for c in status.get("conditions") or []}
    observed = status.get("observedGeneration", 0) >= meta.get("generation", 0)
    if kind == "Deployment":
        prog = conds.get("Progressing") or {}
        if prog.get("reason") == "ProgressDeadlineExceeded":
            return TargetStatus(False, "progress deadline exceeded", "ProgressDeadlineExceeded",
                                prog.get("message", ""))
        want = spec.get("replicas", 1)
        have = (status.get("updatedReplicas", 0), status.get("readyReplicas", 0), status.get("availableReplicas", 0))
        ready = observed and all(h == want for h in have) and status.get("replicas", 0) == want
        return TargetStatus(ready, f"{have[1]}/{want} ready, {have[0]} updated")
    if kind == "StatefulSet":
        want = spec.get("replicas", 1)
        ready = observed and status.get("readyReplicas", 0) == want and status.get("updatedReplicas", want) == want
        return TargetStatus(ready, f"{status.get('readyReplicas', 0)}/{want} ready")
    if kind == "DaemonSet":
        want = status.get("desiredNumberScheduled", 0)
        ready = observed and want > 0 and status.get("numberReady", 0) == want \
            and status.get("updatedNumberScheduled", 0) == want
        return TargetStatus(ready, f"{status.get('numberReady', 0)}/{want} ready")
    if kind == "Job":
        if (conds.get("Failed") or {}).get("status") == "True":
            return TargetStatus(False, "failed", "JobFailed", (conds.get("Failed") or {}).get("message", ""))
        done = (conds.get("Complete") or {}).get("status") == "True"
        return TargetStatus(done, "complete" if done else f"{status.get('succeeded', 0)} succeeded")
    if kind == "Pod":
        ready = bool(pods) and pod_ready(pods[0])
        return TargetStatus(ready, (pods[0].get("status") or {}).get("phase", "Pending") if pods else "missing")
    raise KtiError(f"cannot wait for kind {kind}", hint="wait for Deployment, StatefulSet, DaemonSet, Job or Pod")


def selector_for(kind: str, obj: Obj) -> str:
    if kind == "Pod":
        return ""
    if kind == "Job":
        uid = (obj.get("metadata") or {}).get("uid", "")
        return f"controller-uid={uid}" if uid else f"job-name={obj['metadata']['name']}"
    labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def read_workload(api_client: Any, target: Target) -> Obj:
    """One Deployment, StatefulSet, DaemonSet, Job or Pod in its JSON form (camelCase)."""
    apps, batch, core = client.AppsV1Api(api_client), client.BatchV1Api(api_client), client.CoreV1Api(api_client)
    readers: dict[str, Callable[[str, str], Any]] = {
        "Deployment": apps.read_namespaced_deployment, "StatefulSet": apps.read_namespaced_stateful_set,
        "DaemonSet": apps.read_namespaced_daemon_set, "Job": batch.read_namespaced_job,
        "Pod": core.read_namespaced_pod,
    }
    if target.kind not in readers:
        raise KtiError(f"cannot read {target}", hint="workloads are Deployment, StatefulSet, DaemonSet, Job or Pod")
    obj: Obj = api_client.sanitize_for_serialization(readers[target.kind](target.name, target.namespace))
    return obj


NodeImages = Callable[[str], Sequence[str]]
Diagnose = Callable[[Sequence[Target], str], str]


@dataclass
class Waiter:
    """Waits for targets through a kubernetes ``ApiClient``; see the module docstring."""

    api_client: Any
    policy: WaitPolicy = field(default_factory=WaitPolicy)
    node_images: NodeImages | None = None
    diagnose: Diagnose | None = None

    def wait(self, targets: Sequence[Target]) -> dict[Target, float]:

        core = client.CoreV1Api(self.api_client)
        started = time.monotonic()
        deadline = started + self._timeout(targets)
        ready_at: dict[Target, float] = {}
        namespaces = sorted({t.namespace for t in targets})
        while True:
            pending: dict[Target, str] = {}
            for target in targets:
                if target in ready_at:
                    continue
                obj, pods = self._fetch(target)
                for pod in pods:
                    problem = classify_pod(pod, self.policy)
                    if problem is not None:
                        raise self._failure(target, problem, time.monotonic() - started)
                st = target_status(target.kind, obj, pods)
                if st.failure:
                    pod = pods[0] if pods else {"metadata": {"name": "-", "namespace": target.namespace}}
                    problem = classify_pod(pod, self.policy) or PodProblem(
                        st.failure, pod["metadata"]["name"], target.namespace, "", "", st.message,
                        (pod.get("spec") or {}).get("nodeName", ""))
                    raise self._failure(target, _replace_reason(problem, st.failure, st.message),
                                        time.monotonic() - started)
                if st.ready:
                    ready_at[target] = time.monotonic() - started
                else:
                    pending[target] = st.detail
            if not pending:
                return ready_at
            if time.monotonic() >= deadline:
                diag = self.diagnose(list(pending), "timeout") if self.diagnose else None
                raise ReadinessTimeout(pending, time.monotonic() - started, diag)
            self._wait_for_event(core, namespaces, min(WATCH_SLICE, max(0.1, deadline - time.monotonic())))

    def _timeout(self, targets: Sequence[Target]) -> float:
        if self.policy.timeout is not None:
            return self.policy.timeout
        deadlines = []
        for t in targets:
            if t.kind == "Deployment":
                obj, _ = self._fetch(t, with_pods=False)
                deadlines.append(float((obj.get("spec") or {}).get("progressDeadlineSeconds", 600)))
        return max(deadlines) if deadlines else 300.0

    def _fetch(self, target: Target, with_pods: bool = True) -> tuple[Obj, list[Obj]]:
        obj = read_workload(self.api_client, target)
        if not with_pods:
            return obj, []
        if target.kind == "Pod":
            return obj, [obj]
        core = client.CoreV1Api(self.api_client)
        selector = selector_for(target.kind, obj)
        listed = core.list_namespaced_pod(target.namespace, label_selector=selector)
        pods: list[Obj] = self.api_client.sanitize_for_serialization(listed).get("items") or []
        return obj, pods

    def _wait_for_event(self, core: Any, namespaces: Sequence[str], seconds: float) -> None:
        if len(namespaces) != 1:
            time.sleep(min(seconds, 1.0))
            return
        w = watch.Watch()  # type: ignore[no-untyped-call]
        try:
            stream = w.stream(core.list_namespaced_pod, namespaces[0],  # type: ignore[no-untyped-call]
                              timeout_seconds=max(1, int(seconds)), _request_timeout=seconds + 5)
            for _ in stream:
                break  # any change: re-check everything
        finally:
            w.stop()  # type: ignore[no-untyped-call]

    def _failure(self, target: Target, problem: PodProblem, seconds: float) -> PodStartError:
        events = self._events(problem)
        logs = self._logs(problem)
        node_imgs: Sequence[str] = ()
        if problem.reason == "ErrImageNeverPull" and self.node_images and problem.node:
            try:
                node_imgs = self.node_images(problem.node)
            except KtiError:
                node_imgs = ()
        diag = self.diagnose([target], problem.reason) if self.diagnose else None
        return PodStartError(target, problem, events=events, logs=logs, node_images=node_imgs, diagnostics=diag,
                             seconds=seconds)

    def _events(self, problem: PodProblem) -> list[str]:

        try:
            items = client.CoreV1Api(self.api_client).list_namespaced_event(
                problem.namespace, field_selector=f"involvedObject.name={problem.pod}").items
        except Exception:  # evidence is best effort; the failure itself is already known
            return []
        items.sort(key=lambda e: str(e.last_timestamp or e.event_time or e.metadata.creation_timestamp))
        return [f"{e.type} {e.reason}: {e.message}" for e in items]

    def _logs(self, problem: PodProblem) -> str:

        if not problem.container or problem.pod == "-":
            return ""
        core = client.CoreV1Api(self.api_client)
        out = []
        for previous in (True, False):
            try:
                text = core.read_namespaced_pod_log(problem.pod, problem.namespace, container=problem.container,
                                                    previous=previous, tail_lines=self.policy.log_lines)
            except Exception:  # noqa: S112 - no previous container, or not started: nothing to show
                continue
            if text and text.strip():
                out.append(f"[{'previous' if previous else 'current'} container]\n{text.rstrip()}")
        return "\n".join(out)


def _replace_reason(problem: PodProblem, reason: str, message: str) -> PodProblem:
    if problem.reason == reason:
        return problem
    return PodProblem(reason, problem.pod, problem.namespace, problem.container, problem.image,
                      message or problem.message, problem.node)
