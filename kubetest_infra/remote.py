"""A cluster the library did not create, reached by a kubeconfig (and a context).

The library never creates or deletes such a cluster: :meth:`RemoteCluster.connect` checks that the
file and the context exist and that the API answers, and returns a :class:`~.cluster.Cluster` with
no nodes (images reach it through a registry, :mod:`.delivery`). A run on it deploys into a namespace
of its own, :func:`run_namespace` (``{suite}-{run_id}``), which it creates, labels and removes; ledger
items of such a namespace carry ``kubeconfig:PATH[#CONTEXT]`` as their ``where`` (:func:`where`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from kubetest_infra.cluster import Cluster
from kubetest_infra.errors import ConfigError
from kubetest_infra.kube import api_client
from kubetest_infra.state import Owner

WHERE_PREFIX = "kubeconfig:"
RUN_LABEL = "kubetest-infra/run"
SUITE_LABEL = "kubetest-infra/suite"
OWNER_ANNOTATION = "kubetest-infra/owner"  # the run's process (pid, start, host): kti gc judges by it
MAX_NAMESPACE = 63


@dataclass(frozen=True)
class RemoteCluster:
    kubeconfig: Path
    context: str | None = None

    @property
    def where(self) -> str:
        return where(self.kubeconfig, self.context)

    def check(self) -> None:
        """The kubeconfig is a readable file naming ``context`` (typed errors, nothing contacted)."""
        try:
            data = yaml.safe_load(self.kubeconfig.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read kubeconfig {self.kubeconfig}: {exc}",
                              hint="pass --kubeconfig FILE, a readable kubeconfig of the cluster to use") from None
        names = [c.get("name") for c in data.get("contexts") or [] if isinstance(c, dict)]
        if self.context is not None and self.context not in names:
            raise ConfigError(f"kubeconfig {self.kubeconfig} has no context {self.context!r}",
                              hint=f"contexts there: {', '.join(map(str, names)) or 'none'}")
        if self.context is None and not data.get("current-context"):
            raise ConfigError(f"kubeconfig {self.kubeconfig} sets no current-context",
                              hint="pass --context NAME")

    def connect(self) -> Cluster:
        """Check the kubeconfig and that the API server answers; the cluster as the graph knows it."""
        started = time.monotonic()
        self.check()
        api = api_client(self.kubeconfig, self.context)
        try:
            client.VersionApi(api).get_code(_request_timeout=15)
        except Exception as exc:
            raise ConfigError(f"the cluster of {self.kubeconfig} does not answer: {type(exc).__name__}",
                              hint="check the kubeconfig, the context and the network") from None
        return Cluster(self.context or "kubeconfig", self.kubeconfig, (), "kubeconfig", True,
                       time.monotonic() - started, context=self.context)

    def api(self) -> Any:
        return api_client(self.kubeconfig, self.context)


def where(kubeconfig: Path | str, context: str | None) -> str:
    return f"{WHERE_PREFIX}{kubeconfig}" + (f"#{context}" if context else "")


def from_where(text: str) -> RemoteCluster | None:
    """The remote cluster a ledger item's ``where`` names, or None (a Kind cluster's name)."""
    if not text.startswith(WHERE_PREFIX):
        return None
    path, _, context = text[len(WHERE_PREFIX):].partition("#")
    return RemoteCluster(Path(path), context or None)


def run_namespace(suite: str, run_id: str, template: str | None = None) -> str:
    """The run's own namespace: ``template`` (``{suite}``, ``{run_id}`` filled in) or ``{suite}-{run_id}``."""
    name = (template or "{suite}-{run_id}").format(suite=suite, run_id=run_id).lower()
    name = name.replace("_", "-").replace(".", "-")
    if len(name) > MAX_NAMESPACE:
        raise ConfigError(f"namespace {name!r} is longer than {MAX_NAMESPACE} characters",
                          hint="use a shorter run id or --namespace template")
    return name


def namespace_metadata(name: str, suite: str, run_id: str, owner: Owner) -> dict[str, object]:
    """A run's namespace: labelled with suite and run, annotated with its owning process."""
    return {"name": name, "labels": {SUITE_LABEL: suite, RUN_LABEL: run_id},
            "annotations": {OWNER_ANNOTATION: json.dumps(owner.to_json(), sort_keys=True)}}


@dataclass(frozen=True)
class RunNamespace:
    name: str
    run_id: str
    created: datetime
    owner: Owner | None


def stale(namespaces: Iterable[RunNamespace], older_than: timedelta, now: datetime) -> list[str]:
    """Namespaces of dead runs: created before ``now - older_than`` and owned by a process of this machine
    that is gone. A namespace without an owner, or owned on another machine (``Owner.alive`` cannot tell),
    is never chosen: its run's own teardown removes it."""
    cutoff = now - older_than
    return sorted(n.name for n in namespaces if n.created < cutoff and n.owner is not None and not n.owner.alive())


def run_namespaces(api: object) -> list[RunNamespace]:
    """Every namespace of the cluster labelled with a run (``kubetest-infra/run``)."""
    core: object = client.CoreV1Api(api)
    out = []
    for ns in core.list_namespace(label_selector=RUN_LABEL, _request_timeout=30).items:  # type: ignore[attr-defined]
        meta = ns.metadata
        if ns.status is not None and ns.status.phase == "Terminating":
            continue  # already going
        owner = None
        with contextlib.suppress(KeyError, ValueError, TypeError):
            owner = Owner.from_json(json.loads((meta.annotations or {})[OWNER_ANNOTATION]))
        out.append(RunNamespace(meta.name, (meta.labels or {}).get(RUN_LABEL, ""), meta.creation_timestamp, owner))
    return out


def gc_namespaces(remote: RemoteCluster, older_than: timedelta, now: datetime, *, dry_run: bool = False) -> list[str]:
    """Remove (or list) the namespaces :func:`stale` chooses on ``remote``; never anything else."""
    api = remote.api()
    doomed = stale(run_namespaces(api), older_than, now)
    if not dry_run:
        core: object = client.CoreV1Api(api)
        for name in doomed:
            try:
                core.delete_namespace(name, _request_timeout=30)  # type: ignore[attr-defined]
            except client.exceptions.ApiException as exc:
                if exc.status != 404:
                    raise
    return doomed
