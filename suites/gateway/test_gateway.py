"""End-to-end tests of Gateway and the DataStorage this suite built for itself."""

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


def test_a_signal_is_accepted_then_deduplicated_and_both_are_audited(kti_service_url: Any) -> None:
    signal = {"alertname": f"HighCPU-{uuid.uuid4().hex[:8]}", "namespace": "prod", "severity": "critical"}
    url = kti_service_url("gateway", "/api/v1/signals")
    status, first = request(url, "POST", signal)
    assert status == 201, first
    assert first["status"] == "accepted"
    status, again = request(url, "POST", signal)
    assert status == 202, again
    assert (again["status"], again["correlation_id"]) == ("deduplicated", first["correlation_id"])
    status, audit = request(kti_service_url("gateway", f"/api/v1/signals/{first['correlation_id']}/audit"))
    assert status == 200, audit
    assert sorted(e["event_type"] for e in audit["data"]) == ["gateway.signal.deduplicated",
                                                              "gateway.signal.received"]
    assert {e["resource_id"] for e in audit["data"]} == {first["fingerprint"]}


def test_invalid_signals_are_refused(kti_service_url: Any) -> None:
    url = kti_service_url("gateway", "/api/v1/signals")
    assert request(url, "POST", {"alertname": "x", "namespace": "n", "severity": "loud"})[0] == 400
    assert request(url, "POST", {"alertname": "x"})[0] == 400


def test_this_suite_built_and_runs_its_own_datastorage(kti_env: Any, kti_images: dict[str, str]) -> None:
    # DD-TEST-001: the consumer's name is in the tag, so the notification suite's DataStorage never collides
    assert kti_images["datastorage"].endswith(f"/datastorage:gateway-{kti_env.run_id}")
    assert kti_images["gateway"].endswith(f"/gateway:gateway-{kti_env.run_id}")
    for selector in ("app=datastorage", "app=gateway"):
        running = verify_running_images(kti_env, selector)
        assert all(r.ok and r.image is not None for r in running), running
