"""SIGINT and SIGTERM: interrupt once, undo exactly once.

- :func:`terminate_interrupts` makes SIGTERM (a CI cancel, ``kill``) behave like Ctrl-C: a
  ``KeyboardInterrupt`` in the main thread, so the same undo path runs for both.
- :func:`deferred` holds both back (noted, raised right after) while the graph hands a task to a
  thread and records it, so an interrupt never leaves a task running that the undo does not wait for.
- :func:`shielded` wraps the undo: while it runs, further SIGINT/SIGTERM are reported on stderr and
  ignored, so a second Ctrl-C cannot cut the clean-up short and leave half of a run behind. (SIGKILL
  cannot be caught: then the run's ledger lets the next ``kti up``, ``kti down`` or ``kti gc`` finish.)

Both only act in the main thread (Python delivers signals there); elsewhere they do nothing.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def install_terminate_handler() -> bool:
    """SIGTERM raises KeyboardInterrupt from now on (if nobody else handles SIGTERM); True if installed."""
    if not _main_thread() or signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        return False
    signal.signal(signal.SIGTERM, _raise_interrupt)
    return True


@contextlib.contextmanager
def terminate_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt (as Ctrl-C does)."""
    if not _main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _handling(handler: Callable[[int, FrameType | None], object]) -> Iterator[dict[int, Any]]:
    """Within the block, ``handler`` handles SIGINT and SIGTERM; yields the handlers it replaced."""
    previous: dict[int, Any] = {s: signal.getsignal(s) for s in _SIGNALS}
    for s in _SIGNALS:
        signal.signal(s, handler)
    try:
        yield previous
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM are noted, and raised as ``KeyboardInterrupt`` right after it.

    For bookkeeping that must not be cut in half: a task handed to a worker thread *and* recorded as
    running. (A ``KeyboardInterrupt`` inside ``ThreadPoolExecutor.submit`` can start a worker thread
    the pool never joins: its task then runs after the undo, and what it creates is left behind.)
    Python-level handlers, not a blocked signal mask: threads and child processes started inside the
    block would inherit the mask, and a child that blocks SIGTERM cannot be stopped.
    """
    if not _main_thread():
        yield
        return
    pending: list[int] = []
    with _handling(lambda signum, _frame: pending.append(signum)) as previous:
        yield
    if pending:
        signum = pending[0]
        handler = previous.get(signum)
        if callable(handler):
            handler(signum, None)  # as if it arrived now: KeyboardInterrupt, or whatever was installed
        elif handler != signal.SIG_IGN:
            raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def shielded(what: str) -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM are reported and ignored (``what`` says what is running)."""
    if not _main_thread():
        yield
        return

    def report(signum: int, _frame: FrameType | None) -> None:
        sys.stderr.write(f"\nkti: {signal.Signals(signum).name} received while {what}; "
                         "ignored so the clean-up runs to the end (it is bounded in time)\n")
        sys.stderr.flush()

    with _handling(report):
        yield
