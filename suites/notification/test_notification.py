"""End-to-end tests of Notification and the DataStorage this suite built for itself."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from typing import Any

from kubetest_infra.verify import verify_running_images


def request(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # loopback NodePort only
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_a_sent_notification_is_recorded_in_datastorage(kti_service_url: Any) -> None:
    cid = f"rr-{uuid.uuid4()}"
    status, sent = request(kti_service_url("notification", "/api/v1/notifications"), "POST",
                           {"recipient": "oncall@example.com", "channel": "email", "message": "disk full",
                            "correlation_id": cid})
    assert status == 201, sent
    assert sent["status"] == "sent"
    status, read = request(kti_service_url("notification", f"/api/v1/notifications/{sent['notification_id']}"))
    assert status == 200, read
    assert [(e["event_type"], e["correlation_id"], e["event_id"]) for e in read["audit"]] == [
        ("notification.message.sent", cid, sent["audit_event_id"])]
    assert read["audit"][0]["event_data"] == {"channel": "email", "recipient": "oncall@example.com"}


def test_invalid_requests_are_refused(kti_service_url: Any) -> None:
    url = kti_service_url("notification", "/api/v1/notifications")
    bad_channel = {"recipient": "a", "channel": "pigeon", "message": "m", "correlation_id": "c"}
    assert request(url, "POST", bad_channel)[0] == 400
    assert request(url, "POST", ["not", "an", "object"])[0] == 400
    assert request(kti_service_url("notification", "/api/v1/notifications/unknown"))[0] == 404


def test_this_suite_built_and_runs_its_own_datastorage(kti_env: Any, kti_images: dict[str, str]) -> None:
    # DD-TEST-001: the consumer's name is in the tag, so the gateway suite's DataStorage never collides
    assert kti_images["datastorage"].endswith(f"/datastorage:notification-{kti_env.run_id}")
    assert kti_images["notification"].endswith(f"/notification:notification-{kti_env.run_id}")
    for selector in ("app=datastorage", "app=notification"):
        running = verify_running_images(kti_env, selector)
        assert all(r.ok and r.image is not None for r in running), running
