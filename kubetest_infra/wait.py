"""Readiness that fails fast: watch-driven, judging only the current template's pods, evidence attached.

Success: a complete rollout whose *current-template* pods are Ready (Deployments, StatefulSets,
DaemonSets, ReplicaSets), a ``Complete`` Job, or a Ready/Succeeded Pod. A container without a readiness
probe counts as ready only after it has stayed running for ``WaitPolicy.stable_seconds`` with no restart
(Kubernetes calls it Ready the moment it starts, even if it exits a millisecond later).

Failure, raised as soon as it is certain:

- at once: ``ErrImageNeverPull``, ``InvalidImageName``, ``OOMKilled``, a crashed container (a
  non-zero exit, or any exit of a ``restartPolicy: Always`` container) beyond ``crash_restarts``
  (default 0: the first crash fails, with the previous container's log), a failed Pod, a Job whose
  ``Failed`` condition is set (``backoffLimit`` exhausted: single failed Job pods are retries, not
  failures), a Deployment past its ``progressDeadlineSeconds``;
- after ``transient_grace`` seconds of the same state: reasons the kubelet retries and that can heal
  (``CreateContainerConfigError`` while a Secret is being created, ``ErrImagePull``/``ImagePullBackOff``
  from a registry, ``CreateContainerError``, ``RunContainerError``); unschedulable after
  ``unschedulable_grace``.

Pods of older templates (old ReplicaSets, StatefulSet revisions, DaemonSet generations) and
terminating pods are never judged; they appear in diagnostics. A timeout carries the last reason seen
per workload, the recent events and the log tail — never just counts.

The classification functions (:func:`judge_pod`, :func:`current_pods`, :func:`target_status`) are pure
and work on the API's JSON (camelCase dicts); :class:`Waiter` drives them from a shared
:class:`~kubetest_infra.kubewatch.Informer`, waking on every change and at the end of a grace window.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from kubetest_infra.errors import KtiError
from kubetest_infra.kubewatch import Informer
from kubetest_infra.workloads import WORKLOADS, read_workload, selector_for

__all__ = ["HINTS", "Informer", "PodProblem", "PodStartError", "ReadinessTimeout", "Target", "TargetStatus",
           "WaitPolicy", "Waiter", "current_pods", "judge_pod", "read_target", "selector_for", "target_status"]

Obj = dict[str, Any]
IMMEDIATE = ("ErrImageNeverPull", "InvalidImageName")
TRANSIENT = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError", "ErrImagePull",
             "ImagePullBackOff")

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
    "CrashLoopBackOff": "the container keeps exiting: read its log below (previous run included); allow restarts "
    "with crash_restarts in the suite's service if a crash at start is expected",
    "ContainerCrashed": "the container exited: read its log below; a service container must keep running "
    "(allow restarts with crash_restarts in the suite's service if a crash at start is expected)",
    "OOMKilled": "the container ran out of memory: raise resources.limits.memory or fix the leak",
    "Unschedulable": "no node fits the pod (resources, taints, node selectors, PVCs): see the scheduler event",
    "JobFailed": "the Job's pods failed until its backoffLimit: read the log below",
    "ProgressDeadlineExceeded": "the Deployment made no progress within progressDeadlineSeconds: see events",
    "PodFailed": "the pod failed: read the log below",
}


@dataclass(frozen=True)
class WaitPolicy:
    timeout: float | None = None  # None: the largest progressDeadlineSeconds of the targets, else 300 s
    crash_restarts: int = 0  # crashes allowed before failing (0: the first crash fails)
    stable_seconds: float = 2.0  # a container without readiness probe must run this long to count as ready
    transient_grace: float = 10.0  # how long a retryable reason (missing Secret, pull error) may last
    unschedulable_grace: float = 30.0
    log_lines: int = 40

    @property
    def crashloop_restarts(self) -> int:  # the old name
        return self.crash_restarts


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
        lines.extend(_evidence(self.events, logs, diagnostics))
        hint = HINTS.get(p.reason, "see the events and logs above")
        if p.reason == "ErrImageNeverPull":
            repo = p.image.rsplit(":", 1)[0] if ":" in p.image.rsplit("/", 1)[-1] else p.image
            related = [i for i in self.node_images if i.startswith(repo)]
            shown = related or list(self.node_images)[:10]
            hint += f". On node {p.node}: " + (", ".join(shown) if shown else "no images of ours")
        super().__init__("\n".join(lines), hint)


class ReadinessTimeout(KtiError):
    """Not ready in time: the last reason per workload, events and logs."""

    def __init__(self, pending: Mapping[Target, str], seconds: float, diagnostics: str | None = None,
                 events: Sequence[str] = (), logs: str = "") -> None:
        self.pending = dict(pending)
        self.diagnostics = diagnostics
        self.events = tuple(events)
        self.logs = logs
        lines = [f"not ready after {seconds:.0f} s:"] + [f"  {t}: {why}" for t, why in self.pending.items()]
        lines.extend(_evidence(self.events, logs, diagnostics))
        super().__init__("\n".join(lines), hint="raise the service's timeout if the workload is just slow; otherwise "
                         "the reason, events and logs above say what it waits for")


def _evidence(events: Sequence[str], logs: str, diagnostics: str | None) -> list[str]:
    lines = []
    if events:
        lines.append("  recent events:")
        lines.extend(f"    {e}" for e in events[-8:])
    if logs.strip():
        lines.append("  log tail:")
        lines.extend(f"    {line}" for line in logs.strip().splitlines()[-20:])
    if diagnostics:
        lines.append(f"  diagnostics: {diagnostics}")
    return lines


# -- pure judgement ------------------------------------------------------------------------------
Seen = Callable[[tuple[str, ...]], float]  # first time (monotonic) a key was observed


@dataclass(frozen=True)
class PodView:
    """One pod judged now: a failure to raise, readiness, why not ready, when to look again."""

    problem: PodProblem | None
    ready: bool
    waiting: str
    wake: float | None = None


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def judge_pod(pod: Obj, policy: WaitPolicy, seen: Seen, now: float, *, job: bool = False) -> PodView:
    """Judge one pod of the current template (``job``: a Job's pod, whose failures are retries)."""
    meta, spec, status = _meta(pod), pod.get("spec") or {}, pod.get("status") or {}
    uid = str(meta.get("uid") or meta.get("name", ""))
    init_specs = spec.get("initContainers") or []
    specs = {c.get("name"): c for c in init_specs + (spec.get("containers") or [])}
    restart_policy = spec.get("restartPolicy", "Always")
    wake: list[float] = []

    def problem(reason: str, container: str, message: str) -> PodView:
        image = (specs.get(container) or {}).get("image", "")
        return PodView(PodProblem(reason, meta.get("name", ""), meta.get("namespace", ""), container, image, message,
                                  spec.get("nodeName", "")), False, reason)

    def after_grace(key: tuple[str, ...], grace: float) -> bool:
        started = seen(key)
        if now - started >= grace:
            return True
        wake.append(started + grace)
        return False

    waiting_for = ""
    statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
    for cs in statuses:
        name = str(cs.get("name", ""))
        state, last = cs.get("state") or {}, cs.get("lastState") or {}
        waiting = state.get("waiting") or {}
        reason = str(waiting.get("reason", ""))
        if reason in IMMEDIATE:
            return problem(reason, name, waiting.get("message", ""))
        if reason in TRANSIENT:
            waiting_for = f"{reason}: {waiting.get('message', '')}".strip(": ")
            if after_grace((uid, name, reason), policy.transient_grace):
                return problem(reason, name, waiting.get("message", ""))
            continue
        for term in (state.get("terminated"), last.get("terminated")):
            if term and term.get("reason") == "OOMKilled" and not job:
                return problem("OOMKilled", name, f"exit code {term.get('exitCode')}")
        if job:
            continue  # a Job retries failed pods up to backoffLimit; its Failed condition decides
        crashes = int(cs.get("restartCount", 0))
        term = state.get("terminated")
        is_init = any(c.get("name") == name for c in init_specs)
        if term and (term.get("exitCode", 0) != 0 or (restart_policy == "Always" and not is_init)):
            crashes += 1  # exited and about to be restarted (or failed for good)
        if crashes > policy.crash_restarts:
            ended = term or last.get("terminated") or {}
            why = "CrashLoopBackOff" if reason == "CrashLoopBackOff" else "ContainerCrashed"
            return problem(why, name, f"exited {crashes} time(s); last exit code {ended.get('exitCode')} "
                           f"({ended.get('reason', '')}) {waiting.get('message', '')}".strip())
        if reason and not waiting_for:
            waiting_for = reason
    if status.get("phase") == "Failed" and not job:
        first = next(iter(specs), "")
        return problem("PodFailed", first, status.get("message") or status.get("reason") or "")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" \
                and cond.get("reason") == "Unschedulable":
            waiting_for = f"Unschedulable: {cond.get('message', '')}"
            if after_grace((uid, "", "Unschedulable"), policy.unschedulable_grace):
                return problem("Unschedulable", next(iter(specs), ""), cond.get("message", ""))
    ready, why, stable_wake = _pod_ready(pod, policy, seen, now)
    if stable_wake is not None:
        wake.append(stable_wake)
    return PodView(None, ready, waiting_for or why, min(wake) if wake else None)


def _pod_ready(pod: Obj, policy: WaitPolicy, seen: Seen, now: float) -> tuple[bool, str, float | None]:
    status, spec = pod.get("status") or {}, pod.get("spec") or {}
    if status.get("phase") == "Succeeded":
        return True, "", None
    if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []):
        return False, str(status.get("phase", "Pending")).lower(), None
    probed = {c.get("name") for c in spec.get("containers") or [] if c.get("readinessProbe")}
    uid = str(_meta(pod).get("uid") or _meta(pod).get("name", ""))
    wake: float | None = None
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") in probed:
            continue
        running = (cs.get("state") or {}).get("running")
        if not running:
            return False, f"container {cs.get('name')} not running", None
        key = (uid, str(cs.get("name")), "running", str(cs.get("restartCount", 0)), str(running.get("startedAt")))
        since = seen(key)
        if now - since < policy.stable_seconds:
            wake = max(wake or 0.0, since + policy.stable_seconds)
    if wake is not None:
        return False, f"running for less than {policy.stable_seconds:g} s (no readiness probe)", wake
    return True, "", None


def _owned_by(pod: Obj, uid: str) -> bool:
    return any(o.get("uid") == uid for o in _meta(pod).get("ownerReferences") or [])


def _terminating(pod: Obj) -> bool:
    return bool(_meta(pod).get("deletionTimestamp"))


def current_replica_set(deployment: Obj, replica_sets: Sequence[Obj]) -> Obj | None:
    """The ReplicaSet of a Deployment's current revision (None until the controller made it)."""
    uid = _meta(deployment).get("uid")
    revision = (_meta(deployment).get("annotations") or {}).get("deployment.kubernetes.io/revision")
    if not revision:
        return None
    for rs in replica_sets:
        if _owned_by(rs, str(uid)) and (_meta(rs).get("annotations") or {}).get(
                "deployment.kubernetes.io/revision") == revision:
            return rs
    return None


def current_pods(kind: str, obj: Obj, pods: Sequence[Obj], replica_sets: Sequence[Obj] = ()) -> list[Obj]:
    """The non-terminating pods of the workload's *current* template (older ones are never judged)."""
    uid = str(_meta(obj).get("uid", ""))
    live = [p for p in pods if not _terminating(p)]
    if kind == "Pod":
        return [obj] if not _terminating(obj) else []
    if kind == "Deployment":
        rs = current_replica_set(obj, replica_sets)
        return [p for p in live if rs is not None and _owned_by(p, str(_meta(rs).get("uid")))]
    if kind in ("ReplicaSet", "Job"):
        return [p for p in live if _owned_by(p, uid)]
    if kind == "StatefulSet":
        revision = (obj.get("status") or {}).get("updateRevision")
        return [p for p in live if _owned_by(p, uid) and (not revision or (_meta(p).get("labels") or {}).get(
            "controller-revision-hash") == revision)]
    if kind == "DaemonSet":
        generation = str(_meta(obj).get("generation", ""))
        return [p for p in live if _owned_by(p, uid) and (_meta(p).get("labels") or {}).get(
            "pod-template-generation", generation) == generation]
    raise KtiError(f"cannot wait for kind {kind}", hint=f"waitable kinds: {', '.join(WORKLOADS)}")


@dataclass(frozen=True)
class TargetStatus:
    ready: bool
    detail: str
    failure: str | None = None  # JobFailed | ProgressDeadlineExceeded
    message: str = ""


def target_status(kind: str, obj: Obj, pods: Sequence[Obj], pods_ready: bool | None = None) -> TargetStatus:
    """Readiness of one workload from its JSON and its current pods (pure).

    ``pods_ready``: the waiter's stricter verdict on those pods (stability window); None: trust the API.
    """
    spec, status, meta = obj.get("spec") or {}, obj.get("status") or {}, _meta(obj)
    conds = {c.get("type"): c for c in status.get("conditions") or []}
    observed = status.get("observedGeneration", 0) >= meta.get("generation", 0)
    extra = pods_ready is not False
    if kind == "Deployment":
        prog = conds.get("Progressing") or {}
        if prog.get("reason") == "ProgressDeadlineExceeded":
            return TargetStatus(False, "progress deadline exceeded", "ProgressDeadlineExceeded",
                                prog.get("message", ""))
        want = spec.get("replicas", 1)
        have = (status.get("updatedReplicas", 0), status.get("readyReplicas", 0), status.get("availableReplicas", 0))
        ready = observed and all(h == want for h in have) and status.get("replicas", 0) == want and extra
        return TargetStatus(ready, f"{have[1]}/{want} ready, {have[0]} updated")
    if kind in ("StatefulSet", "ReplicaSet"):
        want = spec.get("replicas", 1)
        updated = status.get("updatedReplicas", want) if kind == "StatefulSet" else want
        ready = observed and status.get("readyReplicas", 0) == want and updated == want and extra
        if kind == "StatefulSet" and status.get("updateRevision") and status.get("currentRevision") and \
                status.get("updateRevision") != status.get("currentRevision") and want > 0:
            ready = ready and len(pods) == want
        return TargetStatus(ready, f"{status.get('readyReplicas', 0)}/{want} ready")
    if kind == "DaemonSet":
        want = status.get("desiredNumberScheduled", 0)
        ready = observed and want > 0 and status.get("numberReady", 0) == want \
            and status.get("updatedNumberScheduled", 0) == want and extra
        return TargetStatus(ready, f"{status.get('numberReady', 0)}/{want} ready")
    if kind == "Job":
        if (conds.get("Failed") or {}).get("status") == "True":
            return TargetStatus(False, "failed", "JobFailed", (conds.get("Failed") or {}).get("message", ""))
        done = (conds.get("Complete") or {}).get("status") == "True"
        failed = status.get("failed", 0)
        retries = f", {failed} failed pod(s) (backoffLimit {spec.get('backoffLimit', 6)})" if failed else ""
        return TargetStatus(done, ("complete" if done else f"{status.get('succeeded', 0)} succeeded") + retries)
    if kind == "Pod":
        if not pods:
            return TargetStatus(False, "missing")
        return TargetStatus(bool(pods_ready), str((pods[0].get("status") or {}).get("phase", "Pending")).lower())
    raise KtiError(f"cannot wait for kind {kind}", hint=f"waitable kinds: {', '.join(WORKLOADS)}")


def read_target(api_client: Any, target: Target) -> Obj:
    """One workload of a target in its JSON form (camelCase)."""
    return read_workload(api_client, target.kind, target.name, target.namespace)


# -- the waiter ------------------------------------------------------------------------------------
NodeImages = Callable[[str], Sequence[str]]
Diagnose = Callable[[Sequence[Target], str], str]


@dataclass
class Waiter:
    """Waits for targets of one namespace; see the module docstring.

    ``informer`` may be shared by several waiters at once (one set of watches for a whole run); when
    None the waiter starts its own and stops it when done.
    """

    api_client: Any
    policy: WaitPolicy = field(default_factory=WaitPolicy)
    node_images: NodeImages | None = None
    diagnose: Diagnose | None = None
    informer: Informer | None = None
    clock: Callable[[], float] = time.monotonic
    _seen: dict[tuple[str, ...], float] = field(default_factory=dict, init=False, repr=False)
    _started: float = field(default=0.0, init=False, repr=False)

    def wait(self, targets: Sequence[Target], applied: Mapping[Target, tuple[str, int]] | None = None
             ) -> dict[Target, float]:
        """Wait for ``targets``. ``applied`` (target → uid, generation the apply returned): until the
        watch shows at least that object, nothing older is judged (a re-applied template's old pods)."""
        namespaces = {t.namespace for t in targets}
        if len(namespaces) > 1:
            raise KtiError(f"one wait covers one namespace, not {', '.join(sorted(namespaces))}",
                           hint="wait for each namespace's targets separately")
        if not targets:
            return {}
        for t in targets:
            if t.kind not in WORKLOADS or not WORKLOADS[t.kind].waitable:
                raise KtiError(f"cannot wait for {t}", hint=f"waitable kinds: "
                               f"{', '.join(k for k, w in WORKLOADS.items() if w.waitable)}")
        own = self.informer is None
        informer = self.informer or Informer(self.api_client, targets[0].namespace)
        kinds = {"Pod", *(t.kind for t in targets)}
        if "Deployment" in kinds:
            kinds.add("ReplicaSet")
        try:
            informer.ensure(*sorted(kinds))
            return self._loop(informer, targets, applied or {})
        finally:
            if own:
                informer.stop()

    def _loop(self, informer: Informer, targets: Sequence[Target],
              applied: Mapping[Target, tuple[str, int]]) -> dict[Target, float]:
        started = self._started = self.clock()
        deadline = started + self._timeout(informer, targets)
        ready_at: dict[Target, float] = {}
        version = -1
        last: dict[Target, str] = {}
        while True:
            if informer.stopped:
                raise KtiError(f"waiting for {', '.join(map(str, targets))} was interrupted",
                               hint="the run was interrupted or its watches were stopped")
            now = self.clock()
            with informer.cond:
                version = informer.version
                pods = informer.items("Pod")
                rsets = informer.items("ReplicaSet") if any(t.kind == "Deployment" for t in targets) else []
                objs = {t: informer.get(t.kind, t.name) for t in targets if t not in ready_at}
            wake: list[float] = [deadline]
            for target, obj in objs.items():
                if obj is None:
                    last[target] = "not found (not applied yet?)"
                    continue
                behind = _behind(obj, applied.get(target))
                if behind:
                    last[target] = behind
                    continue
                verdict = self._judge(target, obj, pods, rsets, now)
                if isinstance(verdict, PodStartError):
                    raise verdict
                ready, detail, when = verdict
                if ready:
                    ready_at[target] = now - started
                else:
                    last[target] = detail
                    if when is not None:
                        wake.append(when)
            pending = {t: last.get(t, "waiting") for t in targets if t not in ready_at}
            if not pending:
                return ready_at
            if now >= deadline:
                raise self._timeout_error(pending, now - started)
            informer.wait_change(version, max(0.0, min(wake) - self.clock()))

    def _judge(self, target: Target, obj: Obj, pods: Sequence[Obj], rsets: Sequence[Obj],
               now: float) -> tuple[bool, str, float | None] | PodStartError:
        if WORKLOADS[target.kind].rolls_out and \
                (obj.get("status") or {}).get("observedGeneration", 0) < _meta(obj).get("generation", 0):
            return False, f"waiting for the controller to observe generation {_meta(obj).get('generation')}", None
        mine = current_pods(target.kind, obj, pods, rsets)
        job = target.kind == "Job"
        views = [judge_pod(p, self.policy, self._first_seen, now, job=job) for p in mine]
        for view in views:
            if view.problem is not None:
                return self._failure(target, view.problem, now)
        st = target_status(target.kind, obj, mine, pods_ready=all(v.ready for v in views) if views else None)
        if st.failure:
            return self._failure(target, _workload_problem(target, st, pods, mine), now)
        if st.ready:
            return True, st.detail, None
        reasons = sorted({v.waiting for v in views if v.waiting})
        wakes = [v.wake for v in views if v.wake is not None]
        return False, st.detail + (f" ({'; '.join(reasons)})" if reasons else ""), min(wakes) if wakes else None

    def _first_seen(self, key: tuple[str, ...]) -> float:
        return self._seen.setdefault(key, self.clock())

    def _timeout(self, informer: Informer, targets: Sequence[Target]) -> float:
        if self.policy.timeout is not None:
            return self.policy.timeout
        deadlines = []
        for t in targets:
            obj = informer.get(t.kind, t.name) if t.kind == "Deployment" else None
            if obj is not None:
                deadlines.append(float((obj.get("spec") or {}).get("progressDeadlineSeconds", 600)))
        return max(deadlines) if deadlines else 300.0

    def _timeout_error(self, pending: Mapping[Target, str], seconds: float) -> ReadinessTimeout:
        events: list[str] = []
        logs = ""
        namespace = next(iter(pending)).namespace
        try:
            core: Any = client.CoreV1Api(self.api_client)
            items = core.list_namespaced_event(namespace, _request_timeout=20).items
            items.sort(key=lambda e: str(e.last_timestamp or e.event_time or e.metadata.creation_timestamp))
            events = [f"{e.involved_object.kind}/{e.involved_object.name} {e.type} {e.reason}: {e.message}"
                      for e in items]
            for pod in core.list_namespaced_pod(namespace, _request_timeout=20).items:
                if not any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []):
                    container = pod.spec.containers[0].name
                    logs = self._logs(PodProblem("", pod.metadata.name, namespace, container, "", "", ""))
                    if logs:
                        break
        except Exception:  # noqa: S110 - evidence is best effort; the timeout itself is what matters
            pass
        diag = self.diagnose(list(pending), "timeout") if self.diagnose else None
        return ReadinessTimeout(pending, seconds, diag, events, logs)

    def _failure(self, target: Target, problem: PodProblem, now: float) -> PodStartError:
        events = self._events(problem)
        logs = self._logs(problem)
        node_imgs: Sequence[str] = ()
        if problem.reason == "ErrImageNeverPull" and self.node_images and problem.node:
            try:
                node_imgs = self.node_images(problem.node)
            except KtiError:
                node_imgs = ()
        diag = self.diagnose([target], problem.reason) if self.diagnose else None
        seconds = now - self._started
        return PodStartError(target, problem, events=events, logs=logs, node_images=node_imgs, diagnostics=diag,
                             seconds=seconds)

    def _events(self, problem: PodProblem) -> list[str]:
        try:
            items = client.CoreV1Api(self.api_client).list_namespaced_event(
                problem.namespace, field_selector=f"involvedObject.name={problem.pod}", _request_timeout=20).items
        except Exception:  # evidence is best effort; the failure itself is already known
            return []
        items.sort(key=lambda e: str(e.last_timestamp or e.event_time or e.metadata.creation_timestamp))
        return [f"{e.type} {e.reason}: {e.message}" for e in items]

    def _logs(self, problem: PodProblem) -> str:
        if not problem.container or problem.pod in ("", "-"):
            return ""
        core = client.CoreV1Api(self.api_client)
        out = []
        for previous in (True, False):
            try:
                text = core.read_namespaced_pod_log(problem.pod, problem.namespace, container=problem.container,
                                                    previous=previous, tail_lines=self.policy.log_lines,
                                                    _request_timeout=20)
            except Exception:  # noqa: S112 - no previous container, or not started: nothing to show
                continue
            if text and text.strip():
                out.append(f"[{'previous' if previous else 'current'} container]\n{text.rstrip()}")
        return "\n".join(out)


def _behind(obj: Obj, applied: tuple[str, int] | None) -> str:
    """Why the watched object is older than what was applied ("" when it is current)."""
    if applied is None:
        return ""
    uid, generation = applied
    meta = _meta(obj)
    if uid and meta.get("uid") != uid:
        return "waiting for the watch to see the applied object (an older one with the same name is cached)"
    if meta.get("generation", 0) < generation:
        return f"waiting for the watch to see generation {generation}"
    return ""


def _workload_problem(target: Target, st: TargetStatus, pods: Sequence[Obj], mine: Sequence[Obj]) -> PodProblem:
    """A workload-level failure (JobFailed, ProgressDeadlineExceeded) with the most telling pod."""
    candidates = list(mine) or list(pods)
    if target.kind == "Job":
        owned = [p for p in pods if any(o.get("kind") == "Job" and o.get("name") == target.name
                                        for o in _meta(p).get("ownerReferences") or [])]
        failed = [p for p in owned if (p.get("status") or {}).get("phase") == "Failed"]
        candidates = failed or owned or candidates
    candidates = sorted(candidates, key=lambda p: str(_meta(p).get("creationTimestamp", "")))
    pod: Obj = candidates[-1] if candidates else {"metadata": {"name": "-"}, "spec": {}}
    spec = pod.get("spec") or {}
    container = ((spec.get("containers") or [{}])[0]).get("name", "")
    image = ((spec.get("containers") or [{}])[0]).get("image", "")
    return PodProblem(st.failure or "", _meta(pod).get("name", "-"), target.namespace, container, image, st.message,
                      spec.get("nodeName", ""))
