"""Pure pieces of the Kind pipeline: ordering, cluster config, pod classification, readiness."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from kubetest_infra.apply import sort_for_apply, sort_for_delete
from kubetest_infra.cluster import ClusterConfig, Mount, PortCollisionError, PortMapping
from kubetest_infra.errors import ConfigError
from kubetest_infra.wait import PodProblem, PodStartError, Target, WaitPolicy, classify_pod, target_status

NOW = datetime(2026, 11, 22, 4, 0, tzinfo=timezone.utc)


def obj(kind: str, name: str = "x") -> dict:  # type: ignore[type-arg]
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}


def test_apply_order_and_reverse_for_delete() -> None:
    objs = [obj("Deployment"), obj("ValidatingWebhookConfiguration"), obj("Service"), obj("Widget"),
            obj("ConfigMap"), obj("Namespace"), obj("CustomResourceDefinition"), obj("RoleBinding"), obj("Job")]
    kinds = [o["kind"] for o in sort_for_apply(objs)]
    assert kinds == ["CustomResourceDefinition", "Namespace", "ConfigMap", "RoleBinding", "Service", "Deployment",
                     "Job", "Widget", "ValidatingWebhookConfiguration"]
    deleted = [o["kind"] for o in sort_for_delete(objs)]
    assert deleted[0] == "ValidatingWebhookConfiguration"
    assert deleted[-1] == "CustomResourceDefinition"


def test_cluster_config_renders_kind_config_and_fingerprint() -> None:
    cfg = ClusterConfig("e2e", node_image="kti-lab/node:v1", workers=1,
                        port_mappings=(PortMapping(30080, 38080),), mounts=(Mount("/src", "/dst", True),),
                        kubeadm_patches=("kind: ClusterConfiguration\n",))
    kc = cfg.kind_config()
    assert [n["role"] for n in kc["nodes"]] == ["control-plane", "worker"]
    assert kc["nodes"][0]["extraPortMappings"] == [
        {"containerPort": 30080, "hostPort": 38080, "listenAddress": "127.0.0.1", "protocol": "TCP"}]
    assert all(n["image"] == "kti-lab/node:v1" for n in kc["nodes"])
    assert cfg.fingerprint() == ClusterConfig(**{**cfg.__dict__}).fingerprint()
    assert cfg.fingerprint() != ClusterConfig("e2e", node_image="kti-lab/node:v1").fingerprint()


@pytest.mark.parametrize("name", ["UPPER", "-x", "x-", "a_b", "", "x" * 60])
def test_invalid_cluster_names(name: str) -> None:
    with pytest.raises(ConfigError, match="Hint:"):
        ClusterConfig(name)


def test_same_host_port_twice_is_a_collision() -> None:
    with pytest.raises(PortCollisionError, match=r"127\.0\.0\.1:30080/TCP"):
        ClusterConfig("c", port_mappings=(PortMapping(30080, 30080), PortMapping(30081, 30080)))


def pod(container_statuses: list | None = None, phase: str = "Pending", conditions: list | None = None,  # type: ignore[type-arg]
        init: list | None = None) -> dict:  # type: ignore[type-arg]
    return {"metadata": {"name": "p-1", "namespace": "ns"},
            "spec": {"nodeName": "kind-control-plane", "containers": [{"name": "app", "image": "localhost/app:s-1"}],
                     "initContainers": [{"name": "init", "image": "busybox:1"}]},
            "status": {"phase": phase, "containerStatuses": container_statuses or [],
                       "initContainerStatuses": init or [], "conditions": conditions or []}}


def waiting(reason: str, restarts: int = 0, message: str = "") -> dict:  # type: ignore[type-arg]
    return {"name": "app", "restartCount": restarts, "state": {"waiting": {"reason": reason, "message": message}},
            "lastState": {"terminated": {"exitCode": 3, "reason": "Error"}} if restarts else {}}


@pytest.mark.parametrize("reason", ["ErrImageNeverPull", "ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                                    "CreateContainerConfigError"])
def test_immediate_failures(reason: str) -> None:
    p = classify_pod(pod([waiting(reason, message="m")]), WaitPolicy(), NOW)
    assert p is not None
    assert (p.reason, p.container, p.image, p.node) == (reason, "app", "localhost/app:s-1", "kind-control-plane")


def test_init_container_failures_are_seen() -> None:
    p = classify_pod(pod(init=[{**waiting("ErrImagePull"), "name": "init"}]), WaitPolicy(), NOW)
    assert p is not None
    assert (p.container, p.image) == ("init", "busybox:1")


def test_crashloop_waits_for_the_configured_restarts() -> None:
    assert classify_pod(pod([waiting("CrashLoopBackOff", restarts=1)]), WaitPolicy(crashloop_restarts=2), NOW) is None
    p = classify_pod(pod([waiting("CrashLoopBackOff", restarts=2)]), WaitPolicy(crashloop_restarts=2), NOW)
    assert p is not None
    assert p.reason == "CrashLoopBackOff"
    assert "exit code 3" in p.message


def test_oomkilled_from_last_state() -> None:
    cs = {"name": "app", "restartCount": 1, "state": {"running": {}},
          "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}
    p = classify_pod(pod([cs]), WaitPolicy(), NOW)
    assert p is not None
    assert p.reason == "OOMKilled"


def test_unschedulable_after_grace() -> None:
    def cond(age: float) -> list:  # type: ignore[type-arg]
        t = (NOW - timedelta(seconds=age)).isoformat().replace("+00:00", "Z")
        return [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes",
                 "lastTransitionTime": t}]

    assert classify_pod(pod(conditions=cond(5)), WaitPolicy(unschedulable_grace=30), NOW) is None
    p = classify_pod(pod(conditions=cond(31)), WaitPolicy(unschedulable_grace=30), NOW)
    assert p is not None
    assert p.reason == "Unschedulable"


def test_healthy_and_starting_pods_are_not_problems() -> None:
    assert classify_pod(pod([waiting("ContainerCreating")]), WaitPolicy(), NOW) is None
    assert classify_pod(pod([{"name": "app", "state": {"running": {}}}], phase="Running"), WaitPolicy(), NOW) is None


def test_target_status_rules() -> None:
    dep = {"metadata": {"generation": 2}, "spec": {"replicas": 2},
           "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
                      "availableReplicas": 2}}
    assert target_status("Deployment", dep, []).ready
    stale = {**dep, "status": {**dep["status"], "observedGeneration": 1}}
    assert not target_status("Deployment", stale, []).ready
    stuck = {**dep, "status": {"conditions": [{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]}}
    assert target_status("Deployment", stuck, []).failure == "ProgressDeadlineExceeded"
    job_failed = {"status": {"conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]}}
    assert target_status("Job", job_failed, []).failure == "JobFailed"
    assert target_status("Job", {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}, []).ready
    assert target_status("Pod", {}, [{"status": {"phase": "Succeeded"}}]).ready


def test_error_never_pull_hint_lists_node_images() -> None:
    problem = PodProblem("ErrImageNeverPull", "p-1", "ns", "app", "localhost/app:s-new", "", "kind-control-plane")
    err = PodStartError(Target("Deployment", "app", "ns"), problem, events=["Warning ErrImageNeverPull: x"],
                        node_images=["localhost/app:s-old", "registry.k8s.io/pause:3.10"], seconds=2.5)
    text = str(err)
    assert "ErrImageNeverPull after 2.5 s" in text
    assert "Hint:" in text
    assert "localhost/app:s-old" in text
    assert "pause" not in text.split("Hint:")[1]


def test_kind_error_summary_drops_go_stack_frames() -> None:
    from kubetest_infra.cluster import kind_error_summary

    stderr = """Creating cluster "x" ...
 ✗ Joining worker nodes 🚜
ERROR: failed to create cluster: failed to join node with kubeadm: command "docker exec x-worker kubeadm join" failed
Command Output: I1122 ... [preflight] Running pre-flight checks
error execution phase kubelet-start: timed out waiting for the condition
k8s.io/kubernetes/cmd/kubeadm/app/cmd/phases/workflow.(*Runner).Run.func1
\tk8s.io/kubernetes@v1.33.1/cmd/kubeadm/app/cmd/phases/workflow/runner.go:261
main.main
\tk8s.io/kubernetes@v1.33.1/cmd/kubeadm/kubeadm.go:25
runtime.goexit
"""
    text = kind_error_summary(stderr)
    assert "ERROR: failed to create cluster: failed to join node" in text
    assert "timed out waiting for the condition" in text
    assert ".go:" not in text
    assert "main.main" not in text
