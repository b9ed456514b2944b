"""``.dockerignore`` with the engine's exact semantics.

Mirrors what the docker CLI does before it sends a context (moby ``ignorefile.ReadAll``,
``patternmatcher`` and the archive walk):

- lines starting with ``#`` are comments; whitespace is trimmed; ``!`` negates; each pattern is
  ``filepath.Clean``-ed and a leading ``/`` dropped, so ``/foo`` and ``foo`` are the same;
- ``*`` and ``?`` never cross ``/``; ``**`` spans any number of directories (also zero);
  ``[...]`` classes and ``\\`` escapes pass through to the regular expression;
- a path is excluded when the last pattern matching it, or one of its parent directories, is not a
  ``!`` exception;
- an excluded directory is not descended into unless an exception pattern starts with its path
  (so ``!**/keep`` does not re-include files under an excluded directory: the engine skips them too).

The Dockerfile-specific ignore file (``<Dockerfile>.dockerignore``) is a BuildKit feature: the
classic builder only reads ``<context>/.dockerignore``. :func:`ignore_file_for` takes the engine's
mode into account; Podman reads ``.containerignore`` first (:data:`IGNORE_ORDER_PODMAN`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kubetest_infra.errors import ContextError

_ESCAPE = set(".+()|{}$")


def go_clean(path: str) -> str:
    """Go's ``filepath.Clean`` for slash-separated paths."""
    if path == "":
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(part)
    out = "/".join(parts)
    if rooted:
        return "/" + out
    return out or "."


def read_patterns(text: str) -> list[str]:
    """Parse the text of an ignore file like moby's ``ignorefile.ReadAll``."""
    patterns: list[str] = []
    for number, raw in enumerate(text.splitlines()):
        line = raw.removeprefix("\ufeff") if number == 0 else raw
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = go_clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append("!" + pattern if invert else pattern)
    return patterns


@dataclass(frozen=True)
class Pattern:
    """One compiled pattern."""

    text: str
    exclusion: bool
    kind: str  # exact | prefix | suffix | regexp
    regexp: re.Pattern[str] | None

    def match(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.text
        if self.kind == "prefix":
            return path.startswith(self.text[:-2])
        if self.kind == "suffix":
            suffix = self.text[2:]
            if path.endswith(suffix):
                return True
            return suffix.startswith("/") and path == suffix[1:]
        assert self.regexp is not None
        return self.regexp.match(path) is not None


def compile_pattern(raw: str, source: str = ".dockerignore") -> Pattern:
    text = go_clean(raw.strip())
    exclusion = text.startswith("!")
    if exclusion:
        if len(text) == 1:
            raise ContextError(f'{source}: illegal exclusion pattern "!"', hint="remove the lone '!' line")
        text = text[1:]
    regex = "^"
    kind = "exact"
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "*":
            if i + 1 < n and text[i + 1] == "*":
                start = i
                i += 2
                if i < n and text[i] == "/":
                    i += 1
                if i >= n:
                    if kind == "exact":
                        kind = "prefix"
                    else:
                        regex += ".*"
                        kind = "regexp"
                else:
                    regex += "(.*/)?"
                    kind = "regexp"
                if start == 0:
                    kind = "suffix"
                continue
            regex += "[^/]*"
            kind = "regexp"
        elif ch == "?":
            regex += "[^/]"
            kind = "regexp"
        elif ch in _ESCAPE:
            regex += "\\" + ch
        elif ch == "\\":
            if i + 1 < n:
                regex += "\\" + text[i + 1]
                i += 1
                kind = "regexp"
            else:
                regex += "\\\\"
        elif ch in "[]":
            regex += ch
            kind = "regexp"
        else:
            regex += ch  # passed through raw, as the Go implementation does
        i += 1
    compiled: re.Pattern[str] | None = None
    if kind == "regexp":
        try:
            compiled = re.compile(regex + "$")
        except re.error as exc:
            raise ContextError(
                f"{source}: bad pattern {raw!r}: {exc}",
                hint="check brackets and escapes; patterns follow Go's filepath.Match syntax",
            ) from exc
    if _has_unbalanced_bracket(text):
        raise ContextError(
            f"{source}: bad pattern {raw!r}: unclosed '['",
            hint="close the character class or escape the bracket with '\\['",
        )
    return Pattern(text=text, exclusion=exclusion, kind=kind, regexp=compiled)


def _has_unbalanced_bracket(text: str) -> bool:
    depth = 0
    escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "[":
            depth += 1
        elif ch == "]" and depth:
            depth -= 1
    return depth > 0


class Matcher:
    """A list of patterns, evaluated like ``PatternMatcher.MatchesOrParentMatches``."""

    def __init__(self, patterns: list[str], source: str = ".dockerignore") -> None:
        self.patterns = [compile_pattern(p, source) for p in patterns if p.strip()]
        self.has_exclusions = any(p.exclusion for p in self.patterns)

    def excluded(self, path: str) -> bool:
        """Is the slash-separated relative ``path`` excluded?"""
        matched = False
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        parents = parent.split("/") if parent else []
        for pattern in self.patterns:
            if pattern.exclusion != matched:
                continue
            hit = pattern.match(path)
            if not hit and parents:
                for i in range(len(parents)):
                    if pattern.match("/".join(parents[: i + 1])):
                        hit = True
                        break
            if hit:
                matched = not pattern.exclusion
        return matched

    def must_descend(self, directory: str) -> bool:
        """Whether an excluded ``directory`` must still be walked (an exception starts with it)."""
        if not self.has_exclusions:
            return False
        prefix = directory + "/"
        return any(p.exclusion and (p.text + "/").startswith(prefix) for p in self.patterns)


IGNORE_ORDER_PODMAN = ("<Dockerfile>.dockerignore", "<Dockerfile>.containerignore", ".containerignore", ".dockerignore")


def ignore_file_for(context: Path, dockerfile: Path, buildkit: bool, engine: str = "docker") -> Path | None:
    """The ignore file the engine will read, or None.

    Docker: BuildKit prefers ``<Dockerfile>.dockerignore`` next to the Dockerfile; the classic
    builder only knows ``<context>/.dockerignore``. Podman (Buildah) reads the first that exists of
    :data:`IGNORE_ORDER_PODMAN`: ``.containerignore`` takes precedence over ``.dockerignore``, and a
    Dockerfile-specific file over both (order measured on Podman 4.3.1 and checked by the engine-truth
    test, tests/integration/test_dockerignore_engine.py).
    """
    if engine == "podman":
        for name in IGNORE_ORDER_PODMAN:
            path = dockerfile.with_name(dockerfile.name + name[len("<Dockerfile>"):]) \
                if name.startswith("<Dockerfile>") else context / name
            if path.is_file():
                return path
        return None
    if buildkit:
        specific = dockerfile.with_name(dockerfile.name + ".dockerignore")
        if specific.is_file():
            return specific
    default = context / ".dockerignore"
    return default if default.is_file() else None


def load_matcher(context: Path, dockerfile: Path, buildkit: bool,
                 engine: str = "docker") -> tuple[Matcher, Path | None]:
    path = ignore_file_for(context, dockerfile, buildkit, engine)
    if path is None:
        return Matcher([]), None
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ContextError(f"cannot read {path}: {exc.strerror}", hint="check the file's permissions") from exc
    return Matcher(read_patterns(text), source=str(path)), path
