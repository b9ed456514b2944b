"""A recorded-output runner for unit tests of pure logic (argv construction, parsing)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from kubetest_infra.errors import CommandError
from kubetest_infra.runner import CommandResult

Responder = Callable[[tuple[str, ...]], tuple[int, str, str]]


@dataclass
class RecordingRunner:
    """Answers each argv from ``responses`` (first matching prefix) and records every call."""

    responses: list[tuple[tuple[str, ...], tuple[int, str, str]]] = field(default_factory=list)
    calls: list[tuple[str, ...]] = field(default_factory=list)
    streamed: list[bytes] = field(default_factory=list)  # what each stream() call carried

    def on(self, prefix: Sequence[str], returncode: int = 0, stdout: str = "", stderr: str = "") -> RecordingRunner:
        self.responses.append((tuple(prefix), (returncode, stdout, stderr)))
        return self

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
        call = tuple(argv)
        self.calls.append(call)
        for prefix, (code, out, err) in self.responses:
            if call[: len(prefix)] == prefix:
                if check and code != 0:
                    raise CommandError(call, code, out, err)
                return CommandResult(call, code, out, err, 0.0)
        raise AssertionError(f"unexpected command: {call}")

    def pipe(self, producer: Sequence[str], consumers: Sequence[Sequence[str]], *,
             timeout: float | None = None, transform: object = None) -> list[CommandResult]:
        return [self.run([*producer, "|", *c], timeout=timeout, check=False) for c in consumers]

    def stream(self, source: Iterable[bytes], consumers: Sequence[Sequence[str]], *,
               timeout: float | None = None) -> list[CommandResult]:
        self.streamed.append(b"".join(source))
        return [self.run(["(stream)", "|", *c], timeout=timeout, check=False) for c in consumers]
