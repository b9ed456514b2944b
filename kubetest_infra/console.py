"""Terminal output for the CLI (the only module that imports rich).

On a terminal: a live table of tasks (state, seconds). Otherwise: one plain line per event.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table

if TYPE_CHECKING:
    from kubetest_infra.orchestrate import Environment

_STYLE = {"running": "yellow", "ok": "green", "failed": "bold red", "cancelled": "dim"}


def event_line(task: str, event: str, seconds: float) -> str:
    """One graph event as words: ``cluster: started``, ``build:web: ok in 3.2s``, ``service:db: failed
    after 4.0s``, ``load:web: cancelled`` (the seconds are the task's own duration, absent at its start)."""
    if event == "start":
        return f"{task}: started"
    if event == "cancelled":
        return f"{task}: cancelled"
    return f"{task}: {event} {'in' if event == 'ok' else 'after'} {seconds:.1f}s"


class Progress:
    """Receives graph events (task, event, seconds); renders them live or as plain lines."""

    def __init__(self, stream: TextIO, title: str) -> None:
        self.console = Console(file=stream, stderr=True)
        self.title = title
        self.live_mode = self.console.is_terminal
        self.state: dict[str, tuple[str, float, float]] = {}  # task → (state, started, seconds)
        self.lock = threading.Lock()
        self.live: Live | None = None
        self.t0 = time.monotonic()

    def __enter__(self) -> Progress:
        if self.live_mode:
            self.live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        else:
            self.console.print(self.title, highlight=False)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.live is not None:
            self.live.update(self._table())
            self.live.__exit__(exc_type, exc, tb)

    def event(self, task: str, event: str, seconds: float) -> None:
        with self.lock:
            now = time.monotonic() - self.t0
            if event == "start":
                self.state[task] = ("running", now, 0.0)
            else:
                started = self.state.get(task, ("", now, 0.0))[1]
                self.state[task] = (event, started, seconds)
            if self.live is not None:
                self.live.update(self._table())
            else:
                self.console.print(f"[at {now:6.1f}s] {event_line(task, event, seconds)}", highlight=False,
                                   markup=False)

    def _table(self) -> Table:
        table = Table(title=self.title, expand=False)
        table.add_column("task")
        table.add_column("state")
        table.add_column("seconds", justify="right")
        now = time.monotonic() - self.t0
        for task, (state, started, seconds) in self.state.items():
            shown = now - started if state == "running" else seconds
            table.add_row(task, f"[{_STYLE.get(state, '')}]{state}[/]", f"{shown:.1f}")
        return table


def timing_table(env: Environment, stream: TextIO) -> None:
    """Per-task start/end/duration, the critical path marked, and the totals."""
    console = Console(file=stream, stderr=True)
    table = Table(title=f"{env.suite}: {env.seconds:.1f}s total, critical path "
                  f"{sum(t.seconds for t in env.timings if t.id in env.critical_path):.1f}s")
    for col, justify in (("task", "left"), ("start", "right"), ("end", "right"), ("seconds", "right"),
                         ("critical", "center")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for t in env.timings:
        table.add_row(t.id, f"{t.start:.1f}", f"{t.end:.1f}", f"{t.seconds:.1f}",
                      "*" if t.id in env.critical_path else "")
    console.print(table)
