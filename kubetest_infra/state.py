"""Ownership and state: what a run created, the environment it leaves, and the files that say so.

Every ``kti up`` and every pytest session is a *run*. Before a run creates anything (a cluster, a
namespace, an image tag, a file) it writes that intent into its **ledger**; undoing a run removes
exactly what its ledger lists, in reverse. A run either creates an **environment** or attaches to the
one it finds; on success its ledger is merged into the environment's record, which then owns those
items until ``kti down`` (or the end of the pytest session that created it) removes them. What a run
merely found or reused is never in a ledger and is never removed.

Files, under ``$KTI_STATE_DIR`` (default ``~/.local/state/kubetest-infra``)::

    runs/<key>.json                    a run's ledger (intent first; deleted when the run ends cleanly)
    clusters/<name>/state.json         the cluster record, written *before* ``kind create``
    clusters/<name>/environment.json   the environment value, what it owns, who owns it
    clusters/<name>/leases/<key>.json  sessions attached to the environment
    clusters/<name>/kubeconfig         mode 0600, in a 0700 directory
    locks/<name>.lock                  per-cluster file locks (bounded waits)

Every file is written atomically (temp file, fsync, rename): a crash leaves the old file or the new
one, never half of one. A file that still cannot be read is a :class:`StateError` naming it, with a
hint, never a raw ``JSONDecodeError``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

from kubetest_infra import kube
from kubetest_infra.errors import ConfigError, KtiError
from kubetest_infra.graph import Timing

STATE_ENV = "KTI_STATE_DIR"
LOCK_TIMEOUT = 600.0  # seconds a run waits for another run holding the same cluster or environment


class StateError(KtiError):
    """A state file of kubetest-infra that cannot be read or written."""


class LockTimeoutError(KtiError):
    """Another run held a lock for longer than this run would wait."""


def default_state_dir() -> Path:
    env = os.environ.get(STATE_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "kubetest-infra"


# -- files -------------------------------------------------------------------------------------
def atomic_write(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` to ``path`` so that readers see the old content or the new, never a part."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # a full disk or a file where a directory should be: typed, like a failed write
        raise StateError(f"cannot write {path}: {exc.strerror or exc}",
                         hint=f"check free space and permissions of {path.parent} "
                         f"(the state directory is ${STATE_ENV}, default ~/.local/state/kubetest-infra)") from exc
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StateError(f"cannot write {path}: {exc.strerror or exc}",
                         hint=f"check free space and permissions of {path.parent} "
                         f"(the state directory is ${STATE_ENV}, default ~/.local/state/kubetest-infra)") from exc
    with contextlib.suppress(OSError):  # the rename itself survives a crash only once the directory is synced
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path, what: str) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when the file does not exist; :class:`StateError` when broken."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read the {what} {path}: {exc.strerror}",
                         hint="check the permissions of the state directory") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(f"the {what} {path} is corrupt ({exc.msg} at line {exc.lineno}, column {exc.colno}; "
                         f"{len(text)} bytes)",
                         hint=f"it was not written by this version or was cut short; remove it (rm {path}) and "
                         "run 'kti gc' to find what it described") from exc
    if not isinstance(data, dict):
        raise StateError(f"the {what} {path} holds a {type(data).__name__}, not an object",
                         hint=f"remove it (rm {path}) and run 'kti gc'")
    return data


@contextlib.contextmanager
def locked(path: Path, what: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold a file lock; after ``timeout`` seconds raise :class:`LockTimeoutError` naming the holder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = path.with_suffix(".holder")
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=timeout)
    except Timeout as exc:
        who = holder.read_text().strip() if holder.is_file() else "unknown"
        raise LockTimeoutError(f"waited {timeout:.0f} s for {what} (lock {path}), held by {who}",
                               hint="another kti/pytest run is creating or tearing down the same cluster; wait for "
                               "it, or stop it; if that process is gone the lock is free again") from exc
    try:
        with contextlib.suppress(OSError):
            holder.write_text(Owner.current("lock").describe() + "\n")
        yield
    finally:
        with contextlib.suppress(OSError):
            holder.unlink()
        lock.release()


# -- owners ------------------------------------------------------------------------------------
def _process_start(pid: int) -> str:
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat), or "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19] if ")" in stat else ""


@dataclass(frozen=True)
class Owner:
    """A process that owns something: alive only while that very process (pid *and* start time) runs."""

    pid: int
    start: str
    host: str
    command: str
    since: float

    @classmethod
    def current(cls, command: str, pid: int | None = None) -> Owner:
        pid = os.getpid() if pid is None else pid
        return cls(pid, _process_start(pid), socket.gethostname(), command, time.time())

    def alive(self) -> bool:
        if self.host != socket.gethostname():
            return True  # another machine's process: cannot tell, so never treat it as gone
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, another user's
        return not self.start or _process_start(self.pid) == self.start

    def describe(self) -> str:
        since = time.strftime("%H:%M:%S", time.localtime(self.since))
        return f"{self.command} (pid {self.pid} on {self.host}, since {since})"

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "start": self.start, "host": self.host, "command": self.command, "since": self.since}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Owner:
        return cls(int(data["pid"]), str(data.get("start", "")), str(data.get("host", "")),
                   str(data.get("command", "")), float(data.get("since", 0.0)))


# -- ledgers -----------------------------------------------------------------------------------
ItemKind = Literal["cluster", "namespace", "image", "node-image", "file", "tag"]  # tag: pushed to a registry
ITEM_KINDS = ("cluster", "namespace", "image", "node-image", "file", "tag")


@dataclass(frozen=True)
class Item:
    """One thing a run created. ``where``: the cluster of a namespace or of a node image (an image
    loaded into that cluster's nodes), the engine of an image."""

    kind: ItemKind
    name: str
    where: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.name}" + (f" ({self.where})" if self.where else "")

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "where": self.where}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Item:
        kind = str(data.get("kind"))
        if kind not in ITEM_KINDS:
            raise StateError(f"unknown owned item kind {kind!r}", hint="remove the state file and run 'kti gc'")
        return cls(kind, str(data["name"]), str(data.get("where", "")))  # type: ignore[arg-type]


class Ledger:
    """What one run is creating or created, on disk *before* each creation, so a crash cannot orphan it."""

    def __init__(self, state_dir: Path, key: str, run_id: str, suite: str, owner: Owner) -> None:
        self.path = state_dir / "runs" / f"{key}.json"
        self.key = key
        self.run_id = run_id
        self.suite = suite
        self.owner = owner
        self._items: list[Item] = []

    @property
    def items(self) -> tuple[Item, ...]:
        return tuple(self._items)

    def open(self) -> None:
        """Write the (empty) ledger before the run starts anything: a state directory that cannot take it
        (full, read-only) fails the run at once, with one :class:`StateError`, before anything is made."""
        self._save()

    def record(self, item: Item) -> None:
        """Note ``item`` as created by this run. Call it *before* creating the item."""
        if item not in self._items:
            self._items.append(item)
            self._save()

    def forget(self, item: Item) -> None:
        """``item`` was removed (or handed to an environment): this run no longer answers for it."""
        if item in self._items:
            self._items.remove(item)
            self._save()

    def close(self) -> None:
        """The run ended and everything it created was removed or handed over."""
        self._items.clear()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _save(self) -> None:
        write_json(self.path, {"key": self.key, "run_id": self.run_id, "suite": self.suite,
                               "owner": self.owner.to_json(), "items": [i.to_json() for i in self._items]})

    @classmethod
    def load(cls, path: Path) -> Ledger:
        data = read_json(path, "run ledger")
        if data is None:
            raise StateError(f"run ledger {path} does not exist", hint="nothing to do")
        try:
            ledger = cls(path.parent.parent, str(data["key"]), str(data["run_id"]), str(data["suite"]),
                         Owner.from_json(data["owner"]))
            ledger._items = [Item.from_json(i) for i in data.get("items", [])]
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"run ledger {path} lacks {exc}", hint=f"remove it (rm {path}) and run 'kti gc'") from exc
        return ledger


def ledgers(state_dir: Path) -> list[Ledger]:
    """Every run ledger on this machine (corrupt ones raise :class:`StateError`)."""
    return [Ledger.load(p) for p in sorted((state_dir / "runs").glob("*.json"))]


# -- the environment ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Environment:
    """What ``up`` produced: exact image references, the kubeconfig, endpoints and timings."""

    suite: str
    run_id: str
    cluster: str
    kubeconfig: str
    namespace: str
    images: Mapping[str, str]  # name → exact ref (built and external)
    image_ids: Mapping[str, str]
    endpoints: Mapping[str, str]
    reused_cluster: bool
    timings: tuple[Timing, ...] = field(default=())
    critical_path: tuple[str, ...] = field(default=())
    seconds: float = 0.0
    digests: Mapping[str, str] = field(default_factory=dict)  # image name → input digest
    reused_images: tuple[str, ...] = field(default=())  # names whose image was reused, not rebuilt
    plan: str = ""  # digest of suite, manifests and image inputs (see session.Session.plan_digest)

    def to_json(self) -> dict[str, Any]:
        return {
            "suite": self.suite, "run_id": self.run_id, "cluster": self.cluster, "kubeconfig": self.kubeconfig,
            "namespace": self.namespace, "images": dict(self.images), "image_ids": dict(self.image_ids),
            "endpoints": dict(self.endpoints), "reused_cluster": self.reused_cluster,
            "seconds": round(self.seconds, 2), "critical_path": list(self.critical_path),
            "digests": dict(self.digests), "reused_images": list(self.reused_images), "plan": self.plan,
            "timings": [{"task": t.id, "kind": t.kind, "start": round(t.start, 2), "end": round(t.end, 2),
                         "seconds": round(t.seconds, 2), "status": t.status} for t in self.timings],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Environment:
        timings = tuple(Timing(t["task"], t["kind"], t["start"], t["end"], t["status"])
                        for t in data.get("timings", []))
        return cls(data["suite"], data["run_id"], data["cluster"], data["kubeconfig"], data["namespace"],
                   data["images"], data.get("image_ids", {}), data["endpoints"], data.get("reused_cluster", False),
                   timings, tuple(data.get("critical_path", [])), data.get("seconds", 0.0),
                   data.get("digests", {}), tuple(data.get("reused_images", [])), data.get("plan", ""))

    def service_url(self, service: str, path: str = "") -> str:
        if service not in self.endpoints:
            raise ConfigError(f"service {service!r} has no endpoint in suite {self.suite}",
                              hint=f"services with an http/tcp check: {', '.join(sorted(self.endpoints)) or 'none'}")
        return self.endpoints[service].rstrip("/") + path

    def api_client(self) -> Any:
        return kube.api_client(self.kubeconfig)


@dataclass(frozen=True)
class EnvRecord:
    """An environment and its ownership: what it owns, whether a live run owns it, its run history.

    ``owner`` is the process that created it and will tear it down when it ends (a pytest session);
    None means *kept*: it stays until ``kti down``. ``ephemeral`` marks an environment a session created
    without ``keep``: when its owner is gone and no attached session is alive, the last one out removes it.
    """

    env: Environment
    owned: tuple[Item, ...] = ()
    owner: Owner | None = None
    ephemeral: bool = False
    runs: tuple[str, ...] = ()  # every run id this environment has carried (superseded tags are found by them)

    def to_json(self) -> dict[str, Any]:
        return {**self.env.to_json(), "owned": [i.to_json() for i in self.owned],
                "owner": self.owner.to_json() if self.owner else None, "ephemeral": self.ephemeral,
                "runs": list(self.runs)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: Path) -> EnvRecord:
        try:
            owner = data.get("owner")
            return cls(Environment.from_json(data), tuple(Item.from_json(i) for i in data.get("owned", [])),
                       Owner.from_json(owner) if owner else None, bool(data.get("ephemeral", False)),
                       tuple(data.get("runs", [data["run_id"]])))
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"the environment record {path} lacks {exc}",
                             hint=f"remove it (rm {path}); 'kti gc' then finds what it described") from exc

    def adopt(self, items: Sequence[Item]) -> EnvRecord:
        """The record with ``items`` (a run's ledger) added to what it owns."""
        owned = list(self.owned)
        owned.extend(i for i in items if i not in owned)
        return replace(self, owned=tuple(owned))

    def with_run(self, env: Environment) -> EnvRecord:
        runs = self.runs if env.run_id in self.runs else (*self.runs, env.run_id)
        return replace(self, env=env, runs=runs)


@dataclass(frozen=True)
class Lease:
    """A session attached to an environment it did not create."""

    key: str
    owner: Owner


class EnvironmentStore:
    """The files of one cluster's environment: record, leases, lock."""

    def __init__(self, state_dir: Path, cluster: str) -> None:
        self.state_dir = state_dir
        self.cluster = cluster
        self.dir = state_dir / "clusters" / cluster
        self.path = self.dir / "environment.json"

    def lock(self, timeout: float = LOCK_TIMEOUT) -> contextlib.AbstractContextManager[None]:
        return locked(self.state_dir / "locks" / f"{self.cluster}.env.lock",
                      f"the environment of cluster {self.cluster}", timeout)

    def read(self) -> EnvRecord | None:
        data = read_json(self.path, "environment record")
        return EnvRecord.from_json(data, self.path) if data is not None else None

    def write(self, record: EnvRecord) -> None:
        write_json(self.path, record.to_json())
        write_json(self.dir / "timings.json", {"seconds": round(record.env.seconds, 2),
                                               "critical_path": list(record.env.critical_path),
                                               "tasks": record.env.to_json()["timings"]})

    def remove(self) -> None:
        for name in ("environment.json", "timings.json"):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / name).unlink()

    # -- leases --------------------------------------------------------------------------------
    def add_lease(self, key: str, owner: Owner) -> None:
        write_json(self.dir / "leases" / f"{key}.json", {"key": key, "owner": owner.to_json()})

    def drop_lease(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "leases" / f"{key}.json").unlink()

    def leases(self) -> list[Lease]:
        out = []
        for p in sorted((self.dir / "leases").glob("*.json")):
            data = read_json(p, "lease")
            if data is not None:
                out.append(Lease(str(data["key"]), Owner.from_json(data["owner"])))
        return out

    def live_leases(self, exclude: str = "") -> list[Lease]:
        """Leases of sessions still running; the leases of dead ones are removed on the way."""
        live = []
        for lease in self.leases():
            if lease.key == exclude:
                continue
            if lease.owner.alive():
                live.append(lease)
            else:
                self.drop_lease(lease.key)
        return live


TeardownDecision = Literal["teardown", "keep", "handover", "leave"]


def teardown_decision(record: EnvRecord, my_owner: Owner, other_live: Sequence[Lease],
                      keep: bool) -> TeardownDecision:
    """What a session ending now does with the environment (pure).

    - ``teardown``: remove everything the environment owns (this session created it, or it is an
      ephemeral environment whose creator is gone and this is the last session out);
    - ``keep``: this session created it and keeps it (``--kti-keep-cluster``): it becomes a kept one;
    - ``handover``: this session created it, but other sessions still use it: the last of them removes it;
    - ``leave``: not this session's to remove (kept by ``kti up``, or others still use it).
    """
    mine = record.owner is not None and record.owner.pid == my_owner.pid and record.owner.start == my_owner.start \
        and record.owner.host == my_owner.host
    if mine:
        if keep:
            return "keep"
        return "handover" if other_live else "teardown"
    creator_alive = record.owner is not None and record.owner.alive()
    if record.ephemeral and not creator_alive and not other_live and not keep:
        return "teardown"
    return "leave"
