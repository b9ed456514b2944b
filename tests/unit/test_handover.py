"""Traffic hand-over checks on recorded data (EndpointSlices, and kube-proxy rules from a lab node)."""

from __future__ import annotations

from pathlib import Path

from kubetest_infra.handover import dataplane_problem, endpoint_problem, parse_iptables, selects

# `iptables-save -t nat` of a lab node (kube-proxy v1.33.1, iptables mode): Deployment web with two pods
# 10.244.0.5/.6 behind Service default/web (port "http", NodePort) and default/plain (unnamed port).
RECORDED = (Path(__file__).parent / "data" / "kube-proxy-iptables-nat.txt").read_text()


def test_recorded_rules_map_each_service_port_to_its_endpoints() -> None:
    routes = parse_iptables(RECORDED)
    assert routes["default/web:http"] == {"10.244.0.5:8080", "10.244.0.6:8080"}
    assert routes["default/plain"] == {"10.244.0.5:8080", "10.244.0.6:8080"}
    assert routes["default/kubernetes:https"] == {"172.18.0.6:6443"}
    assert routes["kube-system/kube-dns:dns"]


def test_dataplane_matches_only_the_exact_endpoints() -> None:
    routes = parse_iptables(RECORDED)
    assert dataplane_problem("n1", routes, "default", "web", {"10.244.0.5", "10.244.0.6"}) is None
    stale = dataplane_problem("n1", routes, "default", "web", {"10.244.0.6"})
    assert stale is not None
    assert "not current: 10.244.0.5" in stale
    missing = dataplane_problem("n1", routes, "default", "web", {"10.244.0.5", "10.244.0.6", "10.244.0.9"})
    assert missing is not None
    assert "missing: 10.244.0.9" in missing
    assert "no kube-proxy rules" in (dataplane_problem("n1", routes, "default", "absent", {"1.2.3.4"}) or "")


def eps(*items: tuple[str, str, bool]) -> list[dict]:  # type: ignore[type-arg]
    return [{"endpoints": [{"addresses": [ip], "targetRef": {"kind": "Pod", "name": pod},
                            "conditions": {"ready": ready, "serving": True, "terminating": not ready}}
                           for pod, ip, ready in items]}]


def test_endpoint_slices_must_list_only_current_pods_as_ready() -> None:
    current, old = {"new-1"}, {"old-1"}
    assert endpoint_problem("web", eps(("new-1", "10.0.0.2", True)), current, old) is None
    terminating_old = eps(("new-1", "10.0.0.2", True), ("old-1", "10.0.0.1", False))
    assert endpoint_problem("web", terminating_old, current, old) is None, \
        "a terminating old endpoint is not used while a ready one exists (KEP-1669)"
    ready_old = endpoint_problem("web", eps(("new-1", "10.0.0.2", True), ("old-1", "10.0.0.1", True)), current, old)
    assert ready_old is not None
    assert "old-1" in ready_old
    not_yet = endpoint_problem("web", eps(("old-1", "10.0.0.1", False)), current, old)
    assert not_yet is not None
    assert "new-1" in not_yet


def test_service_selection() -> None:
    assert selects({"app": "web"}, {"app": "web", "pod-template-hash": "x"})
    assert not selects({"app": "web"}, {"app": "db"})
    assert not selects({}, {"app": "web"}), "a Service without selector has hand-made endpoints"
