"""A cluster the library did not create, reached by a kubeconfig (and a context).

The library never creates or deletes such a cluster: :meth:`RemoteCluster.connect` checks that the
file and the context exist and that the API answers, and returns a :class:`~.cluster.Cluster` with
no nodes (images reach it through a registry, :mod:`.delivery`). A run on it deploys into a namespace
of its own, :func:`run_namespace` (``{suite}-{run_id}``), which it creates, labels and removes; ledger
items of such a namespace carry ``kubeconfig:PATH[#CONTEXT]`` as their ``where`` (:func:`where`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from kubetest_infra.cluster import Cluster
from kubetest_infra.errors import ConfigError
from kubetest_infra.kube import api_client

WHERE_PREFIX = "kubeconfig:"
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
