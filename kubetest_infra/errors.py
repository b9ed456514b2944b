"""Exceptions raised by kubetest-infra.

Every error says what happened and carries a ``Hint:`` line saying what to do next::

    KtiError
    ├── ConfigError            bad input from the user (spec, option, environment variable)
    │   ├── TagError           an image reference or tag that breaks DD-TEST-001 or Docker's grammar
    │   ├── ContextError       a build context or Dockerfile that cannot be used
    │   │   └── DockerfileError    a Dockerfile the builders would refuse (file and line named)
    │   └── InputError         one or more :class:`Problem` values (file, field, message, hint), all at once
    │       ├── SuiteError         suite.yaml (kubetest_infra.suite)
    │       └── PreflightError     what is knowable before anything starts (kubetest_infra.preflight)
    ├── CommandError           a subprocess failed (argv, return code, redacted output)
    │   └── CommandTimeoutError    it did not finish in time (what was waited for, which side stalled)
    ├── EngineError            the container engine
    │   ├── UnknownEngineError     a name that is neither docker nor podman
    │   └── EngineUnavailableError the engine binary is missing or its daemon does not answer
    ├── BuildError             ``docker build`` failed (carries the tail of the build log)
    │   ├── StaleImageError    the image does not hold what the working tree (or a base tag) holds
    │   ├── BaseImageError     a base image is not in the engine and cannot be pulled
    │   └── BuildTimeoutError  the build did not finish within the build timeout
    └── MultiBuildError        several builds in parallel: successes and every failure
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from kubetest_infra.build import BuiltImage


class KtiError(Exception):
    """Base class: a message saying what happened and a hint saying what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        if not self.hint:
            return self.message
        return f"{self.message}\nHint: {self.hint}"


class ConfigError(KtiError):
    """Invalid user input: a spec, an option or an environment variable."""


class TagError(ConfigError):
    """An image reference or tag that is not allowed."""


class ContextError(ConfigError):
    """A build context or Dockerfile that cannot be used."""


class DockerfileError(ContextError):
    """A Dockerfile the builders would refuse, found before anything is built."""

    def __init__(self, source: str, line: int, message: str, hint: str) -> None:
        self.source = source
        self.line = line
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {message}", hint)


_E = TypeVar("_E", bound="InputError")


@dataclass(frozen=True)
class Problem:
    """One bad input: the file the user wrote, the field in it (may be empty), what is wrong, what to do."""

    file: str
    field: str
    message: str
    hint: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}" if self.field else f"{self.file}: {self.message}"


class InputError(ConfigError):
    """Bad input found by reading files: every :class:`Problem` at once, each with its own hint.

    One problem reads ``FILE: FIELD: MESSAGE`` + ``Hint: HINT``; several are listed one per line,
    each followed by its hint.
    """

    def __init__(self, message: str, hint: str = "", problems: Iterable[Problem] = ()) -> None:
        self.problems = tuple(problems)
        super().__init__(message, hint)

    @classmethod
    def of(cls: type[_E], problems: Sequence[Problem], what: str = "problems") -> _E:
        """One exception of this class for ``problems`` (at least one)."""
        if not problems:
            raise ValueError("no problems")
        if len(problems) == 1:
            return cls(str(problems[0]), problems[0].hint, problems)
        lines = [f"{len(problems)} {what}; nothing was started:"]
        for p in problems:
            lines.append(f"  - {p}")
            lines.append(f"    Hint: {p.hint}")
        return cls("\n".join(lines), "fix each problem above (each has its own hint); docs/configuration.md describes "
                   "every suite.yaml field", problems)


class CommandError(KtiError):
    """A subprocess exited non-zero (or could not start). Output is already redacted."""

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int,
        stdout: str,
        stderr: str,
        hint: str = "",
    ) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        tail = tail_lines(stderr or stdout, 20)
        message = f"command failed (exit {returncode}): {' '.join(self.argv)}"
        if tail:
            message += "\n" + indent(tail)
        super().__init__(message, hint)


class CommandTimeoutError(CommandError):
    """A command (or one side of a pipe) did not finish within its timeout; it was killed.

    ``waited_for`` says what was being waited for (``"docker save x to produce output"``,
    ``"node-1's importer to read its input"``…); ``side`` is ``"command"``, ``"producer"`` or
    ``"consumer"``.
    """

    def __init__(self, argv: Sequence[str], timeout: float, waited_for: str, *, side: str = "command",
                 output: str = "", hint: str = "") -> None:
        self.timeout = timeout
        self.waited_for = waited_for
        self.side = side
        detail = f"timed out after {timeout:g} s waiting for {waited_for}"
        super().__init__(argv, -1, "", f"{output.rstrip()}\n{detail}" if output.strip() else detail,
                         hint=hint or "the command hung; check the engine with 'kti doctor'")


class EngineError(KtiError):
    """The container engine misbehaved."""


class UnknownEngineError(EngineError, ConfigError):
    """An engine name other than the supported ones."""


class EngineUnavailableError(EngineError):
    """The engine's CLI is missing or its daemon does not answer."""


class BuildError(KtiError):
    """An image build failed."""

    def __init__(self, message: str, hint: str = "", log_tail: str = "") -> None:
        self.log_tail = log_tail
        if log_tail:
            message = f"{message}\n--- last lines of the build log ---\n{indent(log_tail)}"
        super().__init__(message, hint)


class StaleImageError(BuildError):
    """The image's recorded input digest does not match the build inputs."""

    def __init__(
        self,
        ref: str,
        expected: str,
        actual: str,
        changed: Sequence[str] = (),
        *,
        reason: str = "",
        hint: str = "",
    ) -> None:
        self.ref = ref
        self.expected = expected
        self.actual = actual
        self.changed = tuple(changed)
        lines = [
            f"stale image {ref}: {reason or 'input digest mismatch'}",
            f"  expected input digest: {expected}",
            f"  actual input digest:   {actual}",
        ]
        if self.changed:
            shown = ", ".join(self.changed[:10])
            more = f" (+{len(self.changed) - 10} more)" if len(self.changed) > 10 else ""
            lines.append(f"  inputs that differ: {shown}{more}")
        super().__init__(
            "\n".join(lines),
            hint=hint or (
                "the image does not hold the sources now in the working tree; build again "
                "(pass rebuild_on_stale=True / --rebuild-on-stale for one automatic --no-cache rebuild), "
                "and do not edit sources while a build runs"
            ),
        )


class BaseImageError(BuildError):
    """A base image (``FROM``, ``COPY --from``, ``RUN --mount=from=``) cannot be resolved or pulled."""

    def __init__(self, ref: str, message: str, hint: str, log_tail: str = "") -> None:
        self.ref = ref
        super().__init__(message, hint, log_tail)


class BuildTimeoutError(BuildError):
    """A build did not finish within the builder's build timeout; it was stopped."""

    def __init__(self, message: str, timeout: float, hint: str, log_tail: str = "") -> None:
        self.timeout = timeout
        super().__init__(message, hint, log_tail)


class MultiBuildError(KtiError):
    """Some builds of a parallel group failed; successes are kept in ``images``."""

    def __init__(self, images: Mapping[str, BuiltImage], errors: Mapping[str, BaseException]) -> None:
        self.images = dict(images)
        self.errors = dict(errors)
        parts = [f"{len(self.errors)} of {len(self.errors) + len(self.images)} image builds failed:"]
        for name, err in sorted(self.errors.items()):
            parts.append(f"- {name}: " + indent(str(err)).lstrip())
        if self.images:
            parts.append("built: " + ", ".join(sorted(f"{n} ({i.ref})" for n, i in self.images.items())))
        super().__init__("\n".join(parts), hint="fix the failing builds above; each error has its own hint")


def tail_lines(text: str, count: int) -> str:
    """The last ``count`` non-empty lines of ``text``."""
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-count:])


def indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())
