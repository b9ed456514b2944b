"""``kti status``: clusters and images of ours, with run ids and ages."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import datetime, timezone

from kubetest_infra.build import LABEL_CONSUMER, LABEL_RUN, LABEL_SERVICE
from kubetest_infra.cleanup import last_used, managed_images
from kubetest_infra.cluster import KindClusters
from kubetest_infra.engine import Engine
from kubetest_infra.errors import KtiError
from kubetest_infra.session import describe_owner
from kubetest_infra.state import EnvironmentStore, StateError, default_state_dir


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def report(engine: Engine) -> str:
    lines = ["clusters (created by kubetest-infra):"]
    clusters = KindClusters(engine)
    try:
        running = set(clusters._kind("get", "clusters", timeout=60).split())
    except KtiError as exc:
        running = set()
        lines.append(f"  (kind unavailable: {exc.message})")
    base = default_state_dir() / "clusters"
    for cdir in sorted(base.glob("*")) if base.is_dir() else []:
        try:
            state = clusters.record(cdir.name) or {}
            rec = EnvironmentStore(clusters.state_dir, cdir.name).read()
        except StateError as exc:
            lines.append(f"  {cdir.name:<24} unreadable state: {exc.message}")
            continue
        phase = state.get("phase", "ready")
        up = "creating" if phase == "creating" and not clusters.interrupted(cdir.name) else \
            "interrupted" if phase == "creating" else ("running" if cdir.name in running else "gone")
        created = float(state.get("created") or time.time())
        run = rec.env.run_id if rec else "-"
        lines.append(f"  {cdir.name:<24} {up:<11} run {run:<14} age {_age(max(0.0, time.time() - created)):<5} "
                     f"kubeconfig {cdir / 'kubeconfig'}")
        if rec is not None:
            store = EnvironmentStore(clusters.state_dir, cdir.name)
            leases = store.live_leases()
            lines.append(f"    suite {rec.env.suite}: {describe_owner(rec)}; owns {len(rec.owned)} item(s)"
                         + (f"; attached: {'; '.join(lease.owner.describe() for lease in leases)}" if leases else ""))
    if len(lines) == 1:
        lines.append("  none")
    lines.append("images (labelled io.kubetest-infra.managed):")
    by_run: dict[str, list[str]] = defaultdict(list)
    now = datetime.now(timezone.utc)
    for img in managed_images(engine):
        when = last_used(img)
        age = _age(max(0.0, (now - when).total_seconds())) if when else "?"
        for ref in img.repo_tags or ("<untagged>",):
            by_run[img.labels.get(LABEL_RUN, "?")].append(
                f"{ref} (service {img.labels.get(LABEL_SERVICE, '?')}, suite {img.labels.get(LABEL_CONSUMER, '?')}, "
                f"age {age}, {img.size / 1e6:.0f} MB)")
    for run, refs in sorted(by_run.items()):
        lines.append(f"  built by run {run}:")
        lines.extend(f"    {r}" for r in sorted(refs))
    if not by_run:
        lines.append("  none")
    return "\n".join(lines)
