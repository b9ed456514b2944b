"""Removing exactly what a run or an environment owns (see :mod:`kubetest_infra.state`), and nothing else.

Items go in reverse order of creation. A namespace, or an image loaded into the nodes, inside a
cluster that is itself being removed is not deleted separately (the cluster takes it along). Every
removal is bounded in time, missing items count as removed, and one failing removal never stops the
others: what could not be removed is returned, and stays recorded, so ``kti gc`` can try again.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from kubetest_infra.cluster import KindClusters
from kubetest_infra.delivery import Registry, RegistryClient
from kubetest_infra.engine import Engine
from kubetest_infra.errors import KtiError
from kubetest_infra.kube import api_client
from kubetest_infra.load import Loader
from kubetest_infra.remote import from_where
from kubetest_infra.state import Item
from kubetest_infra.tags import parse_ref

NAMESPACE_DELETE_TIMEOUT = 30  # seconds for the API call; the namespace then terminates on its own


@dataclass(frozen=True)
class Removed:
    removed: tuple[Item, ...]
    failed: tuple[tuple[Item, str], ...]
    along: tuple[Item, ...] = ()  # of ``removed``: gone with their cluster, not removed one by one

    def lines(self) -> list[str]:
        return [f"{i} (with its cluster)" if i in self.along else str(i) for i in self.removed] + \
            [f"could not remove {i}: {why}" for i, why in self.failed]


ApiFor = Callable[[str], Any]  # cluster name → kubernetes ApiClient


def remove_items(items: Sequence[Item], *, engine: Engine | None, clusters: KindClusters | None,
                 api_for: ApiFor | None = None) -> Removed:
    """Remove ``items`` (newest first). Engine/clusters may be None when no item needs them."""
    doomed_clusters = {i.name for i in items if i.kind == "cluster"}
    removed: list[Item] = []
    failed: list[tuple[Item, str]] = []
    along = [i for i in items if i.kind in ("namespace", "node-image") and i.where in doomed_clusters]
    for item in reversed(items):
        try:
            if item in along:
                pass  # goes with its cluster
            elif item.kind == "cluster":
                _remove_cluster(item, clusters)
            elif item.kind == "namespace":
                _remove_namespace(item, clusters, api_for)
            elif item.kind == "node-image":
                _unload(item, engine, clusters)
            elif item.kind == "image":
                _remove_image(item, engine)
            elif item.kind == "file":
                _remove_file(Path(item.name))
            elif item.kind == "tag":
                _remove_tag(item)
        except KtiError as exc:
            failed.append((item, exc.message.splitlines()[0]))
            continue
        except Exception as exc:  # an API or OS error: reported, the others still go
            failed.append((item, f"{type(exc).__name__}: {exc}".splitlines()[0]))
            continue
        removed.append(item)
    return Removed(tuple(removed), tuple(failed), tuple(along))


def _remove_cluster(item: Item, clusters: KindClusters | None) -> None:
    if clusters is None:
        raise KtiError(f"cannot remove {item}: no kind", hint="set $KTI_KIND")
    if clusters.exists(item.name):
        clusters.delete(item.name)  # refuses a cluster without our record
    else:
        clusters.forget(item.name)


def _remove_namespace(item: Item, clusters: KindClusters | None, api_for: ApiFor | None) -> None:
    remote = from_where(item.where)
    if remote is not None:  # a cluster reached by kubeconfig: only the run's namespace goes, never the cluster
        if not remote.kubeconfig.is_file():
            raise KtiError(f"cannot remove {item}: kubeconfig {remote.kubeconfig} is gone",
                           hint="restore it and run 'kti gc', or delete the namespace by hand")
        api_for = lambda _: remote.api()  # noqa: E731
    if api_for is None:
        if clusters is None or not clusters.exists(item.where):
            return  # its cluster is gone, and the namespace with it
        kubeconfig = clusters.kubeconfig_path(item.where)
        if not kubeconfig.is_file():
            return

        def api_for(_: str) -> Any:
            return api_client(kubeconfig)

    core: Any = client.CoreV1Api(api_for(item.where))
    try:
        core.delete_namespace(item.name, _request_timeout=NAMESPACE_DELETE_TIMEOUT)
    except client.exceptions.ApiException as exc:
        if exc.status != 404:
            raise


def _unload(item: Item, engine: Engine | None, clusters: KindClusters | None) -> None:
    """An image this run loaded into the nodes of a cluster it does not remove: unpinned and deleted
    (only records a kti load labelled; see :meth:`.Loader.unload`)."""
    if clusters is None or engine is None:
        raise KtiError(f"cannot remove {item}: no engine or kind", hint="start the engine and run 'kti gc'")
    if not clusters.exists(item.where):
        return  # the cluster is gone, and the image with it
    Loader(engine).unload([item.name], clusters.nodes(item.where))


def _remove_tag(item: Item) -> None:
    parsed = parse_ref(item.name)
    note = RegistryClient(Registry(parsed.domain)).delete(item.name)
    if note:
        raise KtiError(note, hint="delete it with the registry's own tools")


def _remove_image(item: Item, engine: Engine | None) -> None:
    if engine is None:
        raise KtiError(f"cannot remove {item}: no engine", hint="start the engine and run 'kti gc'")
    if engine.inspect_image(item.name) is None:
        return
    if not engine.untag(item.name):
        raise KtiError(f"{item.name} is in use by a container", hint="remove that container, then 'kti gc'")


def _remove_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
