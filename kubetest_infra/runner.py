"""The one chokepoint for subprocesses.

Every external command (docker, podman, kind, git) goes through a :class:`Runner`: argv lists only
(never a shell), output captured, the argv logged at DEBUG with secrets redacted, and failures raised
as :class:`~kubetest_infra.errors.CommandError` carrying argv, exit code and redacted output.
Unit tests inject a recorded runner through the same :class:`Runner` protocol.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kubetest_infra.errors import CommandError

log = logging.getLogger("kubetest_infra.runner")

REDACTED = "***"
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

    def pipe(self, producer: Sequence[str], consumer: Sequence[str], *, timeout: float | None = None) -> CommandResult:
        """Stream ``producer``'s stdout into ``consumer``'s stdin (no temp file); raise if either fails."""
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
            proc = subprocess.run(
                argv,
                input=input,
                capture_output=True,
                env=full_env,
                timeout=timeout,
                check=False,
                cwd=cwd,
            )
        except FileNotFoundError as exc:
            raise CommandError(shown, 127, "", f"{argv[0]}: command not found",
                               hint=f"install {argv[0]} or put it on PATH") from exc
        except subprocess.TimeoutExpired as exc:
            out = _decode(exc.stderr) or _decode(exc.output)
            raise CommandError(shown, -1, "", self.redactor.text(out) + f"\ntimed out after {timeout} s",
                               hint="the command hung; check the engine with 'kti doctor'") from exc
        result = CommandResult(
            argv=shown,
            returncode=proc.returncode,
            stdout=self.redactor.text(_decode(proc.stdout)),
            stderr=self.redactor.text(_decode(proc.stderr)),
            seconds=time.monotonic() - started,
        )
        log.debug("exit %d after %.2fs: %s", result.returncode, result.seconds, shown[0])
        if check and result.returncode != 0:
            raise CommandError(result.argv, result.returncode, result.stdout, result.stderr)
        return result


    def pipe(self, producer: Sequence[str], consumer: Sequence[str], *, timeout: float | None = None) -> CommandResult:
        shown_p, shown_c = self.redactor.argv(producer), self.redactor.argv(consumer)
        log.debug("pipe: %s | %s", " ".join(shown_p), " ".join(shown_c))
        started = time.monotonic()
        try:
            prod = subprocess.Popen(list(producer), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError as exc:
            raise CommandError(shown_p, 127, "", f"{producer[0]}: command not found",
                               hint=f"install {producer[0]} or put it on PATH") from exc
        try:
            cons = subprocess.Popen(list(consumer), stdin=prod.stdout, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        except FileNotFoundError as exc:
            prod.kill()
            prod.wait()
            raise CommandError(shown_c, 127, "", f"{consumer[0]}: command not found",
                               hint=f"install {consumer[0]} or put it on PATH") from exc
        assert prod.stdout is not None
        prod.stdout.close()  # the consumer holds the only read end: a dying consumer stops the producer
        try:
            out, err = cons.communicate(timeout=timeout)
            prod_err = prod.stderr.read() if prod.stderr else b""
            prod.wait(timeout=30)
        except subprocess.TimeoutExpired as exc:
            for proc in (prod, cons):
                proc.kill()
                proc.wait()
            raise CommandError((*shown_p, "|", *shown_c), -1, "", f"timed out after {timeout} s",
                               hint="the transfer hung; check the engine and the node") from exc
        finally:
            if prod.stderr:
                prod.stderr.close()
        seconds = time.monotonic() - started
        if prod.returncode != 0:
            raise CommandError(shown_p, prod.returncode, "", self.redactor.text(_decode(prod_err)))
        if cons.returncode != 0:
            raise CommandError(shown_c, cons.returncode, self.redactor.text(_decode(out)),
                               self.redactor.text(_decode(err)))
        return CommandResult((*shown_p, "|", *shown_c), 0, self.redactor.text(_decode(out)),
                             self.redactor.text(_decode(err)), seconds)


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
