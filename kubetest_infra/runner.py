"""The one chokepoint for subprocesses.

Every external command (docker, podman, kind, git) goes through a :class:`Runner`: argv lists only
(never a shell), output captured, the argv logged at DEBUG with secrets redacted, and failures raised
as :class:`~kubetest_infra.errors.CommandError` carrying argv, exit code and redacted output.
Unit tests inject a recorded runner through the same :class:`Runner` protocol.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, cast

from kubetest_infra import fanout
from kubetest_infra.errors import CommandError, CommandTimeoutError

log = logging.getLogger("kubetest_infra.runner")

# Every child process alive right now, so an interrupt can end them instead of waiting for them.
_LIVE: set[subprocess.Popen[bytes]] = set()
_LIVE_LOCK = threading.Lock()


def _track(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    with _LIVE_LOCK:
        for done in [p for p in _LIVE if p.returncode is not None]:
            _LIVE.discard(done)  # pipe() reaps its own processes; forget them here
        _LIVE.add(proc)
    return proc


def _untrack(proc: subprocess.Popen[bytes]) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(proc)


def terminate_children() -> int:
    """SIGTERM to every child process started through this module that still runs; how many.

    Called on an interrupt, so tasks blocked on a ``kind create`` or a build end at once and the undo
    can start (the undo's own processes start afterwards and are not affected).
    """
    with _LIVE_LOCK:
        live = [p for p in _LIVE if p.poll() is None]
    for proc in live:
        with contextlib.suppress(OSError):
            proc.terminate()
    return len(live)

REDACTED = "***"
CHUNK_BYTES = 1 << 20
_AFTER_KILL = 1.0  # seconds a killed command gets to release its pipes (SIGKILL: at once, unless a child holds them)
# Keys whose values are secrets when passed as KEY=VALUE (build args, env).
_SECRET_KEY = re.compile(r"(pass(word|wd)?|secret|token|api[_-]?key|credential|auth|private[_-]?key)", re.I)
# user:password@ in URLs.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<cred>[^/@\s:]+(:[^/@\s]*)?)@", re.I)


def is_secret_key(key: str) -> bool:
    """Does a KEY of KEY=VALUE name a secret (password, token, API key, credentials…)?"""
    return bool(_SECRET_KEY.search(key))


@dataclass(frozen=True)
class CommandResult:
    """What a finished command returned (output already redacted)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


class Runner(Protocol):
    """Runs one command. Implementations must never use a shell."""

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        check: bool = True,
        cwd: str | None = None,
        verbatim_stdout: bool = False,
    ) -> CommandResult:
        """``verbatim_stdout``: stdout is data (rendered manifests), returned exactly as produced; it is
        never logged, and a failed command's error still shows it redacted."""
        ...

    def pipe(self, producer: Sequence[str], consumers: Sequence[Sequence[str]], *,
             timeout: float | None = None,
             transform: Callable[[IO[bytes]], Iterable[bytes]] | None = None) -> list[CommandResult]:
        """Stream ``producer``'s stdout into every consumer's stdin at once (no temp file).

        Returns one result per consumer (check their return codes: one failing consumer does not
        stop the others). Raises :class:`CommandError` if the producer fails, or if a consumer
        stopped reading before the end of the stream yet exited 0; :class:`CommandTimeoutError`
        when ``timeout`` passes, naming the side that stalled and what it waited for.
        ``transform`` (optional) turns the producer's stdout into the bytes sent (e.g. an archive
        re-emitted with other names); an exception it raises ends the consumers' input and propagates.
        """
        ...

    def stream(self, source: Iterable[bytes], consumers: Sequence[Sequence[str]], *,
               timeout: float | None = None) -> list[CommandResult]:
        """Like :meth:`pipe`, with the bytes made in this process (e.g. an archive assembled on the fly).

        An exception raised by ``source`` ends every consumer's input early and propagates once they
        have exited (bounded by ``timeout`` like the rest).
        """
        ...


@dataclass
class Redactor:
    """Replaces known secret values, secret-looking KEY=VALUE pairs and URL credentials."""

    secrets: set[str] = field(default_factory=set)

    def add(self, *values: str) -> None:
        for value in values:
            if len(value) >= 4:  # shorter values would redact ordinary text
                self.secrets.add(value)

    def text(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)

    def arg(self, arg: str) -> str:
        key, sep, value = arg.partition("=")
        if sep and value and is_secret_key(key):
            return f"{key}={REDACTED}"
        return self.text(arg)

    def argv(self, argv: Iterable[str]) -> tuple[str, ...]:
        return tuple(self.arg(a) for a in argv)


class SubprocessRunner:
    """The real runner: :func:`subprocess.run` with captured output and redaction."""

    def __init__(self, redactor: Redactor | None = None, base_env: Mapping[str, str] | None = None) -> None:
        self.redactor = redactor or Redactor()
        self.base_env = dict(base_env) if base_env is not None else None

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        check: bool = True,
        cwd: str | None = None,
        verbatim_stdout: bool = False,
    ) -> CommandResult:
        argv = [str(a) for a in argv]
        shown = self.redactor.argv(argv)
        log.debug("run: %s", " ".join(shown))
        full_env: dict[str, str] | None = None
        if env is not None or self.base_env is not None:
            full_env = dict(os.environ if self.base_env is None else self.base_env)
            full_env.update(env or {})
        started = time.monotonic()
        try:
            proc = _track(subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else None,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, cwd=cwd))
        except FileNotFoundError as exc:
            raise CommandError(shown, 127, "", f"{argv[0]}: command not found",
                               hint=f"install {argv[0]} or put it on PATH") from exc
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            try:
                out, err = proc.communicate(timeout=_AFTER_KILL)
            except subprocess.TimeoutExpired as held:  # a child of it still holds the pipes: stop reading
                out, err = held.output or exc.output or b"", held.stderr or exc.stderr or b""
                _close(proc)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(_AFTER_KILL)
            text = _decode(err) or _decode(out)
            raise CommandTimeoutError(shown, timeout or 0.0, f"{fanout.describe(shown)} to finish",
                                      output=self.redactor.text(text)) from exc
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            _untrack(proc)
        stdout = self.redactor.text(_decode(out))
        result = CommandResult(
            argv=shown,
            returncode=proc.returncode,
            stdout=_decode(out) if verbatim_stdout else stdout,
            stderr=self.redactor.text(_decode(err)),
            seconds=time.monotonic() - started,
        )
        log.debug("exit %d after %.2fs: %s", result.returncode, result.seconds, shown[0])
        if check and result.returncode != 0:
            raise CommandError(result.argv, result.returncode, stdout, result.stderr)
        return result


    def pipe(self, producer: Sequence[str], consumers: Sequence[Sequence[str]], *,
             timeout: float | None = None,
             transform: Callable[[IO[bytes]], Iterable[bytes]] | None = None) -> list[CommandResult]:
        shown_p = self.redactor.argv(producer)
        shown_cs = [self.redactor.argv(c) for c in consumers]
        log.debug("pipe: %s | %s", " ".join(shown_p), " & ".join(" ".join(c) for c in shown_cs))
        started = time.monotonic()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for argv, shown in zip(consumers, shown_cs, strict=True):
                procs.append(_popen(argv, shown, stdin=subprocess.PIPE))
            prod = _popen(producer, shown_p, stdin=None)
        except CommandError:
            _kill(procs)
            raise
        every = [prod, *procs]
        try:
            side = [fanout.Consumer(p, s, fanout.Activity(f"consumer {fanout.describe(s)}"))
                    for p, s in zip(procs, shown_cs, strict=True)]
            source = fanout.Activity(f"the producer {fanout.describe(shown_p)}")
            transfer = fanout.Transfer(side, source, timeout=timeout, on_all_closed=prod.kill)
            prod_err: list[bytes] = []
            assert prod.stdout is not None
            assert prod.stderr is not None
            transfer.drain(prod.stderr.fileno(), prod_err)
            chunks = fanout.read_fd(prod.stdout.fileno(), transfer.halt, source)
            if transform is not None:
                chunks = iter(transform(cast("IO[bytes]", io.BufferedReader(_ChunkReader(chunks), CHUNK_BYTES))))
            outcome = transfer.run(
                chunks, others=[prod],
                on_stall=lambda: fanout.stall_error(transfer, prod, shown_p, prod_err, self.redactor.text))
        finally:
            _kill(p for p in every if p.poll() is None)
            for p in every:
                _untrack(p)
                _close(p)
        seconds = time.monotonic() - started
        if prod.returncode != 0 and not outcome.all_closed:
            raise CommandError(shown_p, prod.returncode, "", self.redactor.text(_decode(b"".join(prod_err))))
        return self._results(outcome, seconds)

    def stream(self, source: Iterable[bytes], consumers: Sequence[Sequence[str]], *,
               timeout: float | None = None) -> list[CommandResult]:
        shown_cs = [self.redactor.argv(c) for c in consumers]
        log.debug("stream: (bytes) | %s", " & ".join(" ".join(c) for c in shown_cs))
        started = time.monotonic()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for argv, shown in zip(consumers, shown_cs, strict=True):
                procs.append(_popen(argv, shown, stdin=subprocess.PIPE))
        except CommandError:
            _kill(procs)
            raise
        try:
            side = [fanout.Consumer(p, s, fanout.Activity(f"consumer {fanout.describe(s)}"))
                    for p, s in zip(procs, shown_cs, strict=True)]
            origin = fanout.Activity("the byte source of this process")
            transfer = fanout.Transfer(side, origin, timeout=timeout)
            outcome = transfer.run(_counted(iter(source), origin),
                                   on_stall=lambda: fanout.stall_error(transfer, None, ("(bytes)",), [],
                                                                       self.redactor.text))
        finally:
            _kill(p for p in procs if p.poll() is None)
            for p in procs:
                _untrack(p)
                _close(p)
        return self._results(outcome, time.monotonic() - started)

    def _results(self, outcome: fanout.Outcome, seconds: float) -> list[CommandResult]:
        if outcome.source_error is not None and not outcome.all_closed:  # (every consumer gone: theirs is the story)
            raise outcome.source_error
        hidden = fanout.early_exits(outcome, self.redactor.text)
        if hidden is not None:
            raise hidden
        return [CommandResult(c.shown, c.proc.returncode, self.redactor.text(_decode(b"".join(c.stdout))),
                              self.redactor.text(_decode(b"".join(c.stderr))), seconds)
                for c in outcome.consumers]


def _counted(chunks: Iterator[bytes], activity: fanout.Activity) -> Iterator[bytes]:
    """``chunks``, with the source's activity kept for the watchdog's stall report."""
    for chunk in chunks:
        activity.progressed(len(chunk))
        yield chunk
    activity.now("ended")


class _ChunkReader(io.RawIOBase):
    """A readable file over an iterator of chunks (a producer's stdout, for ``pipe(transform=…)``)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _close(proc: subprocess.Popen[bytes]) -> None:
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _kill(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(_AFTER_KILL)


def _popen(argv: Sequence[str], shown: tuple[str, ...], stdin: int | None) -> subprocess.Popen[bytes]:
    try:
        return _track(subprocess.Popen(list(argv), stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    except FileNotFoundError as exc:
        raise CommandError(shown, 127, "", f"{argv[0]}: command not found",
                           hint=f"install {argv[0]} or put it on PATH") from exc


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", errors="replace")


class Command(list[str]):
    """An argv under construction; ``None`` values are skipped so building it stays a pure function."""

    def add_flag(self, name: str, enabled: bool) -> Command:
        if enabled:
            self.append(name)
        return self

    def add_option(self, name: str, value: str | None) -> Command:
        if value is not None:
            self.extend([name, value])
        return self

    def add_repeated(self, name: str, values: Iterable[str]) -> Command:
        for value in values:
            self.extend([name, value])
        return self
