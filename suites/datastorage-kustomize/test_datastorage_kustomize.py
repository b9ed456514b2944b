"""DataStorage deployed from a Kustomize overlay of manifests/datastorage: the overlay's changes are
live, the API works, the pods run the image this run built, the migrations ran."""

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
    cid = f"kustomize-{uuid.uuid4()}"
    status, body = request(kti_service_url("datastorage", "/api/v1/audit/events"), "POST",
                           {"event_type": "overlay.test", "event_category": "e2e", "event_action": "write",
                            "event_outcome": "success", "correlation_id": cid, "event_data": {}})
    assert status == 201, body
    status, body = request(kti_service_url("datastorage", f"/api/v1/audit/events?correlation_id={cid}"))
    assert status == 200
    assert [e["correlation_id"] for e in body["data"]] == [cid]


def test_the_overlay_is_what_runs(kti_env: Any) -> None:
    api = kti_env.api_client()
    service = client.CoreV1Api(api).read_namespaced_service("datastorage", kti_env.namespace)
    assert service.spec.ports[0].node_port == 30463, "the overlay's NodePort patch"
    job = client.BatchV1Api(api).read_namespaced_job("datastorage-migrations", kti_env.namespace)
    assert job.metadata.labels["app.kubernetes.io/part-of"] == "datastorage-e2e"
    assert {"name": "MIGRATE_TIMEOUT", "value": "180"} in [
        {"name": e.name, "value": e.value} for e in job.spec.template.spec.containers[0].env]
    assert job.status.succeeded == 1


def test_the_pods_run_the_image_this_run_built(kti_env: Any, kti_images: dict[str, str], kti_service_url: Any) -> None:
    built_id = kti_env.image_ids["datastorage"]
    pods = live_pods(kti_env, "app=datastorage")
    assert pods
    for pod in pods:
        (status,) = pod.status.container_statuses
        assert pod.spec.containers[0].image == kti_images["datastorage"]
        assert status.image_id.endswith(built_id.split(":", 1)[1]), (status.image_id, built_id)
    _, body = request(kti_service_url("datastorage", "/readyz"))
    assert body["status"] == "ready" and body["migrations_applied_at"]
