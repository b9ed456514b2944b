"""What a Dockerfile declares, read without an engine: stages (``FROM … AS name``), base images and ARGs.

Follows the Dockerfile reference where it matters for checks before a build: parser directives
(``# escape=``), comments, line continuations, here-documents (their bodies are not instructions),
case-insensitive instructions, ``ARG`` before the first ``FROM`` (the only ARGs a ``FROM`` line can
use) and BuildKit's automatic platform ARGs. It does not evaluate anything: the engine still builds.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

# Set by BuildKit for every build; usable in FROM without an ARG line.
AUTOMATIC_ARGS = frozenset({"TARGETPLATFORM", "TARGETOS", "TARGETARCH", "TARGETVARIANT", "BUILDPLATFORM",
                            "BUILDOS", "BUILDARCH", "BUILDVARIANT"})
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_HEREDOC = re.compile(r"<<(-?)([\"']?)([A-Za-z_][A-Za-z0-9_]*)\2")
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


def parse(text: str) -> Dockerfile:
    """Parse Dockerfile text; never raises for content the engine would accept."""
    lines = text.splitlines()
    escape = "\\"
    start = 0
    for start, raw in enumerate(lines):  # noqa: B007 - parser directives only at the very top
        m = _DIRECTIVE.match(raw.strip())
        if not m:
            break
        if m.group(1).lower() == "escape" and m.group(2) in ("\\", "`"):
            escape = m.group(2)
    else:
        start = len(lines)
    instructions: list[Instruction] = []
    i = start
    while i < len(lines):
        first = i
        stripped = lines[i].strip()
        i += 1
        if not stripped or stripped.startswith("#"):
            continue
        joined = stripped
        while joined.endswith(escape) and i < len(lines):
            joined = joined[: -len(escape)]
            nxt = lines[i].strip()
            i += 1
            if not nxt or nxt.startswith("#"):  # comment and empty lines inside a continuation are dropped
                joined += escape
                continue
            joined += " " + nxt
        if joined.endswith(escape):
            joined = joined[: -len(escape)]
        keyword, _, arguments = joined.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), first + 1))
        for heredoc in _HEREDOC.finditer(arguments):  # skip here-document bodies
            strip_tabs, delimiter = heredoc.group(1) == "-", heredoc.group(3)
            while i < len(lines):
                body = lines[i].lstrip("\t") if strip_tabs else lines[i]
                i += 1
                if body.rstrip("\r") == delimiter:
                    break
    return _summarise(instructions)


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
