"""A dependency graph of tasks, run as soon as each task's dependencies are done.

Not phases: a task starts the moment its last dependency finishes, independent tasks run
concurrently (bounded pool). Every task *returns* its value; nothing is written to shared state
(kubernaut lost a built image name inside a goroutine). On failure, every dependant of the failed
task is cancelled and reported as such, independent tasks still finish, and all failures are
collected into one :class:`GraphError`. A cycle or an unknown dependency is refused before anything
starts. On Ctrl-C (or SIGTERM, see :mod:`.signals`) the running child processes are terminated, the
tasks are not waited for beyond that, and the undo actions run in reverse order (unless kept) exactly
once, shielded from further signals.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from kubetest_infra.errors import ConfigError, KtiError
from kubetest_infra.runner import terminate_children
from kubetest_infra.signals import deferred, shielded, terminate_interrupts

TaskFn = Callable[[Mapping[str, Any]], Any]  # receives the values of its dependencies


@dataclass(frozen=True)
class Task:
    id: str
    fn: TaskFn
    deps: tuple[str, ...] = ()
    kind: str = ""  # build | cluster | load | deploy | job … (for reports)


@dataclass(frozen=True)
class Timing:
    id: str
    kind: str
    start: float  # seconds since the graph started
    end: float
    status: str  # ok | failed | cancelled

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class GraphResult:
    values: Mapping[str, Any]
    timings: tuple[Timing, ...]
    critical_path: tuple[str, ...]
    seconds: float

    @property
    def critical_seconds(self) -> float:
        by_id = {t.id: t for t in self.timings}
        return sum(by_id[i].seconds for i in self.critical_path)


class GraphError(KtiError):
    """Some tasks failed; their dependants were cancelled. Successful values are kept."""

    def __init__(self, failures: Mapping[str, BaseException], cancelled: Mapping[str, str],
                 values: Mapping[str, Any], timings: Sequence[Timing], interrupted: bool = False) -> None:
        self.failures = dict(failures)
        self.cancelled = dict(cancelled)
        self.values = dict(values)
        self.timings = tuple(timings)
        self.interrupted = interrupted
        lines = ["interrupted (SIGINT or SIGTERM):" if interrupted else f"{len(self.failures)} task(s) failed:"]
        for tid, exc in self.failures.items():
            text = str(exc).replace("\n", "\n      ")
            lines.append(f"  - {tid}: {text}")
        for tid, why in self.cancelled.items():
            lines.append(f"  - {tid}: cancelled ({why})")
        hint = ("the run was stopped by Ctrl-C or SIGTERM and undid what it had created; anything the undo "
                "could not remove is listed above and recorded: 'kti down SUITE' or 'kti gc' finishes it"
                if interrupted else "fix the first failure above; cancelled tasks depend on it")
        super().__init__("\n".join(lines), hint=hint)


def validate(tasks: Sequence[Task]) -> list[str]:
    """A topological order; raises ConfigError for duplicates, unknown dependencies and cycles."""
    ids = [t.id for t in tasks]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(f"duplicate task ids: {', '.join(dupes)}", hint="give every service/image a unique name")
    known = set(ids)
    for t in tasks:
        missing = [d for d in t.deps if d not in known]
        if missing:
            raise ConfigError(f"{t.id} depends on unknown {', '.join(missing)}",
                              hint=f"known names: {', '.join(sorted(known))}")
    deps = {t.id: list(t.deps) for t in tasks}
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == 2:
            return
        if state.get(node) == 1:
            cycle = [*path[path.index(node):], node]
            raise ConfigError(f"dependency cycle: {' -> '.join(cycle)}", hint="remove one depends_on edge of the cycle")
        state[node] = 1
        for d in deps[node]:
            visit(d, [*path, node])
        state[node] = 2
        order.append(node)

    for t in tasks:
        visit(t.id, [])
    return order


@dataclass
class Undo:
    """Undo actions registered while the graph runs (e.g. delete a created cluster)."""

    actions: list[tuple[str, Callable[[], object]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, what: str, action: Callable[[], object]) -> None:
        with self.lock:
            self.actions.append((what, action))

    def run(self) -> list[str]:
        problems = []
        for what, action in reversed(self.actions):
            try:
                action()
            except Exception as exc:  # keep undoing the rest
                problems.append(f"{what}: {exc}")
        self.actions.clear()
        return problems


Listener = Callable[[str, str, float], None]  # (task id, event: start|ok|failed|cancelled, seconds)


def run_graph(tasks: Sequence[Task], *, max_workers: int = 4, on_event: Listener | None = None,
              undo: Undo | None = None, keep: bool = False,
              on_interrupt: Callable[[], object] | None = None) -> GraphResult:
    """Run ``tasks``; see the module docstring. Raises :class:`GraphError` on any failure.

    ``on_interrupt`` runs first on Ctrl-C/SIGTERM: it should make running tasks return soon (stop
    watches, set a cancel flag); child processes are terminated by the graph itself.
    """
    validate(tasks)
    by_id = {t.id: t for t in tasks}
    dependants: dict[str, list[str]] = {t.id: [] for t in tasks}
    for t in tasks:
        for d in t.deps:
            dependants[d].append(t.id)
    values: dict[str, Any] = {}
    failures: dict[str, BaseException] = {}
    cancelled: dict[str, str] = {}
    timings: dict[str, Timing] = {}
    starts: dict[str, float] = {}
    t0 = time.monotonic()
    emit = on_event or (lambda *_: None)
    running: dict[Future[Any], str] = {}
    interrupted = False

    def cancel_dependants(root: str, why: str) -> None:
        stack = list(dependants[root])
        while stack:
            tid = stack.pop()
            if tid in cancelled or tid in values or tid in failures:
                continue
            cancelled[tid] = why
            now = time.monotonic() - t0
            timings[tid] = Timing(tid, by_id[tid].kind, now, now, "cancelled")
            emit(tid, "cancelled", 0.0)
            stack.extend(dependants[tid])

    def ready() -> list[str]:
        busy = set(running.values())
        return [t.id for t in tasks if t.id not in values and t.id not in failures and t.id not in cancelled
                and t.id not in busy and all(d in values for d in t.deps)]

    pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="kti-task")
    try:
        with terminate_interrupts():
            while True:
                for tid in ready():
                    starts[tid] = time.monotonic() - t0
                    emit(tid, "start", 0.0)
                    task = by_id[tid]
                    with deferred():  # submitted ⇔ recorded as running (joined and waited for on an interrupt)
                        running[pool.submit(task.fn, {d: values[d] for d in task.deps})] = tid
                if not running:
                    break
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    tid = running.pop(fut)
                    end = time.monotonic() - t0
                    try:
                        values[tid] = fut.result()
                        timings[tid] = Timing(tid, by_id[tid].kind, starts[tid], end, "ok")
                        emit(tid, "ok", end - starts[tid])
                    except Exception as exc:
                        failures[tid] = exc
                        timings[tid] = Timing(tid, by_id[tid].kind, starts[tid], end, "failed")
                        emit(tid, "failed", end - starts[tid])
                        cancel_dependants(tid, f"{tid} failed")
    except KeyboardInterrupt:
        interrupted = True
        for fut, tid in running.items():
            fut.cancel()
            cancelled.setdefault(tid, "interrupted")
        for t in tasks:
            if t.id not in values and t.id not in failures:
                cancelled.setdefault(t.id, "interrupted")
    finally:
        with shielded("stopping the run's tasks and undoing what it created"):
            if interrupted:
                if on_interrupt is not None:
                    on_interrupt()
                terminate_children()  # tasks blocked on a subprocess end now; new ones are not started
            pool.shutdown(wait=True, cancel_futures=True)
            if interrupted:
                terminate_children()  # a task that started a process between the two calls
            ordered = tuple(sorted(timings.values(), key=lambda t: (t.start, t.id)))
            if (failures or interrupted) and undo is not None and not keep:
                for p in undo.run():
                    failures[f"undo {p.split(':', 1)[0]}"] = KtiError(p)
    if failures or interrupted:
        raise GraphError(failures, cancelled, values, ordered, interrupted)
    return GraphResult(values, ordered, critical_path(tasks, timings), time.monotonic() - t0)


def critical_path(tasks: Sequence[Task], timings: Mapping[str, Timing]) -> tuple[str, ...]:
    """The chain that decided the end time: from the last task, follow the dependency that ended last."""
    if not timings:
        return ()
    by_id = {t.id: t for t in tasks}
    current = max(timings.values(), key=lambda t: t.end).id
    path = [current]
    while by_id[current].deps:
        current = max(by_id[current].deps, key=lambda d: timings[d].end)
        path.append(current)
    return tuple(reversed(path))
