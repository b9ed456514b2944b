"""What a Dockerfile declares, read without an engine: stages (``FROM … AS name``), base images and ARGs.

The text is read by the same lexer the builds use (:mod:`kubetest_infra.buildplan`: parser directives,
comments, continuations, here-documents), so preflight and the build never disagree on what the file
says; this module only summarises it for checks that name suite.yaml fields: stages, the ``ARG``s before
the first ``FROM`` (the only ones a ``FROM`` line can use) and BuildKit's automatic platform ARGs.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from kubetest_infra.buildplan import parse_dockerfile

# Set by BuildKit for every build; usable in FROM without an ARG line.
AUTOMATIC_ARGS = frozenset({"TARGETPLATFORM", "TARGETOS", "TARGETARCH", "TARGETVARIANT", "BUILDPLATFORM",
                            "BUILDOS", "BUILDARCH", "BUILDVARIANT"})
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(:?[-+?][^}]*)?\}|([A-Za-z_][A-Za-z0-9_]*))")


@dataclass(frozen=True)
class Stage:
    index: int
    base: str  # the image (or earlier stage) as written, variables unexpanded
    name: str | None  # lowercased, as the builders compare it
    line: int


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    arguments: str
    line: int  # 1-based line of the instruction's first line


@dataclass(frozen=True)
class Dockerfile:
    instructions: tuple[Instruction, ...]
    stages: tuple[Stage, ...]
    global_args: Mapping[str, str | None] = field(default_factory=dict)  # ARG before the first FROM
    declared_args: frozenset[str] = frozenset()  # every ARG name anywhere

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages if s.name)

    def has_stage(self, target: str) -> bool:
        return target.lower() in self.stage_names

    def unresolved_base_args(self, build_args: Mapping[str, str]) -> list[tuple[Stage, str]]:
        """(stage, ARG) pairs where a ``FROM`` line uses an ARG that will expand to nothing.

        A FROM sees only ARGs declared before the first FROM; one without a default needs a build arg.
        ``${NAME:-default}`` and the automatic platform ARGs always resolve.
        """
        missing: list[tuple[Stage, str]] = []
        for stage in self.stages:
            for m in _VARIABLE.finditer(stage.base):
                name = m.group(1) or m.group(3)
                modifier = m.group(2) or ""
                if modifier.lstrip(":").startswith("-") or name in AUTOMATIC_ARGS:
                    continue
                declared = name in self.global_args
                if not declared or (self.global_args[name] is None and name not in build_args):
                    missing.append((stage, name))
        return missing


def parse(text: str, source: str = "Dockerfile") -> Dockerfile:
    """Read Dockerfile text with the builder's own lexer (:func:`buildplan.parse_dockerfile`: directives,
    continuations, here-documents), then summarise stages and ARGs. Raises ``DockerfileError`` only for
    text the builders would refuse too."""
    parsed = parse_dockerfile(text, source)
    return _summarise([Instruction(i.keyword, " ".join([*(f"--{f}" for f in i.flags), i.args]).strip(), i.line)
                       for i in parsed.instructions])


def _summarise(instructions: list[Instruction]) -> Dockerfile:
    stages: list[Stage] = []
    global_args: dict[str, str | None] = {}
    declared: set[str] = set()
    for ins in instructions:
        if ins.keyword == "FROM":
            words = [w for w in ins.arguments.split() if not w.startswith("--")]
            base = words[0] if words else ""
            name = words[2].lower() if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append(Stage(len(stages), base, name, ins.line))
        elif ins.keyword == "ARG":
            for name, default in _arg_pairs(ins.arguments):
                declared.add(name)
                if not stages:
                    global_args[name] = default
    return Dockerfile(tuple(instructions), tuple(stages), global_args, frozenset(declared))


def _arg_pairs(arguments: str) -> list[tuple[str, str | None]]:
    try:
        words = shlex.split(arguments, posix=True)
    except ValueError:  # an unbalanced quote: take the words as written
        words = arguments.split()
    pairs: list[tuple[str, str | None]] = []
    for word in words:
        name, sep, default = word.partition("=")
        if name:
            pairs.append((name, default if sep else None))
    return pairs
