"""Which images a build pulls in: a Dockerfile read the way the builders read it.

:func:`parse_dockerfile` splits the text into instructions as BuildKit's Dockerfile parser does:
parser directives at the very top (``# syntax=``, ``# escape=`` chooses ``\\`` or the backtick),
comment lines (also inside a continuation), line continuations with the escape character, empty
continuation lines skipped, here-document bodies (``RUN <<EOF``) that are never instructions, and
builder flags (``--platform=…``, ``--from=…``, ``--mount=…``) split off each instruction.

:func:`plan_build` then evaluates what a build of one target uses:

- global ``ARG`` lines (before the first ``FROM``) with their defaults, each expanded with the ARGs
  before it; a ``--build-arg`` overrides a declared ARG and is invisible to ``FROM`` otherwise;
- BuildKit (and buildah) only: the automatic platform ARGs (``BUILDPLATFORM``, ``TARGETARCH``…,
  ``TARGETSTAGE``) that a ``FROM`` line may use without declaring them; the classic builder has none;
- ``FROM [--platform=P] image [AS name]`` with ``$VAR``/``${VAR:-default}`` expansion
  (:mod:`kubetest_infra.shellwords`); ``FROM name`` of an earlier stage; ``FROM scratch``;
- ``COPY --from=`` an earlier stage's name or index, or else an image; ``RUN --mount=…,from=`` a
  stage or else an image (neither expands variables; the builders refuse ``$`` there);
- which stages are built: BuildKit and buildah build only the stages the target needs, the classic
  builder builds every stage up to the target.

The result is a :class:`BuildPlan` whose ``images`` are the external references the engine will
resolve; :mod:`kubetest_infra.build` resolves each to the engine's image id and folds them into the
input digest. Problems a builder would refuse (a blank ``FROM``, an unknown target, a stage used
before it is defined) raise :class:`~kubetest_infra.errors.DockerfileError` naming file and line.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from kubetest_infra.errors import DockerfileError, TagError
from kubetest_infra.shellwords import WordError, expand, variables
from kubetest_infra.tags import parse_ref

BuilderKind = Literal["buildkit", "classic"]
SCRATCH = "scratch"
_DIRECTIVE = re.compile(r"^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_KNOWN_DIRECTIVES = ("syntax", "escape", "check")
_WHITESPACE = re.compile(r"[\t\v\f\r ]+")
_HEREDOC = re.compile(r"^(\d*)<<(-?)\s*([^<]*)$")
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9-_.]*$")
_INDEX = re.compile(r"^[+-]?[0-9]+$")
_FROM_FLAGS = ("platform",)
PLATFORM_ARGS = ("BUILDPLATFORM", "BUILDOS", "BUILDOSVERSION", "BUILDARCH", "BUILDVARIANT", "TARGETPLATFORM",
                 "TARGETOS", "TARGETOSVERSION", "TARGETARCH", "TARGETVARIANT", "TARGETSTAGE")


@dataclass(frozen=True)
class Instruction:
    """One instruction after joining its continuation lines."""

    keyword: str  # upper case: FROM, ARG, COPY, RUN…
    flags: tuple[str, ...]  # builder flags without their leading "--": ("platform=linux/amd64",)
    args: str  # what follows the flags
    line: int  # 1-based line where the instruction starts

    def flag_values(self, name: str) -> list[str]:
        """Values of ``--name=value`` flags (repeatable, e.g. ``--mount``), in order."""
        return [f.partition("=")[2] for f in self.flags if f.partition("=")[0] == name]


@dataclass(frozen=True)
class Dockerfile:
    instructions: tuple[Instruction, ...]
    escape: str = "\\"
    directives: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageUse:
    """An external image the build pulls in, after expansion, and where the Dockerfile uses it."""

    ref: str
    stage: int
    line: int
    via: Literal["FROM", "COPY --from", "RUN --mount from"]
    platform: str | None = None  # FROM --platform, expanded

    def where(self, source: str) -> str:
        return f"{self.via} at {source}:{self.line}"


@dataclass(frozen=True)
class Stage:
    index: int
    name: str | None  # lower case, as the builders compare names
    base: str  # expanded: an image reference, an earlier stage's name, or "scratch"
    base_stage: int | None  # the earlier stage ``base`` names, if it names one
    platform: str | None
    line: int
    needs: tuple[int, ...] = ()  # stages used by COPY --from / RUN --mount from


@dataclass(frozen=True)
class BuildPlan:
    """What one build of ``target`` uses: its stages, the ones built, and the external images."""

    stages: tuple[Stage, ...]
    target: int
    built: tuple[int, ...]  # indexes of the stages the builder runs, in order
    images: tuple[ImageUse, ...]  # external images of the built stages, in Dockerfile order
    args: Mapping[str, str] = field(default_factory=dict)  # the global ARG values FROM lines saw
    source: str = "Dockerfile"  # the file, for messages

    def refs(self) -> list[str]:
        """Distinct external references, in order of first use."""
        return list(dict.fromkeys(use.ref for use in self.images))

    def root_image(self, stage: int | None = None) -> ImageUse | None:
        """The external image ``stage`` (default: the target) is ultimately ``FROM``; None for scratch."""
        current = self.stages[self.target if stage is None else stage]
        while current.base_stage is not None:
            current = self.stages[current.base_stage]
        if current.base == SCRATCH:
            return None
        return next(u for u in self.images if u.stage == current.index and u.via == "FROM")


# -- parsing ---------------------------------------------------------------------------------
def parse_dockerfile(text: str, source: str = "Dockerfile") -> Dockerfile:
    """Split Dockerfile text into instructions; see the module docstring for the rules."""
    lines = text.split("\n")
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    directives: dict[str, str] = {}
    escape = "\\"
    directives_done = False
    instructions: list[Instruction] = []

    def directive(line: str, number: int) -> None:
        nonlocal directives_done, escape
        if directives_done:
            return
        match = _DIRECTIVE.match(line[1:].lstrip()) if line.startswith("#") else None
        key = match.group(1).lower() if match else ""
        if match is None or key not in _KNOWN_DIRECTIVES:
            directives_done = True
            return
        if key in directives:
            raise DockerfileError(source, number, f"only one {key} parser directive can be used",
                                  hint=f"remove the second '# {key}=' line")
        value = match.group(2)
        if key == "escape" and value not in ("\\", "`"):
            raise DockerfileError(source, number, f"invalid escape token {value!r}: it must be \\ or `",
                                  hint="write '# escape=\\' (the default) or '# escape=`'")
        directives[key] = value
        if key == "escape":
            escape = value

    def continued(line: str) -> tuple[str, bool]:
        """(line without a trailing continuation, whether the instruction ends here)."""
        stripped = line.rstrip(" \t")
        if stripped.endswith(escape) and (len(stripped) == 1 or stripped[-2] != escape):
            return stripped[:-1], False
        return line, True

    i = 0
    while i < len(lines):
        number = i + 1
        line = lines[i].rstrip("\r").lstrip()
        i += 1
        directive(line, number)
        if line.startswith("#"):
            line = ""
        line, complete = continued(line)
        if complete and not line:
            continue
        parts = [line]
        while not complete and i < len(lines):
            raw = lines[i].rstrip("\r")
            i += 1
            directive(raw, i)
            if raw.lstrip().startswith("#") or not raw.strip():
                continue  # comments and empty lines inside a continuation are dropped
            raw, complete = continued(raw)
            parts.append(raw)
        ins = _instruction("".join(parts), number, escape, source)
        if ins is None:
            continue
        instructions.append(ins)
        heredoc_keyword = ins.keyword
        if ins.keyword == "ONBUILD":
            heredoc_keyword = ins.args.split(None, 1)[0].upper() if ins.args.strip() else ""
        if heredoc_keyword in ("RUN", "COPY", "ADD") and "<<" in ins.args:
            for name, chomp in _heredocs(" ".join(ins.flags) + " " + ins.args):
                while True:
                    if i >= len(lines):
                        raise DockerfileError(source, number, f"unterminated here-document <<{name}",
                                              hint=f"end it with a line holding only {name}")
                    body = lines[i].rstrip("\r")
                    i += 1
                    if (body.lstrip("\t") if chomp else body) == name:
                        break
    if not instructions:
        raise DockerfileError(source, 0, "the file has no instructions", hint="a Dockerfile needs at least a FROM line")
    return Dockerfile(tuple(instructions), escape, directives)


def _instruction(line: str, number: int, escape: str, source: str) -> Instruction | None:
    parts = _WHITESPACE.split(line.strip(), maxsplit=1)
    if not parts[0]:
        return None
    rest = parts[1] if len(parts) > 1 else ""
    flags, args = _split_flags(rest, escape)
    return Instruction(parts[0].upper(), tuple(flags), args.strip(), number)


def _split_flags(line: str, escape: str) -> tuple[list[str], str]:
    """Leading ``--name=value`` words (quotes and escapes removed) and the rest of the line."""
    flags: list[str] = []
    pos = 0
    while True:
        while pos < len(line) and line[pos].isspace():
            pos += 1
        if not line.startswith("--", pos):
            return flags, line[pos:]
        word: list[str] = []
        quote = ""
        blank_ok = False
        while pos < len(line):
            ch = line[pos]
            if not quote and ch.isspace():
                break
            pos += 1
            if quote:
                if ch == quote:
                    quote = ""
                    continue
            elif ch in ("'", '"'):
                quote, blank_ok = ch, True
                continue
            if ch == escape:
                if pos >= len(line):
                    continue
                ch = line[pos]
                pos += 1
            word.append(ch)
        text = "".join(word)
        if text == "--":
            return flags, line[pos:]
        if text or blank_ok:
            flags.append(text[2:] if text.startswith("--") else text)


def _heredocs(line: str) -> list[tuple[str, bool]]:
    """(terminator, strip leading tabs) of every ``<<WORD`` on an instruction line."""
    found: list[tuple[str, bool]] = []
    for word in _raw_words(line):
        match = _HEREDOC.match(word)
        if not match or not match.group(3):
            continue
        name = match.group(3).replace('"', "").replace("'", "").replace("\\", "")
        if name and not any(c.isspace() for c in name):
            found.append((name, match.group(2) == "-"))
    return found


def _raw_words(line: str) -> list[str]:
    """Whitespace-separated words, quotes kept; ``<<`` keeps the word it introduces attached."""
    words: list[str] = []
    current: list[str] = []
    quote = ""
    i = 0
    while i < len(line):
        ch = line[i]
        if quote:
            current.append(ch)
            quote = "" if ch == quote else quote
        elif ch in ("'", '"'):
            quote = ch
            current.append(ch)
        elif line.startswith("<<", i):
            current.append("<<")
            i += 2
            while i < len(line) and line[i] in " \t":
                current.append(line[i])
                i += 1
            continue
        elif ch.isspace():
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(ch)
        i += 1
    if current:
        words.append("".join(current))
    return words


def _arg_words(args: str, escape: str) -> list[str]:
    """``ARG`` words: split on whitespace outside quotes, quotes and escapes kept for expansion."""
    words: list[str] = []
    current: list[str] = []
    quote = ""
    started = False
    i = 0
    while i < len(args):
        ch = args[i]
        i += 1
        if not quote and ch.isspace():
            if started:
                words.append("".join(current))
                current, started = [], False
            continue
        started = True
        if ch == escape and quote != "'" and i < len(args):
            current.extend((ch, args[i]))
            i += 1
            continue
        if quote and ch == quote:
            quote = ""
        elif not quote and ch in ("'", '"'):
            quote = ch
        current.append(ch)
    if started:
        words.append("".join(current))
    return words


# -- evaluation ------------------------------------------------------------------------------
def platform_args(build_platform: str, target_platform: str, target_stage: str) -> dict[str, str]:
    """BuildKit's automatic ARGs for a build on ``build_platform`` (``os/arch[/variant]``)."""
    def split(p: str) -> tuple[str, str, str]:
        os_, _, rest = p.partition("/")
        arch, _, variant = rest.partition("/")
        return os_, arch, variant

    b_os, b_arch, b_variant = split(build_platform)
    t_os, t_arch, t_variant = split(target_platform)
    return {
        "BUILDPLATFORM": build_platform, "BUILDOS": b_os, "BUILDOSVERSION": "", "BUILDARCH": b_arch,
        "BUILDVARIANT": b_variant, "TARGETPLATFORM": target_platform, "TARGETOS": t_os, "TARGETOSVERSION": "",
        "TARGETARCH": t_arch, "TARGETVARIANT": t_variant, "TARGETSTAGE": target_stage or "default",
    }


def uses_platform_args(text: str) -> bool:
    """Could the file refer to an automatic platform ARG (so the engine's platform is needed)?"""
    return any(name in text for name in PLATFORM_ARGS if name != "TARGETSTAGE")


def plan_build(
    dockerfile: Dockerfile | str,
    build_args: Mapping[str, str] | None = None,
    target: str | None = None,
    *,
    builder: BuilderKind = "buildkit",
    build_platform: str | None = None,
    target_platform: str | None = None,
    source: str = "Dockerfile",
) -> BuildPlan:
    """Evaluate ``dockerfile`` for one build; see the module docstring.

    ``build_platform``/``target_platform`` (``os/arch``) feed BuildKit's automatic platform ARGs;
    without them those ARGs stay unset (the classic builder never sets them).
    """
    df = parse_dockerfile(dockerfile, source) if isinstance(dockerfile, str) else dockerfile
    build_args = dict(build_args or {})
    froms = [ins for ins in df.instructions if ins.keyword == "FROM"]
    if not froms:
        raise DockerfileError(source, 0, "no FROM instruction", hint="start the build stage with FROM <image>")
    names = _stage_names(froms, source)
    target_index = _target_index(names, target, source)

    env: dict[str, str] = {}
    if builder == "buildkit":
        stage_name = names[target_index] or ""
        if build_platform or target_platform:
            bp = build_platform or target_platform or ""
            env.update(platform_args(bp, target_platform or bp, stage_name))
        else:
            env["TARGETSTAGE"] = stage_name or "default"
        env.update({k: v for k, v in build_args.items() if k in PLATFORM_ARGS})

    stages: list[Stage] = []
    uses: list[ImageUse] = []
    for ins in df.instructions:
        if ins.keyword == "FROM":
            stage, use = _from(ins, len(stages), names, env, escape=df.escape, source=source)
            stages.append(stage)
            if use is not None:
                uses.append(use)
        elif not stages:
            if ins.keyword != "ARG":
                raise DockerfileError(source, ins.line, f"{ins.keyword} before the first FROM",
                                      hint="only ARG may come before the first FROM; move it into a build stage")
            _global_arg(ins, env, build_args, df.escape, source)
        elif ins.keyword in ("COPY", "RUN"):
            needs, images = _sources(ins, len(stages) - 1, names, source)
            if needs:
                last = stages[-1]
                stages[-1] = Stage(last.index, last.name, last.base, last.base_stage, last.platform, last.line,
                                   tuple(dict.fromkeys((*last.needs, *needs))))
            uses.extend(images)

    built = _built(stages, target_index, builder)
    used = tuple(u for u in uses if u.stage in built)
    return BuildPlan(tuple(stages), target_index, built, used,
                     {k: v for k, v in env.items() if k not in PLATFORM_ARGS}, source)


def _stage_names(froms: Sequence[Instruction], source: str) -> list[str | None]:
    names: list[str | None] = []
    for ins in froms:
        words = _WHITESPACE.split(ins.args) if ins.args else []
        if len(words) == 3 and words[1].lower() == "as":
            name = words[2].lower()
            if not _STAGE_NAME.match(name):
                raise DockerfileError(source, ins.line, f"invalid name for build stage: {words[2]!r}",
                                      hint="a stage name starts with a letter and holds letters, digits, '-', '_', '.'")
            if name in names:
                raise DockerfileError(source, ins.line, f"duplicate stage name {name!r}",
                                      hint="give every stage its own name")
            names.append(name)
        elif len(words) == 1:
            names.append(None)
        else:
            raise DockerfileError(source, ins.line, f"FROM {ins.args!r}: FROM takes an image and optionally "
                                  "'AS name'", hint="write 'FROM image[:tag] [AS name]'")
    return names


def _target_index(names: Sequence[str | None], target: str | None, source: str) -> int:
    if not target:
        return len(names) - 1
    wanted = target.lower()
    if wanted in names:
        return names.index(wanted)
    known = ", ".join(n for n in names if n) or "none (no FROM … AS name)"
    raise DockerfileError(source, 0, f"target stage {target!r} is not in the Dockerfile",
                          hint=f"stages with a name: {known}")


def _global_arg(ins: Instruction, env: dict[str, str], build_args: Mapping[str, str], escape: str,
                source: str) -> None:
    words = _arg_words(ins.args, escape)
    if not words:
        raise DockerfileError(source, ins.line, "ARG without a name", hint="write 'ARG NAME' or 'ARG NAME=default'")
    for word in words:
        key, sep, value = word.partition("=")
        if not key:
            raise DockerfileError(source, ins.line, f"ARG {word!r} has no name", hint="write 'ARG NAME=default'")
        if key in build_args:
            env[key] = build_args[key]
        elif sep:
            env[key] = _expand(value, env, escape, source=source, line=ins.line, what=f"ARG {key}")


def _expand(word: str, env: Mapping[str, str], escape: str, *, source: str, line: int, what: str) -> str:
    try:
        return expand(word, env, escape)
    except WordError as exc:
        raise DockerfileError(source, line, f"{what}: cannot expand {word!r}: {exc}",
                              hint="fix the ${...} expression (see the Dockerfile reference, 'Environment "
                                   "replacement'), or pass the variable with a build arg") from exc


def _from(ins: Instruction, index: int, names: Sequence[str | None], env: Mapping[str, str], *, escape: str,
          source: str) -> tuple[Stage, ImageUse | None]:
    written = _WHITESPACE.split(ins.args)[0]
    for flag in ins.flags:
        if flag.partition("=")[0] not in _FROM_FLAGS:
            raise DockerfileError(source, ins.line, f"FROM: unknown flag --{flag.partition('=')[0]}",
                                  hint="FROM takes only --platform=<os/arch>")
    platform: str | None = None
    for value in ins.flag_values("platform"):
        platform = _expand(value, env, escape, source=source, line=ins.line, what="FROM --platform")
        if not platform:
            raise DockerfileError(source, ins.line, f"FROM --platform={value} expands to nothing",
                                  hint=_unset_hint(value, env))
    base = _expand(written, env, escape, source=source, line=ins.line, what="FROM")
    if not base:
        raise DockerfileError(source, ins.line, f"FROM {written} expands to nothing (the base name is blank)",
                              hint=_unset_hint(written, env))
    earlier = [n for n in names[:index] if n]
    if base in earlier:  # exact: the builders compare the expanded name with the lower-cased stage names
        return Stage(index, names[index], base, names.index(base), platform, ins.line), None
    stage = Stage(index, names[index], base, None, platform, ins.line)
    if base == SCRATCH:
        return stage, None
    _check_ref(base, source, ins.line, f"FROM {written}" + (f" (= {base})" if base != written else ""))
    return stage, ImageUse(base, index, ins.line, "FROM", platform)


def _unset_hint(word: str, env: Mapping[str, str]) -> str:
    unset = [v for v in variables(word) if not env.get(v)]
    if not unset:
        return "check the ${...} expression"
    names = ", ".join(unset)
    return (f"{names} {'is' if len(unset) == 1 else 'are'} not set: declare it with ARG before the first FROM "
            "and give it a default, or pass it as a build arg (suite.yaml build_args, --build-arg)")


def _check_ref(ref: str, source: str, line: int, what: str) -> None:
    try:
        parse_ref(ref)
    except TagError as exc:
        raise DockerfileError(source, line, f"{what}: {ref!r} is not a valid image reference ({exc.message})",
                              hint="use a lowercase name[:tag][@digest], or the name of an earlier stage") from exc


def _sources(ins: Instruction, current: int, names: Sequence[str | None],
             source: str) -> tuple[list[int], list[ImageUse]]:
    """Stages and images a COPY --from / RUN --mount from= brings into stage ``current``."""
    needs: list[int] = []
    images: list[ImageUse] = []
    refs: list[tuple[str, Literal["COPY --from", "RUN --mount from"]]] = []
    if ins.keyword == "COPY":
        refs = [(v, "COPY --from") for v in ins.flag_values("from")]
    else:
        for mount in ins.flag_values("mount"):
            refs.extend((v, "RUN --mount from") for v in _mount_from(mount, ins, source))
    for value, via in refs:
        if not value or value == SCRATCH:  # scratch is the empty image: nothing to pull
            continue
        dollar = value.find("$")
        if dollar not in (-1, len(value) - 1):
            raise DockerfileError(source, ins.line, f"{via}={value}: the builders do not expand variables here",
                                  hint="add a stage 'FROM ${VAR} AS name' (with a global ARG VAR) and use "
                                       f"{via}=name")
        if via == "COPY --from" and _INDEX.match(value):
            stage = int(value)
            if not 0 <= stage < current:
                raise DockerfileError(source, ins.line, f"COPY --from={value}: there is no earlier stage {value}",
                                      hint=f"stages before this one are numbered 0 to {current - 1}"
                                      if current else "this is the first stage: name an image instead")
            needs.append(stage)
            continue
        lowered = value.lower()
        if lowered in names:
            stage = names.index(lowered)
            if stage >= current:
                raise DockerfileError(source, ins.line, f"{via}={value}: stage {lowered!r} is defined after "
                                      "this one", hint="move that stage above the one that uses it")
            needs.append(stage)
            continue
        _check_ref(value, source, ins.line, f"{via}={value}")
        images.append(ImageUse(value, current, ins.line, via))
    return needs, images


def _mount_from(spec: str, ins: Instruction, source: str) -> list[str]:
    try:
        fields = next(csv.reader([spec]))
    except (csv.Error, StopIteration) as exc:
        raise DockerfileError(source, ins.line, f"RUN --mount={spec}: cannot read the mount options",
                              hint="write --mount=type=bind,from=stage,source=/x,target=/y") from exc
    return [value for key, sep, value in (f.partition("=") for f in fields) if sep and key.lower() == "from"]


def _built(stages: Sequence[Stage], target: int, builder: BuilderKind) -> tuple[int, ...]:
    if builder == "classic":
        return tuple(range(target + 1))
    seen: set[int] = set()
    todo = [target]
    while todo:
        index = todo.pop()
        if index in seen:
            continue
        seen.add(index)
        stage = stages[index]
        if stage.base_stage is not None:
            todo.append(stage.base_stage)
        todo.extend(stage.needs)
    return tuple(sorted(seen))
