"""End-to-end tests of DataStorage, through its NodePort, on the environment kti_env brought up."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from datetime import datetime
from typing import Any

from kubernetes import client


def request(url: str, method: str = "GET", body: Any = None) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # loopback NodePort only
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def live_pods(core: Any, namespace: str, selector: str) -> list[Any]:
    """Pods of the current rollout (pods of a replaced ReplicaSet may still be terminating)."""
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


def event(correlation_id: str, **overrides: Any) -> dict[str, Any]:
    return {"event_type": "gateway.signal.received", "event_category": "gateway", "event_action": "received",
            "event_outcome": "success", "correlation_id": correlation_id, "event_data": {"signal": "cpu-high"},
            **overrides}


def test_write_and_query_events_by_correlation_id(kti_service_url: Any) -> None:
    cid = f"rr-{uuid.uuid4()}"
    for outcome in ("success", "failure", "pending"):
        status, _, body = request(kti_service_url("datastorage", "/api/v1/audit/events"), "POST",
                                  event(cid, event_outcome=outcome))
        assert status == 201, body
        assert body["status"] == "stored"
        uuid.UUID(body["event_id"])
    status, _, body = request(kti_service_url("datastorage", f"/api/v1/audit/events?correlation_id={cid}"))
    assert status == 200
    assert sorted(e["event_outcome"] for e in body["data"]) == ["failure", "pending", "success"]
    assert all(e["correlation_id"] == cid for e in body["data"])


def test_query_by_event_type(kti_service_url: Any) -> None:
    cid = f"rr-{uuid.uuid4()}"
    kind = f"test.type.{uuid.uuid4().hex[:8]}"
    request(kti_service_url("datastorage", "/api/v1/audit/events"), "POST", event(cid, event_type=kind))
    _, _, body = request(kti_service_url("datastorage", f"/api/v1/audit/events?event_type={kind}"))
    assert [e["event_type"] for e in body["data"]] == [kind]


def test_validation_errors_are_rfc7807(kti_service_url: Any) -> None:
    url = kti_service_url("datastorage", "/api/v1/audit/events")
    for bad, fragment in ((event("c", event_outcome="maybe"), "event_outcome must be one of"),
                          ({"event_type": "x"}, "missing or empty required field"),
                          (["not", "an", "object"], "JSON object")):
        status, headers, body = request(url, "POST", bad)
        assert status == 400
        assert headers["Content-Type"] == "application/problem+json"
        assert body["status"] == 400
        assert body["title"] == "Validation Error"
        assert body["type"].endswith("/validation-error")
        assert fragment in body["detail"]
        assert body["instance"] == "/api/v1/audit/events"


def test_health_and_readiness(kti_service_url: Any) -> None:
    assert request(kti_service_url("datastorage", "/health"))[0] == 200
    status, _, body = request(kti_service_url("datastorage", "/readyz"))
    assert status == 200
    assert body["status"] == "ready"


def test_migrations_ran_before_the_service_became_ready(kti_env: Any, kti_service_url: Any) -> None:
    _, _, body = request(kti_service_url("datastorage", "/readyz"))
    migrated = datetime.fromisoformat(body["migrations_applied_at"])
    core = client.CoreV1Api(kti_env.api_client())
    job = client.BatchV1Api(kti_env.api_client()).read_namespaced_job("datastorage-migrations", kti_env.namespace)
    assert job.status.succeeded == 1
    pods = live_pods(core, kti_env.namespace, "app=datastorage")
    assert pods
    for pod in pods:
        ready = next(c for c in pod.status.conditions if c.type == "Ready")
        assert ready.status == "True"
        assert migrated <= ready.last_transition_time, (migrated, ready.last_transition_time)


def test_the_running_images_are_the_ones_this_run_built(kti_env: Any, kti_images: dict[str, str]) -> None:
    core = client.CoreV1Api(kti_env.api_client())
    pods = live_pods(core, kti_env.namespace, "app=datastorage")
    assert pods
    for pod in pods:
        assert pod.spec.containers[0].image == kti_images["datastorage"]
        assert pod.spec.containers[0].image_pull_policy == "Never"
    assert kti_images["datastorage"].endswith(f":datastorage-{kti_env.run_id}")


def test_each_test_gets_its_own_namespace(kti_namespace: str, kti_env: Any) -> None:
    ns = client.CoreV1Api(kti_env.api_client()).read_namespace(kti_namespace)
    assert ns.metadata.labels["kubetest-infra/run"] == kti_env.run_id
