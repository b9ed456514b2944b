"""One byte stream into the stdin of several processes at once, with every wait bounded.

:meth:`~kubetest_infra.runner.SubprocessRunner.pipe` uses it to stream ``docker save`` into every
node's ``ctr import`` without a temporary file. Threads, each doing one thing:

- a *reader* takes chunks from the source (a producer process's stdout) and puts each into every
  consumer's bounded queue (a slow node holds the others back by at most the queue);
- a *feeder* per consumer writes its queue into the consumer's stdin;
- *drains* read each process's stdout and stderr, so none blocks on a full pipe.

Every read and write is non-blocking behind ``select`` with a short tick, so no thread can block
forever: each notices the stop flag within a tick. The calling thread is the watchdog. At the
deadline it stops everything, kills the processes and raises
:class:`~kubetest_infra.errors.CommandTimeoutError` naming the side that stalled and what it waited
for: a producer that writes nothing (or exited while a child of it holds its stdout open), a
consumer that stops reading its stdin, a process that does not exit once its input ended.

A consumer that closes its stdin before the end of the stream keeps its exit code in its result
(the others are still fed); if that code is 0 the truncation would be invisible, so it is an error.
"""

from __future__ import annotations

import contextlib
import os
import queue
import selectors
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from kubetest_infra.errors import CommandError, CommandTimeoutError, tail_lines

TICK = 0.05  # how often a blocked thread looks at the stop flag
CHUNK = 1 << 20
QUEUE_CHUNKS = 64  # chunks buffered per consumer
_JOIN = 2.0  # how long stopped threads get to notice the stop flag


@dataclass
class Activity:
    """What one side of a transfer is doing (written by its own thread, read by the watchdog)."""

    who: str
    doing: str = "starting"
    since: float = field(default_factory=time.monotonic)
    moved: int = 0

    def now(self, doing: str) -> None:
        if doing != self.doing:
            self.doing = doing
            self.since = time.monotonic()

    def progressed(self, count: int) -> None:
        self.moved += count
        self.since = time.monotonic()

    def idle(self) -> float:
        return time.monotonic() - self.since


@dataclass
class Consumer:
    proc: subprocess.Popen[bytes]
    shown: tuple[str, ...]
    activity: Activity
    queue: queue.Queue[bytes | None] = field(default_factory=lambda: queue.Queue(maxsize=QUEUE_CHUNKS))
    closed_early: bool = False  # its stdin closed (EPIPE), or it exited, before the end of the stream
    input_ended: bool = False  # it was given the end of the stream
    stdout: list[bytes] = field(default_factory=list)
    stderr: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class Outcome:
    """How a transfer ended (the caller turns it into results or errors)."""

    consumers: tuple[Consumer, ...]
    streamed: int  # bytes the source produced
    source_ended: bool  # the source reached its end (not cut short)
    all_closed: bool  # every consumer closed its input early; the source was stopped
    source_error: BaseException | None  # an exception raised by the source iterator


def describe(argv: Sequence[str]) -> str:
    text = " ".join(argv)
    return f"`{text[:117]}...`" if len(text) > 120 else f"`{text}`"


def read_fd(fd: int, stop: threading.Event, activity: Activity) -> Iterator[bytes]:
    """Chunks from ``fd`` until its end or ``stop``; never blocks longer than a tick."""
    os.set_blocking(fd, False)
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while not stop.is_set():
            activity.now("reading")
            if not sel.select(TICK):
                continue
            try:
                chunk = os.read(fd, CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                activity.now("ended")
                return
            activity.progressed(len(chunk))
            yield chunk


def write_all(fd: int, data: bytes, stop: threading.Event, activity: Activity) -> bool:
    """Write ``data`` to ``fd``; False if the reader closed its end. Never blocks longer than a tick."""
    view = memoryview(data)
    activity.now("writing")
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_WRITE)
        while view and not stop.is_set():
            if not sel.select(TICK):
                continue
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                continue
            except OSError:  # EPIPE: the consumer closed its stdin (or exited)
                return False
            view = view[written:]
            activity.progressed(written)
    return True


def collect(fd: int, sink: list[bytes], stop: threading.Event) -> None:
    """Everything ``fd`` yields until its end or ``stop`` (a process's stdout/stderr)."""
    sink.extend(read_fd(fd, stop, Activity("drain")))


def _put(q: queue.Queue[bytes | None], item: bytes | None, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=TICK)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue[bytes | None], stop: threading.Event) -> bytes | None:
    while not stop.is_set():
        try:
            return q.get(timeout=TICK)
        except queue.Empty:
            continue
    return None


def _thread(target: Callable[..., object], *args: object) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True, name="kti-pipe")
    thread.start()
    return thread


class Transfer:
    """One fan-out: call :meth:`run` once; see the module docstring."""

    def __init__(self, consumers: Sequence[Consumer], source: Activity, *, timeout: float | None,
                 on_all_closed: Callable[[], None] | None = None) -> None:
        self.consumers = tuple(consumers)
        self.source = source
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.stop = threading.Event()  # every thread: the transfer is over
        self.halt = threading.Event()  # the source only: nobody is left to read what it produces
        self.on_all_closed = on_all_closed
        self._ended = False
        self._all_closed = False
        self._error: BaseException | None = None
        self._threads: list[threading.Thread] = []

    def drain(self, fd: int, sink: list[bytes]) -> None:
        """Collect ``fd`` (a process's stdout or stderr) into ``sink`` while the transfer runs."""
        self._threads.append(_thread(collect, fd, sink, self.stop))

    def run(self, chunks: Iterator[bytes], *, others: Sequence[subprocess.Popen[bytes]] = (),
            on_stall: Callable[[], CommandTimeoutError]) -> Outcome:
        """Stream ``chunks`` to every consumer; wait (bounded) for every process to exit.

        ``chunks`` must stop when :attr:`halt` is set (see :func:`read_fd`). ``others`` are
        processes to wait for too (the producer); ``on_stall`` builds the error when the deadline
        passes, from the activities.
        """
        for c in self.consumers:
            for stream, sink in ((c.proc.stdout, c.stdout), (c.proc.stderr, c.stderr)):
                if stream is not None:
                    self.drain(stream.fileno(), sink)
        reader = _thread(self._read, chunks)
        feeders = [_thread(self._feed, c) for c in self.consumers]
        for thread in (reader, *feeders):
            while thread.is_alive():
                if self._expired():
                    raise self._abort(on_stall, others)
                if thread is reader and not self.halt.is_set():
                    self._check_consumers_alive()
                thread.join(TICK)
        for proc in (*others, *(c.proc for c in self.consumers)):
            while proc.poll() is None:
                if self._expired():
                    raise self._abort(on_stall, others)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(TICK)
        for thread in self._threads:  # drains end at EOF; a grandchild holding a pipe is not waited for
            thread.join(max(0.0, min(_JOIN, self._remaining())))
        self.stop.set()
        return Outcome(self.consumers, self.source.moved, self._ended, self._all_closed, self._error)

    # -- threads -----------------------------------------------------------------------------
    def _read(self, chunks: Iterator[bytes]) -> None:
        try:
            for chunk in chunks:
                live = [c for c in self.consumers if not c.closed_early]
                if not live:
                    self._everyone_left()
                    return
                for c in live:
                    self.source.now(f"waiting for {c.activity.who} to take more input")
                    if not _put(c.queue, chunk, self.stop):
                        return
                self.source.now("reading")
            self._ended = not (self.stop.is_set() or self.halt.is_set())
        except BaseException as exc:  # the source failed: end every consumer's input; re-raised by the caller
            self._error = exc
        finally:
            for c in self.consumers:
                _put(c.queue, None, self.stop)

    def _feed(self, c: Consumer) -> None:
        stdin = c.proc.stdin
        assert stdin is not None
        fd = stdin.fileno()
        os.set_blocking(fd, False)
        try:
            while True:
                c.activity.now("waiting for input")
                chunk = _get(c.queue, self.stop)
                if chunk is None:
                    c.input_ended = self._ended
                    return
                if not c.closed_early and not write_all(fd, chunk, self.stop, c.activity):
                    c.closed_early = True  # keep taking from the queue so the reader never waits on it
        finally:
            c.activity.now("input closed")
            with contextlib.suppress(OSError):
                stdin.close()

    def _everyone_left(self) -> None:
        self._all_closed = True
        self.halt.set()
        if self.on_all_closed is not None:
            self.on_all_closed()

    # -- watchdog ----------------------------------------------------------------------------
    def _check_consumers_alive(self) -> None:
        """Every consumer exited while the source still runs: nothing more can be delivered."""
        if not self._ended and all(c.proc.poll() is not None for c in self.consumers):
            for c in self.consumers:
                c.closed_early = c.closed_early or not c.input_ended
            if all(c.closed_early for c in self.consumers):
                self._everyone_left()

    def _remaining(self) -> float:
        return _JOIN if self.deadline is None else self.deadline - time.monotonic()

    def _expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def _abort(self, on_stall: Callable[[], CommandTimeoutError],
               others: Sequence[subprocess.Popen[bytes]]) -> CommandTimeoutError:
        error = on_stall()  # describe the state before stopping changes it
        self.stop.set()
        self.halt.set()
        for proc in (*others, *(c.proc for c in self.consumers)):
            with contextlib.suppress(OSError):
                proc.kill()
        for proc in (*others, *(c.proc for c in self.consumers)):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(_JOIN)
        for thread in self._threads:
            thread.join(TICK)
        return error


def stall_error(transfer: Transfer, producer: subprocess.Popen[bytes] | None, producer_shown: Sequence[str],
                producer_err: list[bytes], redact: Callable[[str], str]) -> CommandTimeoutError:
    """Which side of ``transfer`` stalled, what it waited for, as a :class:`CommandTimeoutError`."""

    def _text(chunks: list[bytes]) -> str:
        return redact(_decode(chunks))

    timeout = transfer.timeout or 0.0
    source = transfer.source
    writing = [c for c in transfer.consumers if c.activity.doing == "writing"]
    total = source.moved
    # Blame the side idle the longest: a producer still producing is not the one that stalled.
    slowest = max(writing, key=lambda w: w.activity.idle(), default=None)
    if source.doing == "reading" and (slowest is None or source.idle() >= slowest.activity.idle()):
        held = producer is not None and producer.poll() is not None
        detail = (f"{source.who} to write more output: none for {source.idle():.1f} s, {total} bytes so far"
                  + ("; it has exited but a process it started still holds its stdout open" if held else ""))
        return CommandTimeoutError(producer_shown, timeout, detail, side="producer",
                                   output=tail_lines(_text(producer_err), 10),
                                   hint="the producer hung: check the engine ('kti doctor') and its free disk space")
    if slowest is not None:
        c = slowest
        detail = (f"{c.activity.who} to read its stdin: a write has waited {c.activity.idle():.1f} s, "
                  f"{c.activity.moved} of {total} bytes delivered")
        return CommandTimeoutError(c.shown, timeout, detail, side="consumer", output=tail_lines(_text(c.stderr), 10),
                                   hint="a consumer stopped reading its input: check that target (a node "
                                        "container paused or out of disk?)")
    running = [c for c in transfer.consumers if c.proc.poll() is None]
    if producer is not None and producer.poll() is None and source.doing != "reading":
        detail = f"{source.who} to exit after its output ended ({total} bytes)"
        return CommandTimeoutError(producer_shown, timeout, detail, side="producer",
                                   output=tail_lines(_text(producer_err), 10),
                                   hint="the producer hung after its output: check the engine ('kti doctor')")
    if running:
        c = running[0]
        detail = f"{c.activity.who} to exit after its input ended ({c.activity.moved} bytes delivered)"
        return CommandTimeoutError(c.shown, timeout, detail, side="consumer", output=tail_lines(_text(c.stderr), 10),
                                   hint="the consumer hung after reading its input: check that target")
    detail = f"{source.who} ({source.doing} since {source.idle():.1f} s)"
    return CommandTimeoutError(producer_shown, timeout, detail, side="producer",
                               hint="the transfer hung; check the engine and the targets")


def early_exits(outcome: Outcome, redact: Callable[[str], str]) -> CommandError | None:
    """An error for consumers that stopped reading before the end yet exited 0 (a silent truncation)."""
    hidden = [c for c in outcome.consumers if c.closed_early and c.proc.returncode == 0]
    if not hidden:
        return None
    c = hidden[0]
    others = f" (and {len(hidden) - 1} more)" if len(hidden) > 1 else ""
    stderr = redact(_decode(c.stderr)).rstrip()
    note = (f"it closed its input after {c.activity.moved} of {outcome.streamed} bytes "
            f"{'(the whole stream was not read)' if outcome.source_ended else 'before the end of the stream'} "
            f"and exited 0{others}")
    return CommandError(c.shown, 0, redact(_decode(c.stdout)), f"{stderr}\n{note}" if stderr else note,
                        hint="the consumer must read its whole input; an exit code of 0 would hide the truncation")


def _decode(chunks: list[bytes]) -> str:
    return b"".join(chunks).decode("utf-8", errors="replace")
