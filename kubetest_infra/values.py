"""Helm values for a run: image placeholders, ``set`` keys, merging, and which key produced a string.

Placeholders, in the strings of a service's values files and ``helm.set`` (pure functions, no I/O)::

    ${image:NAME}              the run's reference          localhost/datastorage:ds-1a2b3c4d5e6f
    ${image.repository:NAME}   without tag and digest       localhost/datastorage
    ${image.tag:NAME}          the tag                      ds-1a2b3c4d5e6f
    ${image.digest:NAME}       the digest (only a reference that carries one, e.g. an external image
                               pinned by digest; images the run builds are loaded by tag)

so any chart's image schema (``image: REF``, ``image.repository`` + ``image.tag``, ``image.digest``)
is fed the exact reference. ``helm.set`` keys use Helm's ``--set`` syntax (``a.b``, ``a\\.b`` for a dot
in a key, ``a[0].b``); their values keep their YAML types (a quoted ``"1.0"`` stays a string), and
they are merged like ``--set`` over the values files, which merge in order (maps deep, anything else
replaced). The result is one values document handed to ``helm template`` on its stdin: no value is
ever put on a command line or in a temp file.

:func:`origins` answers the drift guard's question "which values key produced this string?": every
leaf of the chart's ``values.yaml``, the values files and ``set``, with the layer (file) that decides
it, so a refused ``localhost/app:0.1.0`` can be traced to ``image.tag = 0.1.0 (values.yaml)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubetest_infra.errors import ConfigError
from kubetest_infra.tags import parse_ref

PARTS = ("repository", "tag", "digest")
PLACEHOLDER = re.compile(r"\$\{image(?:\.([a-z]+))?:([^}]*)\}")
_INDEX = re.compile(r"\[(\d+)\]")


class ValuesError(ValueError):
    """A placeholder or key that cannot be used; the caller names the field."""


@dataclass(frozen=True)
class Placeholder:
    text: str  # as written
    part: str | None  # None: the whole reference
    name: str


def placeholders(text: str) -> list[Placeholder]:
    """Every ``${image…:NAME}`` in ``text`` (also ones with an unknown part, for reporting)."""
    return [Placeholder(m.group(0), m.group(1), m.group(2)) for m in PLACEHOLDER.finditer(text)]


def check_placeholder(p: Placeholder, known: Sequence[str]) -> str | None:
    """Why a placeholder cannot be substituted whatever the run builds (None: it can)."""
    if p.part is not None and p.part not in PARTS:
        return f"{p.text}: unknown part {p.part!r} (use ${{image:NAME}} or image.{', image.'.join(PARTS)})"
    if p.name not in known:
        return f"{p.text} names no image of the suite (declared: {', '.join(sorted(known)) or 'none'})"
    return None


def image_part(ref: str, part: str | None) -> str:
    """The part of ``ref`` a placeholder asks for."""
    if part is None:
        return ref
    parsed = parse_ref(ref)
    if part == "repository":
        return parsed.repository
    if part == "tag":
        if parsed.tag is None:
            raise ValuesError(f"{ref} has no tag")
        return parsed.tag
    if part == "digest":
        if parsed.digest is None:
            raise ValuesError(f"{ref} carries no digest (images the run builds are loaded by tag: use "
                              "${image.tag:NAME}, or pin the external image by digest)")
        return parsed.digest
    raise ValuesError(f"unknown placeholder part {part!r}")


def substitute(text: str, refs: Mapping[str, str]) -> str:
    """``text`` with every placeholder replaced from ``refs`` (image name → reference)."""
    def repl(m: re.Match[str]) -> str:
        p = Placeholder(m.group(0), m.group(1), m.group(2))
        why = check_placeholder(p, list(refs))
        if why:
            raise ValuesError(why)
        try:
            return image_part(refs[p.name], p.part)
        except ConfigError as exc:
            raise ValuesError(f"{p.text}: {exc.message}") from exc
        except ValuesError as exc:
            raise ValuesError(f"{p.text}: {exc}") from exc

    return PLACEHOLDER.sub(repl, text)


def substitute_tree(node: Any, refs: Mapping[str, str], path: str = "") -> tuple[Any, list[tuple[str, str]]]:
    """A copy of a values tree with placeholders substituted in its strings, and (key, problem) pairs."""
    problems: list[tuple[str, str]] = []

    def walk(n: Any, at: str) -> Any:
        if isinstance(n, dict):
            return {k: walk(v, f"{at}.{k}" if at else str(k)) for k, v in n.items()}
        if isinstance(n, list):
            return [walk(v, f"{at}[{i}]") for i, v in enumerate(n)]
        if isinstance(n, str) and "${image" in n:
            try:
                return substitute(n, refs)
            except ValuesError as exc:
                problems.append((at, str(exc)))
        return n

    return walk(node, path), problems


# -- set keys ----------------------------------------------------------------------------------------
Key = list[str | int]


def parse_key(key: str) -> Key:
    """A ``--set`` key as path parts: ``a.b[0].c`` → ``["a", "b", 0, "c"]``; ``a\\.b`` is one part."""
    parts: Key = []
    for raw in re.split(r"(?<!\\)\.", key):
        name = raw.replace("\\.", ".")
        indexes = [int(i) for i in _INDEX.findall(name)]
        base = _INDEX.sub("", name)
        if not base or "[" in base or "]" in base or any(c.isspace() for c in base):
            raise ValuesError(f"{key!r} is not a key: write parts separated by '.', list items as NAME[0], and a "
                              "dot inside a key as \\.")
        parts.append(base)
        parts.extend(indexes)
    return parts


def set_key(doc: dict[str, Any], key: Key, value: Any) -> None:
    """Set ``key`` in ``doc`` like ``--set``: missing maps and lists are created, lists padded with nulls."""
    node: Any = doc
    for i, part in enumerate(key):
        if i == len(key) - 1:
            _put(node, part, value)
            return
        want_list = isinstance(key[i + 1], int)
        child = _get(node, part)
        if not isinstance(child, list if want_list else dict):
            child = [] if want_list else {}
            _put(node, part, child)
        node = child


def _get(node: Any, part: str | int) -> Any:
    if isinstance(part, int):
        return node[part] if part < len(node) else None
    return node.get(part)


def _put(node: Any, part: str | int, value: Any) -> None:
    if isinstance(part, int):
        node.extend([None] * (part + 1 - len(node)))
    node[part] = value


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's merge of values files: maps merge key by key, anything else in ``over`` replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


# -- where a string came from ------------------------------------------------------------------------
@dataclass(frozen=True)
class Layer:
    """One source of values, lowest precedence first: the chart's values.yaml, each values file, set."""

    label: str  # shown to the user: a file path or ``services.NAME.helm.set``
    values: Mapping[str, Any]
    prefix: str = ""  # a subchart's values sit under its name


@dataclass(frozen=True)
class Origin:
    key: str  # a.b[0].c
    value: str
    layer: str

    def __str__(self) -> str:
        return f"{self.key} = {self.value} ({self.layer})"


def leaves(node: Any, at: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf of a values tree with its key (``a.b[0].c``)."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from leaves(v, f"{at}.{k}" if at else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from leaves(v, f"{at}[{i}]")
    else:
        yield at, node


def key_text(key: Key) -> str:
    """A parsed key written as :func:`leaves` writes keys."""
    out = ""
    for part in key:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def origins(layers: Sequence[Layer], wanted: Sequence[str]) -> list[Origin]:
    """The values keys whose effective value is one of ``wanted`` (compared as text), with the layer that
    decides each (the last one setting it), in key order."""
    effective: dict[str, tuple[Any, str]] = {}
    for layer in layers:
        for key, value in leaves(layer.values, layer.prefix):
            effective[key] = (value, layer.label)
    targets = set(wanted)
    return [Origin(key, _text(value), label) for key, (value, label) in sorted(effective.items())
            if value is not None and not isinstance(value, bool) and _text(value) in targets]


def _text(value: Any) -> str:
    return str(value)
