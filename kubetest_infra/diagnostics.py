"""Diagnostics bundle: everything needed to see why a workload did not start, in one directory.

Layout::

    <dir>/summary.txt                 what failed and why
    <dir>/events.txt                  namespace events, oldest first
    <dir>/objects/<Kind>-<name>.yaml  the workloads waited for
    <dir>/pods/<pod>.yaml             pod objects (status included)
    <dir>/pods/<pod>.describe.txt     conditions, container states and the pod's events
    <dir>/logs/<pod>.<container>[.previous].log
    <dir>/nodes/<node>.images.txt     images in each node's containerd
    <dir>/kind-logs/                  ``kind export logs`` (when enabled)

Collection is best effort: a failing piece is noted in ``errors.txt`` and never hides the failure
being diagnosed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from kubetest_infra.wait import Target, read_target

NodeImages = Callable[[str], Sequence[str]]


def collect(
    api_client: Any,
    targets: Sequence[Target],
    reason: str,
    out_dir: Path,
    *,
    nodes: Sequence[str] = (),
    node_images: NodeImages | None = None,
    kind_export: Callable[[Path], None] | None = None,
) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = out_dir / f"{stamp}-{reason}"
    for sub in ("objects", "pods", "logs", "nodes"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    core = client.CoreV1Api(api_client)
    ser = api_client.sanitize_for_serialization

    def attempt(what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as exc:  # best effort: note it and go on
            errors.append(f"{what}: {type(exc).__name__}: {exc}")

    (root / "summary.txt").write_text(f"reason: {reason}\ntargets: {', '.join(map(str, targets))}\n")
    for t in targets:
        attempt(f"read {t}", partial(_read_dump, api_client, t, root / "objects"))
    for ns in sorted({t.namespace for t in targets}):
        attempt(f"events {ns}", partial(_events, core, ns, root / "events.txt"))
        attempt(f"pods {ns}", partial(_pods, core, ser, ns, root, errors))
    if node_images is not None:
        for node in nodes:
            attempt(f"images on {node}", partial(_node_images, node_images, node, root / "nodes"))
    if kind_export is not None:
        attempt("kind export logs", lambda: kind_export(root / "kind-logs"))
    if errors:
        (root / "errors.txt").write_text("\n".join(errors) + "\n")
    return root


def _read_dump(api_client: Any, t: Target, out: Path) -> None:
    _dump(out / f"{t.kind}-{t.name}.yaml", read_target(api_client, t))


def _node_images(node_images: NodeImages, node: str, out: Path) -> None:
    (out / f"{node}.images.txt").write_text("\n".join(node_images(node)) + "\n")


def _dump(path: Path, obj: Any) -> None:
    path.write_text(yaml.safe_dump(obj, sort_keys=False))


def _event_line(e: Any) -> str:
    when = e.last_timestamp or e.event_time or e.metadata.creation_timestamp
    obj = e.involved_object
    return f"{when} {e.type} {obj.kind}/{obj.name} {e.reason}: {e.message}"


def _events(core: Any, ns: str, path: Path) -> None:
    items = core.list_namespaced_event(ns).items
    items.sort(key=lambda e: str(e.last_timestamp or e.event_time or e.metadata.creation_timestamp))
    with path.open("a") as f:
        f.writelines(_event_line(e) + "\n" for e in items)


def _pods(core: Any, ser: Callable[[Any], Any], ns: str, root: Path, errors: list[str]) -> None:
    for pod in core.list_namespaced_pod(ns).items:
        name = pod.metadata.name
        data = ser(pod)
        _dump(root / "pods" / f"{name}.yaml", data)
        lines = [f"Pod {ns}/{name} on {pod.spec.node_name or '-'}: phase {pod.status.phase}"]
        for c in pod.status.conditions or []:
            lines.append(f"  condition {c.type}={c.status} {c.reason or ''} {c.message or ''}".rstrip())
        statuses = (pod.status.init_container_statuses or []) + (pod.status.container_statuses or [])
        for cs in statuses:
            lines.append(f"  container {cs.name}: image {cs.image} ready={cs.ready} restarts={cs.restart_count}")
            lines.append(f"    state: {ser(cs.state)}")
            if cs.last_state and (cs.last_state.terminated or cs.last_state.waiting):
                lines.append(f"    last state: {ser(cs.last_state)}")
        evs = core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
        lines.append("  events:")
        lines.extend(f"    {_event_line(e)}" for e in evs)
        (root / "pods" / f"{name}.describe.txt").write_text("\n".join(lines) + "\n")
        for c in (pod.spec.init_containers or []) + (pod.spec.containers or []):
            for previous in (False, True):
                try:
                    text = core.read_namespaced_pod_log(name, ns, container=c.name, previous=previous,
                                                        tail_lines=500)
                except Exception as exc:  # not started / no previous run
                    if not previous:
                        errors.append(f"log {name}/{c.name}: {getattr(exc, 'reason', exc)}")
                    continue
                suffix = ".previous" if previous else ""
                (root / "logs" / f"{name}.{c.name}{suffix}.log").write_text(text or "")
