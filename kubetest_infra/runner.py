"""The one chokepoint for subprocesses.

Every external command (docker, podman, kind, git) goes through a :class:`Runner`: argv lists only
(never a shell), output captured, the argv logged at DEBUG with secrets redacted, and failures raised
as :class:`~kubetest_infra.errors.CommandError` carrying argv, exit code and redacted output.
Unit tests inject a recorded runner through the same :class:`Runner` protocol.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kubetest_infra.errors import CommandError

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
_PIPE_QUEUE = 64  # chunks of 1 MiB buffered per consumer
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
    ) -> CommandResult: ...

    def pipe(self, producer: Sequence[str], consumers: Sequence[Sequence[str]], *,
             timeout: float | None = None) -> list[CommandResult]:
        """Stream ``producer``'s stdout into every consumer's stdin at once (no temp file).

        Raises :class:`CommandError` if the producer fails; returns one result per consumer (check
        their return codes: one failing consumer does not stop the others).
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
            out, err = proc.communicate()
            text = _decode(err) or _decode(out) or _decode(exc.stderr) or _decode(exc.output)
            raise CommandError(shown, -1, "", self.redactor.text(text) + f"\ntimed out after {timeout} s",
                               hint="the command hung; check the engine with 'kti doctor'") from exc
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            _untrack(proc)
        result = CommandResult(
            argv=shown,
            returncode=proc.returncode,
            stdout=self.redactor.text(_decode(out)),
            stderr=self.redactor.text(_decode(err)),
            seconds=time.monotonic() - started,
        )
        log.debug("exit %d after %.2fs: %s", result.returncode, result.seconds, shown[0])
        if check and result.returncode != 0:
            raise CommandError(result.argv, result.returncode, result.stdout, result.stderr)
        return result


    def pipe(self, producer: Sequence[str], consumers: Sequence[Sequence[str]], *,
             timeout: float | None = None) -> list[CommandResult]:
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
            for proc in procs:
                proc.kill()
                proc.wait()
            raise
        outputs: list[list[bytes]] = [[b"", b""] for _ in procs]
        drains = [threading.Thread(target=_drain, args=(proc, outputs[i]), daemon=True)
                  for i, proc in enumerate(procs)]
        prod_err: list[bytes] = [b""]

        def read_producer_stderr() -> None:
            prod_err[0] = prod.stderr.read() if prod.stderr else b""

        err_thread = threading.Thread(target=read_producer_stderr, daemon=True)
        for t in [*drains, err_thread]:
            t.start()
        assert prod.stdout is not None
        deadline = None if timeout is None else started + timeout
        # One writer thread and a bounded queue per consumer: a slow node does not stall the others.
        queues: list[queue.Queue[bytes | None]] = [queue.Queue(maxsize=_PIPE_QUEUE) for _ in procs]
        dead: set[int] = set()

        def feed(index: int) -> None:
            proc, q = procs[index], queues[index]
            assert proc.stdin is not None
            while (chunk := q.get()) is not None:
                if index in dead:
                    continue  # keep draining so the producer never blocks on a dead consumer
                try:
                    proc.stdin.write(chunk)
                except (BrokenPipeError, OSError):
                    dead.add(index)  # this consumer died; its exit code tells why
            with contextlib.suppress(BrokenPipeError, OSError):
                proc.stdin.close()

        feeders = [threading.Thread(target=feed, args=(i,), daemon=True) for i in range(len(procs))]
        for t in feeders:
            t.start()
        try:
            while chunk := prod.stdout.read(1 << 20):
                for q in queues:
                    q.put(chunk)
                if len(dead) == len(procs) or (deadline is not None and time.monotonic() > deadline):
                    break
        finally:
            for q in queues:
                q.put(None)
        for t in feeders:
            t.join(timeout=None if deadline is None else max(1.0, deadline - time.monotonic()))
        live = [p for i, p in enumerate(procs) if i not in dead]
        timed_out = deadline is not None and time.monotonic() > deadline
        if timed_out or not live:
            prod.kill()
        remaining = None if deadline is None else max(1.0, deadline - time.monotonic())
        try:
            prod.wait(timeout=remaining)
            for proc in procs:
                proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            timed_out = True
        if timed_out:
            for proc in [prod, *procs]:
                proc.kill()
                proc.wait()
            raise CommandError((*shown_p, "|", *shown_cs[0]), -1, "", f"timed out after {timeout} s",
                               hint="the transfer hung; check the engine and the node")
        for t in [*drains, err_thread]:
            t.join(timeout=10)
        seconds = time.monotonic() - started
        if prod.returncode != 0 and live:
            raise CommandError(shown_p, prod.returncode, "", self.redactor.text(_decode(prod_err[0])))
        return [CommandResult(shown, proc.returncode, self.redactor.text(_decode(out[0])),
                              self.redactor.text(_decode(out[1])), seconds)
                for shown, proc, out in zip(shown_cs, procs, outputs, strict=True)]


def _popen(argv: Sequence[str], shown: tuple[str, ...], stdin: int | None) -> subprocess.Popen[bytes]:
    try:
        return _track(subprocess.Popen(list(argv), stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    except FileNotFoundError as exc:
        raise CommandError(shown, 127, "", f"{argv[0]}: command not found",
                           hint=f"install {argv[0]} or put it on PATH") from exc


def _drain(proc: subprocess.Popen[bytes], sink: list[bytes]) -> None:
    """Read a consumer's stdout and stderr so it never blocks on a full pipe."""
    err_reader = threading.Thread(target=lambda: sink.__setitem__(1, proc.stderr.read() if proc.stderr else b""),
                                  daemon=True)
    err_reader.start()
    sink[0] = proc.stdout.read() if proc.stdout else b""
    err_reader.join()


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
