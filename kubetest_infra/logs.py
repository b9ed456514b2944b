"""``kti logs``: the logs of a suite service's pods, found through the same workload table as the waiter."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from kubetest_infra.errors import ConfigError
from kubetest_infra.sources import load
from kubetest_infra.state import Environment
from kubetest_infra.suite import Suite
from kubetest_infra.workloads import WORKLOADS, read_workload, selector_for


def service_logs(env: Environment, suite: Suite, service: str, tail: int = 200) -> str:
    """Logs of the pods of one service's workloads (current containers)."""
    if service not in suite.services:
        raise ConfigError(f"unknown service {service!r} in suite {suite.name}",
                          hint=f"services: {', '.join(sorted(suite.services))}")
    api = env.api_client()
    core: Any = client.CoreV1Api(api)
    objs = load(suite, suite.services[service], env.images).objects  # a chart's hook Jobs included
    out: list[str] = []
    for obj in objs:
        kind, name = str(obj["kind"]), str(obj["metadata"]["name"])
        if kind not in WORKLOADS or kind == "CronJob":
            continue
        live = read_workload(api, kind, name, env.namespace)
        if kind == "Pod":
            pods = [core.read_namespaced_pod(name, env.namespace, _request_timeout=30)]
        else:
            pods = core.list_namespaced_pod(env.namespace, label_selector=selector_for(kind, live),
                                            _request_timeout=30).items
        for pod in pods:
            for c in pod.spec.containers:
                text = core.read_namespaced_pod_log(pod.metadata.name, env.namespace, container=c.name,
                                                    tail_lines=tail, _request_timeout=30)
                out.append(f"==> {kind}/{name} pod {pod.metadata.name} container {c.name} <==\n{text.rstrip()}")
    return "\n".join(out) if out else f"no pods for service {service}"
