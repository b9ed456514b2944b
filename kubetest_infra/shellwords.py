"""Variable expansion in one Dockerfile word, as the builders expand ``FROM``, ``--platform`` and ``ARG`` values.

The rules are those of BuildKit's Dockerfile frontend (its ``shell`` lexer), which the classic builder
shares for everything a ``FROM`` line can use:

- ``$NAME`` and ``${NAME}``; an unset name expands to nothing; ``$`` before anything that is not a
  name stays a ``$``; ``$1``-style positional and ``$@``-style special names exist but are never set;
- ``${NAME:-word}`` / ``${NAME-word}`` (default when unset, or also when empty with ``:``),
  ``${NAME:+word}`` / ``${NAME+word}`` (alternative), ``${NAME:?msg}`` / ``${NAME?msg}`` (error),
  ``${NAME#pat}`` ``${NAME##pat}`` ``${NAME%pat}`` ``${NAME%%pat}`` (trim with ``*``/``?`` patterns),
  ``${NAME/pat/repl}`` and ``${NAME//pat/repl}``; the ``word`` is itself expanded;
- single quotes keep everything literally; double quotes keep everything but ``$`` expansions, and
  there the escape character only escapes ``"``, ``$`` and itself; outside quotes the escape
  character makes the next character literal; quotes and escapes are removed from the result.

The escape character is ``\\`` unless a ``# escape=`` parser directive chose the backtick.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_SPECIAL = "@*#?-$!0"


class WordError(ValueError):
    """A word the builders refuse to expand (bad substitution, unterminated quote, ``${X:?}``)."""


def expand(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """``word`` with its variables expanded from ``env`` and its quotes and escapes removed."""
    return _Lexer(word, env, escape).until("", raw_escapes=False)


def variables(word: str) -> list[str]:
    """Names a word refers to (``$X``, ``${X}``, ``${X:-…}``…), in order, for error messages."""
    return list(dict.fromkeys(m.group(1) or m.group(2)
                              for m in re.finditer(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)|([A-Za-z_][A-Za-z0-9_]*))",
                                                   word)))


class _Lexer:
    def __init__(self, text: str, env: Mapping[str, str], escape: str) -> None:
        self.text = text
        self.env = env
        self.escape = escape
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        ch = self.peek()
        self.pos += len(ch)
        return ch

    def until(self, stop: str, *, raw_escapes: bool) -> str:
        """Characters up to ``stop`` (consumed; ``""``: the end), expanded."""
        out: list[str] = []
        while self.pos < len(self.text):
            ch = self.peek()
            if stop and ch == stop:
                self.pos += 1
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
            elif ch == "'":
                out.append(self.single_quoted())
            elif ch == '"':
                out.append(self.double_quoted(raw_escapes))
            else:
                self.pos += 1
                if ch == self.escape:
                    if raw_escapes:
                        out.append(ch)
                    if self.pos >= len(self.text):
                        break
                    ch = self.take()
                out.append(ch)
        if stop:
            raise WordError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(out)

    def single_quoted(self) -> str:
        self.pos += 1
        end = self.text.find("'", self.pos)
        if end < 0:
            raise WordError("unexpected end of statement while looking for matching single-quote")
        content = self.text[self.pos:end]
        self.pos = end + 1
        return content

    def double_quoted(self, raw_escapes: bool) -> str:
        self.pos += 1
        out: list[str] = []
        while True:
            ch = self.peek()
            if not ch:
                raise WordError("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.pos += 1
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
                continue
            self.pos += 1
            if ch == self.escape:
                if raw_escapes:
                    out.append(ch)
                nxt = self.peek()
                if not nxt:
                    continue
                if nxt in ('"', "$", self.escape):
                    ch = self.take()
            out.append(ch)

    def name(self) -> str:
        start = self.pos
        if self.peek().isdigit():
            while self.peek().isdigit():
                self.pos += 1
            return self.text[start:self.pos]
        if self.peek() and self.peek() in _SPECIAL:
            return self.take()
        while (ch := self.peek()) and (ch.isalnum() or ch == "_"):
            self.pos += 1
        return self.text[start:self.pos]

    def lookup(self, name: str) -> tuple[str, bool]:
        value = self.env.get(name)
        return ("", False) if value is None else (value, True)

    def dollar(self) -> str:
        self.pos += 1
        if self.peek() != "{":
            name = self.name()
            return self.lookup(name)[0] if name else "$"
        self.pos += 1
        ch = self.peek()
        if not ch:
            raise WordError("syntax error: missing '}'")
        if ch in "{}:":
            raise WordError("syntax error: bad substitution")
        name = self.name()
        op = self.take()
        if not op:
            raise WordError("syntax error: missing '}'")
        if op == "}":
            return self.lookup(name)[0]
        if op == "/":
            return self.replace(name)
        null_is_unset = op == ":"
        modifier = op
        if null_is_unset:
            op = self.take()
            modifier += op
        if op not in ("+", "-", "?", "#", "%"):
            raise WordError(f"unsupported modifier ({modifier}) in substitution")
        trims = op in ("#", "%")
        if null_is_unset and trims:
            raise WordError(f"unsupported modifier ({modifier}) in substitution")
        try:
            word = self.until("}", raw_escapes=trims)
        except WordError:
            if self.pos >= len(self.text):
                raise WordError("syntax error: missing '}'") from None
            raise
        value, is_set = self.lookup(name)
        empty = not is_set or (null_is_unset and value == "")
        if op == "-":
            return word if empty else value
        if op == "+":
            return "" if empty else word
        if op == "?":
            if not is_set:
                raise WordError(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise WordError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        greedy = word.startswith(op)
        pattern = word[1:] if greedy else word
        if op == "#":
            return _trim_prefix(pattern, value, greedy)
        return _trim_suffix(pattern, value, greedy)

    def replace(self, name: str) -> str:
        replace_all = self.peek() == "/"
        if replace_all:
            self.pos += 1
        try:
            pattern = self.until("/", raw_escapes=True)
        except WordError:
            raise WordError("syntax error: missing '/' in ${}") from None
        try:
            replacement = self.until("}", raw_escapes=True)
        except WordError:
            raise WordError("syntax error: missing '}'") from None
        value = self.lookup(name)[0]
        regex = _pattern(pattern, greedy=True, anchored=False)
        return regex.sub(lambda _m: replacement, value, count=0 if replace_all else 1)


def _pattern(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """A shell pattern (``*``, ``?``, ``\\`` escapes; no bracket expressions) as a regex."""
    out = ["^"] if anchored else []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(".*" if greedy else ".*?")
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            if i < len(pattern) and pattern[i] in "}/":
                continue  # escaped only to end the ${…} part early; not part of the pattern
            nxt = pattern[i] if i < len(pattern) else ""
            if nxt not in ("*", "?", "\\") or not nxt:
                raise WordError(f"invalid pattern ({pattern}) in substitution: invalid escape '\\{nxt}'")
            out.append("\\" + nxt)
            i += 1
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out))


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    match = _pattern(pattern, greedy=greedy, anchored=True).search(value)
    return value[match.end():] if match else value


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # A regex finds the leftmost match; reversing both finds the shortest (or longest) suffix.
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]


def _reverse_pattern(pattern: str) -> str:
    tokens: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            tokens.append(pattern[i:i + 2])  # an escape stays in front of what it escapes
            i += 2
        else:
            tokens.append(pattern[i])
            i += 1
    return "".join(reversed(tokens))
