"""The waiter's judgement, on plain pod/workload JSON (pure: no cluster, no clock but a fake one)."""

from __future__ import annotations

from typing import Any

import pytest

from kubetest_infra.errors import KtiError
from kubetest_infra.wait import (
    PodProblem,
    PodStartError,
    ReadinessTimeout,
    Target,
    WaitPolicy,
    current_pods,
    judge_pod,
    target_status,
)
from kubetest_infra.workloads import label_selector, pod_spec, selector_for, selector_matches

Obj = dict[str, Any]


class Clock:
    """A fake first-seen record: a key not seen before is first seen at ``now`` (start: ``t0``)."""

    def __init__(self, t0: float = 100.0) -> None:
        self.now = t0
        self.seen: dict[tuple[str, ...], float] = {}

    def __call__(self, key: tuple[str, ...]) -> float:
        return self.seen.setdefault(key, self.now)


def pod(statuses: list[Obj] | None = None, *, phase: str = "Pending", conditions: list[Obj] | None = None,
        init: list[Obj] | None = None, probe: bool = False, restart: str = "Always", name: str = "p-1",
        owner: str = "rs-uid", deleting: bool = False, labels: Obj | None = None) -> Obj:
    app: Obj = {"name": "app", "image": "localhost/app:s-1"}
    if probe:
        app["readinessProbe"] = {"httpGet": {"path": "/", "port": 8080}}
    meta: Obj = {"name": name, "namespace": "ns", "uid": f"uid-{name}", "labels": labels or {"app": "a"},
                 "ownerReferences": [{"uid": owner}]}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-22T10:00:00Z"
    return {"metadata": meta,
            "spec": {"nodeName": "kind-control-plane", "containers": [app], "restartPolicy": restart,
                     "initContainers": [{"name": "init", "image": "busybox:1"}]},
            "status": {"phase": phase, "containerStatuses": statuses or [], "initContainerStatuses": init or [],
                       "conditions": conditions or []}}


def waiting(reason: str, restarts: int = 0, message: str = "", exit_code: int = 3) -> Obj:
    return {"name": "app", "restartCount": restarts, "state": {"waiting": {"reason": reason, "message": message}},
            "lastState": {"terminated": {"exitCode": exit_code, "reason": "Error"}} if restarts else {}}


def running(restarts: int = 0, started: str = "2026-11-22T10:00:00Z") -> Obj:
    return {"name": "app", "restartCount": restarts, "state": {"running": {"startedAt": started}}}


READY = [{"type": "Ready", "status": "True"}]


@pytest.mark.parametrize("reason", ["ErrImageNeverPull", "InvalidImageName"])
def test_immediate_failures(reason: str) -> None:
    view = judge_pod(pod([waiting(reason, message="m")]), WaitPolicy(), Clock(), 100.0)
    assert view.problem is not None
    p = view.problem
    assert (p.reason, p.container, p.image, p.node) == (reason, "app", "localhost/app:s-1", "kind-control-plane")


@pytest.mark.parametrize("reason", ["CreateContainerConfigError", "ErrImagePull", "ImagePullBackOff",
                                    "CreateContainerError", "RunContainerError"])
def test_retryable_reasons_fail_only_after_the_grace_window(reason: str) -> None:
    clock = Clock(t0=100.0)
    policy = WaitPolicy(transient_grace=10.0)
    early = judge_pod(pod([waiting(reason, message="secret x not found")]), policy, clock, 105.0)
    assert early.problem is None
    assert early.wake == 110.0, "the waiter must look again when the grace window ends"
    assert reason in early.waiting
    late = judge_pod(pod([waiting(reason, message="secret x not found")]), policy, clock, 110.0)
    assert late.problem is not None
    assert late.problem.reason == reason


def test_a_secret_created_within_the_grace_window_heals() -> None:
    clock = Clock()
    policy = WaitPolicy(transient_grace=10.0)
    assert judge_pod(pod([waiting("CreateContainerConfigError")]), policy, clock, 103.0).problem is None
    healed = judge_pod(pod([running()], phase="Running", conditions=READY, probe=True), policy, clock, 104.0)
    assert healed.problem is None
    assert healed.ready


def test_init_container_failures_are_seen() -> None:
    view = judge_pod(pod(init=[{**waiting("ErrImageNeverPull"), "name": "init"}]), WaitPolicy(), Clock(), 100.0)
    assert view.problem is not None
    assert (view.problem.container, view.problem.image) == ("init", "busybox:1")


def test_the_first_crash_fails_with_its_exit_code() -> None:
    exited = {"name": "app", "restartCount": 0,
              "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}
    view = judge_pod(pod([exited], phase="Running"), WaitPolicy(), Clock(), 100.0)
    assert view.problem is not None
    assert view.problem.reason == "ContainerCrashed"
    assert "last exit code 1" in view.problem.message
    backoff = judge_pod(pod([waiting("CrashLoopBackOff", restarts=1)]), WaitPolicy(), Clock(), 100.0)
    assert backoff.problem is not None
    assert backoff.problem.reason == "CrashLoopBackOff"


def test_crash_restarts_allows_crashes_before_failing() -> None:
    policy = WaitPolicy(crash_restarts=2)
    assert judge_pod(pod([waiting("CrashLoopBackOff", restarts=2)]), policy, Clock(), 100.0).problem is None
    view = judge_pod(pod([waiting("CrashLoopBackOff", restarts=3)]), policy, Clock(), 100.0)
    assert view.problem is not None
    assert "exit code 3" in view.problem.message


def test_exit_zero_of_a_service_container_is_a_crash_but_not_of_a_run_to_completion_pod() -> None:
    done = {"name": "app", "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    assert judge_pod(pod([done]), WaitPolicy(), Clock(), 100.0).problem is not None
    once = judge_pod(pod([done], phase="Succeeded", restart="Never"), WaitPolicy(), Clock(), 100.0)
    assert once.problem is None
    assert once.ready


def test_oomkilled_from_last_state() -> None:
    cs = {"name": "app", "restartCount": 1, "state": {"running": {}},
          "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}
    view = judge_pod(pod([cs]), WaitPolicy(crash_restarts=5), Clock(), 100.0)
    assert view.problem is not None
    assert view.problem.reason == "OOMKilled"


def test_a_jobs_failed_pod_is_a_retry_not_a_failure() -> None:
    failed = {"name": "app", "restartCount": 0, "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}
    view = judge_pod(pod([failed], phase="Failed", restart="Never"), WaitPolicy(), Clock(), 100.0, job=True)
    assert view.problem is None
    image = judge_pod(pod([waiting("ErrImageNeverPull")], restart="Never"), WaitPolicy(), Clock(), 100.0, job=True)
    assert image.problem is not None, "an image that can never start fails a Job's pod at once"


def test_unschedulable_after_grace() -> None:
    cond = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes"}]
    clock = Clock()
    policy = WaitPolicy(unschedulable_grace=30)
    early = judge_pod(pod(conditions=cond), policy, clock, 120.0)
    assert early.problem is None
    assert "Unschedulable" in early.waiting
    late = judge_pod(pod(conditions=cond), policy, clock, 130.0)
    assert late.problem is not None
    assert late.problem.reason == "Unschedulable"


def test_without_a_probe_ready_only_after_the_stability_window() -> None:
    clock = Clock(t0=100.0)
    policy = WaitPolicy(stable_seconds=2.0)
    fresh = judge_pod(pod([running()], phase="Running", conditions=READY), policy, clock, 101.0)
    assert (fresh.ready, fresh.wake) == (False, 102.0)
    assert "no readiness probe" in fresh.waiting
    assert judge_pod(pod([running()], phase="Running", conditions=READY), policy, clock, 102.0).ready
    clock.now = 102.5
    restarted = judge_pod(pod([running(restarts=0, started="2026-11-22T10:00:05Z")], phase="Running",
                              conditions=READY), policy, clock, 102.5)
    assert not restarted.ready, "a container that started again begins a new window"


def test_with_a_probe_the_pods_ready_condition_decides() -> None:
    view = judge_pod(pod([running()], phase="Running", conditions=READY, probe=True), WaitPolicy(), Clock(), 100.0)
    assert view.ready
    starting = judge_pod(pod([running()], phase="Running", probe=True), WaitPolicy(), Clock(), 100.0)
    assert not starting.ready


def test_healthy_and_starting_pods_are_not_problems() -> None:
    assert judge_pod(pod([waiting("ContainerCreating")]), WaitPolicy(), Clock(), 100.0).problem is None


def deployment(revision: str = "2", uid: str = "dep-uid") -> Obj:
    return {"metadata": {"name": "app", "uid": uid, "generation": 2,
                         "annotations": {"deployment.kubernetes.io/revision": revision}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "a"}}},
            "status": {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
                       "availableReplicas": 1}}


def replica_set(uid: str, revision: str, owner: str = "dep-uid") -> Obj:
    return {"metadata": {"name": f"app-{uid}", "uid": uid, "ownerReferences": [{"uid": owner}],
                         "annotations": {"deployment.kubernetes.io/revision": revision}}}


def test_only_the_current_replica_sets_pods_are_judged() -> None:
    rsets = [replica_set("old-rs", "1"), replica_set("new-rs", "2")]
    new = pod([running()], name="new", owner="new-rs")
    old = pod([waiting("CrashLoopBackOff", restarts=5)], name="old", owner="old-rs")
    dying = pod([running()], name="dying", owner="new-rs", deleting=True)
    assert [p["metadata"]["name"] for p in current_pods("Deployment", deployment(), [new, old, dying], rsets)] \
        == ["new"]
    assert current_pods("Deployment", deployment(revision="3"), [new, old], rsets) == [], \
        "no pods until the controller made the current revision's ReplicaSet"


def test_statefulset_and_daemonset_current_pods() -> None:
    sts = {"metadata": {"uid": "sts"}, "status": {"updateRevision": "web-2"}}
    a = pod(name="a", owner="sts", labels={"controller-revision-hash": "web-2"})
    b = pod(name="b", owner="sts", labels={"controller-revision-hash": "web-1"})
    assert [p["metadata"]["name"] for p in current_pods("StatefulSet", sts, [a, b])] == ["a"]
    ds = {"metadata": {"uid": "ds", "generation": 3}}
    c = pod(name="c", owner="ds", labels={"pod-template-generation": "3"})
    d = pod(name="d", owner="ds", labels={"pod-template-generation": "2"})
    assert [p["metadata"]["name"] for p in current_pods("DaemonSet", ds, [c, d])] == ["c"]


def test_target_status_rules() -> None:
    dep = deployment()
    assert target_status("Deployment", dep, []).ready
    assert not target_status("Deployment", dep, [], pods_ready=False).ready, "the stricter pod verdict counts"
    stale = {**dep, "status": {**dep["status"], "observedGeneration": 1}}
    assert not target_status("Deployment", stale, []).ready
    stuck = {**dep, "status": {"conditions": [{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]}}
    assert target_status("Deployment", stuck, []).failure == "ProgressDeadlineExceeded"
    job_failed = {"status": {"conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]}}
    assert target_status("Job", job_failed, []).failure == "JobFailed"
    retrying = target_status("Job", {"spec": {"backoffLimit": 4}, "status": {"failed": 1}}, [])
    assert (retrying.ready, retrying.failure) == (False, None)
    assert "1 failed pod(s) (backoffLimit 4)" in retrying.detail
    assert target_status("Job", {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}, []).ready
    assert target_status("Pod", {}, [{"status": {"phase": "Succeeded"}}], pods_ready=True).ready
    rs = {"metadata": {"generation": 1}, "spec": {"replicas": 2}, "status": {"observedGeneration": 1,
                                                                          "readyReplicas": 2}}
    assert target_status("ReplicaSet", rs, []).ready


def test_label_selectors_with_expressions() -> None:
    sel = {"matchLabels": {"app": "a"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["web", "api"]},
        {"key": "canary", "operator": "DoesNotExist"}, {"key": "env", "operator": "NotIn", "values": ["dev"]},
        {"key": "team", "operator": "Exists"}]}
    assert label_selector(sel) == "app=a,tier in (api,web),!canary,env notin (dev),team"
    assert selector_matches(sel, {"app": "a", "tier": "web", "team": "x"})
    assert not selector_matches(sel, {"app": "a", "tier": "web", "team": "x", "canary": "1"})
    assert not selector_matches(sel, {"app": "a", "tier": "db", "team": "x"})
    with pytest.raises(KtiError, match="empty label selector"):
        label_selector({})
    assert not selector_matches({}, {"app": "a"}), "an empty selector never matches everything"
    only_expr = {"spec": {"selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["x"]}]}}}
    assert selector_for("Deployment", only_expr) == "app in (x)"


def test_one_table_knows_every_workloads_pod_spec() -> None:
    cron = {"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": []}}}}}}
    assert pod_spec(cron) == {"containers": []}
    assert pod_spec({"kind": "ReplicaSet", "spec": {"template": {"spec": {"x": 1}}}}) == {"x": 1}
    assert pod_spec({"kind": "ConfigMap"}) is None


def test_error_never_pull_hint_lists_node_images() -> None:
    problem = PodProblem("ErrImageNeverPull", "p-1", "ns", "app", "localhost/app:s-new", "", "kind-control-plane")
    err = PodStartError(Target("Deployment", "app", "ns"), problem, events=["Warning ErrImageNeverPull: x"],
                        node_images=["localhost/app:s-old", "registry.k8s.io/pause:3.10"], seconds=2.5)
    text = str(err)
    assert "ErrImageNeverPull after 2.5 s" in text
    assert "Hint:" in text
    assert "localhost/app:s-old" in text
    assert "pause" not in text.split("Hint:")[1]


def test_a_timeout_carries_the_last_reason_events_and_logs() -> None:
    err = ReadinessTimeout({Target("Deployment", "web", "ns"): "0/1 ready (CreateContainerConfigError: no secret)"},
                           8.3, events=["Pod/web-1 Warning Failed: secret x not found"], logs="boom")
    text = str(err)
    assert "CreateContainerConfigError: no secret" in text
    assert "secret x not found" in text
    assert "boom" in text
    assert "Hint:" in text


def test_an_object_older_than_the_applied_one_is_not_judged() -> None:
    from kubetest_infra.wait import _behind

    live = {"metadata": {"uid": "u1", "generation": 3}}
    assert _behind(live, None) == ""
    assert _behind(live, ("u1", 3)) == ""
    assert "generation 4" in _behind(live, ("u1", 4))
    assert "older one with the same name" in _behind(live, ("u2", 1)), "a replaced Job has a new uid"
