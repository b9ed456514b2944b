"""DataStorage deployed from its Helm chart: the API works, the pods run the image this run built, and
the migrations hook Job completed before the release's Deployment was applied."""

from __future__ import annotations

import json
import urllib.request
import uuid
from typing import Any

from kubernetes import client


def request(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:  # loopback NodePort only
        return resp.status, json.loads(resp.read() or b"null")


def live_pods(env: Any, selector: str) -> list[Any]:
    pods = client.CoreV1Api(env.api_client()).list_namespaced_pod(env.namespace, label_selector=selector).items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


def test_events_are_written_and_read_back(kti_service_url: Any) -> None:
    cid = f"helm-{uuid.uuid4()}"
    status, body = request(kti_service_url("datastorage", "/api/v1/audit/events"), "POST",
                           {"event_type": "chart.test", "event_category": "e2e", "event_action": "write",
                            "event_outcome": "success", "correlation_id": cid, "event_data": {}})
    assert status == 201, body
    status, body = request(kti_service_url("datastorage", f"/api/v1/audit/events?correlation_id={cid}"))
    assert status == 200
    assert [e["correlation_id"] for e in body["data"]] == [cid]


def test_the_pods_run_the_image_this_run_built(kti_env: Any, kti_images: dict[str, str]) -> None:
    built_id = kti_env.image_ids["datastorage"]
    pods = live_pods(kti_env, "app=datastorage")
    assert pods
    for pod in pods:
        (status,) = pod.status.container_statuses
        assert status.image == kti_images["datastorage"] or status.image.endswith(kti_images["datastorage"])
        assert status.image_id.endswith(built_id.split(":", 1)[1]), (status.image_id, built_id)
        assert pod.spec.containers[0].image_pull_policy == "Never"


def test_the_migrations_hook_completed_before_the_deployment_was_applied(kti_env: Any) -> None:
    api = kti_env.api_client()
    job = client.BatchV1Api(api).read_namespaced_job("datastorage-migrations", kti_env.namespace)
    assert job.status.succeeded == 1
    assert job.metadata.annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    deployment = client.AppsV1Api(api).read_namespaced_deployment("datastorage", kti_env.namespace)
    assert job.status.completion_time <= deployment.metadata.creation_timestamp, (
        job.status.completion_time, deployment.metadata.creation_timestamp)
    for pod in live_pods(kti_env, "app=datastorage"):
        assert job.status.completion_time <= pod.metadata.creation_timestamp
    record = client.CoreV1Api(api).read_namespaced_config_map("kti-hooks-datastorage", kti_env.namespace)
    assert set(record.data) == {"ConfigMap.datastorage-migrations", "Job.datastorage-migrations"}
