"""Pure pieces of the Kind pipeline: ordering, cluster config, pod classification, readiness."""

from __future__ import annotations

import pytest

from kubetest_infra.apply import sort_for_apply, sort_for_delete
from kubetest_infra.cluster import ClusterConfig, Mount, PortCollisionError, PortMapping
from kubetest_infra.errors import ConfigError


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
