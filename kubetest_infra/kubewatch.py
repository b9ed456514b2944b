"""A namespace informer: list, remember ``resourceVersion``, watch from it, re-list on ``410 Gone``.

After client-go's reflector (``tools/cache/reflector.go``): one background thread per resource kind
lists the namespace once, then holds one long watch from that list's ``resourceVersion`` (resumed from
the last event's version when the server ends it, re-listed only on ``410 Gone``). Objects are kept as
the API's JSON (camelCase dicts, no model classes: less CPU on a 2-core machine). Waiters block on a
condition variable that is notified on every change: no polling loop, no GET per check.

One :class:`Informer` per namespace can serve every wait of a run at once (the orchestrator shares it
between concurrent service tasks). :meth:`Informer.stop` closes the watch sockets at once.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from kubetest_infra.errors import KtiError

Obj = dict[str, Any]
WATCH_SECONDS = 240  # the server ends each watch after this; it is resumed from the last resourceVersion
CONNECT_TIMEOUT = 10.0
RETRY_PAUSE = 1.0


class WatchError(KtiError):
    """A watch could not be (re)established."""


@dataclass(frozen=True)
class Resource:
    """An API list endpoint: client class and ``list_namespaced_*`` method."""

    kind: str
    api: str
    lister: str


RESOURCES: dict[str, Resource] = {r.kind: r for r in (
    Resource("Pod", "CoreV1Api", "list_namespaced_pod"),
    Resource("Deployment", "AppsV1Api", "list_namespaced_deployment"),
    Resource("ReplicaSet", "AppsV1Api", "list_namespaced_replica_set"),
    Resource("StatefulSet", "AppsV1Api", "list_namespaced_stateful_set"),
    Resource("DaemonSet", "AppsV1Api", "list_namespaced_daemon_set"),
    Resource("Job", "BatchV1Api", "list_namespaced_job"),
    Resource("EndpointSlice", "DiscoveryV1Api", "list_namespaced_endpoint_slice"),
    Resource("Service", "CoreV1Api", "list_namespaced_service"),
)}


def _key(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _iter_lines(resp: Any) -> Iterator[bytes]:
    buffer = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line


class _Reflector:
    def __init__(self, informer: Informer, resource: Resource) -> None:
        self.informer = informer
        self.resource = resource
        self.items: dict[str, Obj] = {}
        self.synced = threading.Event()
        self.error: BaseException | None = None
        self._resp: Any = None
        self.thread = threading.Thread(target=self._run, name=f"kti-watch-{resource.kind}", daemon=True)

    def _list_fn(self) -> Callable[..., Any]:
        api = getattr(client, self.resource.api)(self.informer.api_client)
        fn: Callable[..., Any] = getattr(api, self.resource.lister)
        return fn

    def _relist(self) -> str:
        resp = self._list_fn()(self.informer.namespace, _preload_content=False,
                               _request_timeout=(CONNECT_TIMEOUT, 60))
        self.informer.count("list")
        data = json.loads(resp.data)
        with self.informer.cond:
            self.items = {_key(o): o for o in data.get("items") or []}
            self.informer.changed()
        return str((data.get("metadata") or {}).get("resourceVersion", ""))

    def _run(self) -> None:
        rv = ""
        failures = 0
        while not self.informer.stopped:
            try:
                if not rv:
                    rv = self._relist()
                    self.synced.set()
                rv = self._watch(rv)
                failures = 0
            except Exception as exc:  # a dropped connection: resume; repeated failures end the informer
                if self.informer.stopped:
                    return
                failures += 1
                if failures >= 5:
                    self.error = exc
                    self.synced.set()
                    with self.informer.cond:
                        self.informer.changed()
                    return
                time.sleep(RETRY_PAUSE)

    def _watch(self, rv: str) -> str:
        """One watch from ``rv``; returns the version to resume from ("" means: re-list)."""
        resp = self._list_fn()(self.informer.namespace, watch=True, resource_version=rv,
                               allow_watch_bookmarks=True, timeout_seconds=WATCH_SECONDS,
                               _preload_content=False, _request_timeout=(CONNECT_TIMEOUT, WATCH_SECONDS + 30))
        self.informer.count("watch")
        self._resp = resp
        try:
            for line in _iter_lines(resp):
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:  # Gone: our version is too old, list again
                        return ""
                    raise WatchError(f"watch of {self.resource.kind} failed: {obj.get('message', obj)}",
                                     hint="check the API server and RBAC (list/watch in the namespace)")
                rv = str((obj.get("metadata") or {}).get("resourceVersion", rv))
                if kind == "BOOKMARK":
                    continue
                with self.informer.cond:
                    if kind == "DELETED":
                        self.items.pop(_key(obj), None)
                    else:
                        self.items[_key(obj)] = obj
                    self.informer.changed()
        finally:
            self._resp = None
            with contextlib.suppress(Exception):
                resp.release_conn()
        return rv

    def close(self) -> None:
        resp = self._resp
        sock = getattr(getattr(resp, "connection", None), "sock", None) if resp is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class Informer:
    """Caches of one namespace's objects, kept current by watches; see the module docstring."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.cond = threading.Condition()
        self.version = 0  # bumped on every change; waiters compare it
        self.stopped = False
        self.requests = {"list": 0, "watch": 0}
        self._reflectors: dict[str, _Reflector] = {}
        self._lock = threading.Lock()

    def count(self, verb: str) -> None:
        self.requests[verb] += 1

    def changed(self) -> None:
        """Called with ``cond`` held by a reflector."""
        self.version += 1
        self.cond.notify_all()

    def ensure(self, *kinds: str, timeout: float = 60.0) -> None:
        """Start watching ``kinds`` (if not yet) and wait for their first list."""
        started = []
        with self._lock:
            if self.stopped:
                raise self._stopped_error(kinds)
            for kind in kinds:
                if kind not in self._reflectors:
                    if kind not in RESOURCES:
                        raise WatchError(f"cannot watch kind {kind}", hint=f"watchable: {', '.join(RESOURCES)}")
                    r = _Reflector(self, RESOURCES[kind])
                    self._reflectors[kind] = r
                    r.thread.start()
                started.append(self._reflectors[kind])
        deadline = time.monotonic() + timeout
        for r in started:
            synced = r.synced.wait(max(0.0, deadline - time.monotonic()))
            if self.stopped:  # stop() wakes this wait: an interrupted run must not sit out the timeout
                raise self._stopped_error(kinds)
            if not synced:
                raise WatchError(f"listing {r.resource.kind} in namespace {self.namespace} took over {timeout:.0f} s",
                                 hint="the API server is slow or unreachable; check the cluster")
            if r.error is not None:
                raise WatchError(f"cannot list/watch {r.resource.kind} in namespace {self.namespace}: {r.error}",
                                 hint="check the API server and RBAC") from r.error

    def items(self, kind: str) -> list[Obj]:
        """The cached objects of ``kind`` (call :meth:`ensure` first); read with ``cond`` held or not."""
        r = self._reflectors.get(kind)
        if r is None:
            return []
        if r.error is not None:
            raise WatchError(f"the watch of {kind} in namespace {self.namespace} failed: {r.error}",
                             hint="check the API server") from r.error
        return list(r.items.values())

    def get(self, kind: str, name: str) -> Obj | None:
        r = self._reflectors.get(kind)
        return r.items.get(name) if r is not None else None

    def wait_change(self, seen_version: int, timeout: float) -> int:
        """Block until the caches change after ``seen_version`` or ``timeout`` passes; the current version."""
        with self.cond:
            if self.version == seen_version and timeout > 0:
                self.cond.wait(timeout)
            return self.version

    def _stopped_error(self, kinds: tuple[str, ...]) -> WatchError:
        return WatchError(f"the watches of {', '.join(kinds)} in namespace {self.namespace} were stopped "
                          "(the run was interrupted)", hint="nothing to do: the run is being undone")

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            reflectors = list(self._reflectors.values())
        for r in reflectors:
            r.close()
            r.synced.set()  # wake an ensure() waiting for a first list that will never come
        with self.cond:
            self.cond.notify_all()
