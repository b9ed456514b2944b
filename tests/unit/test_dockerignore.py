from __future__ import annotations

import pytest

from kubetest_infra.dockerignore import Matcher, compile_pattern, go_clean, read_patterns
from kubetest_infra.errors import ContextError


@pytest.mark.parametrize(
    ("raw", "clean"),
    [("", "."), ("a/", "a"), ("/a/../b", "/b"), ("a//b/./c", "a/b/c"), ("../x", "../x"), ("/..", "/"), ("a/..", ".")],
)
def test_go_clean(raw: str, clean: str) -> None:
    assert go_clean(raw) == clean


def test_read_patterns_like_moby() -> None:
    text = "\ufeff# comment\n  *.log  \n\n!keep.log\n/build/\n! /abs\n #not a comment\n"
    assert read_patterns(text) == ["*.log", "!keep.log", "build", "!abs", "#not a comment"]


# (patterns, path, excluded) — cases from moby/patternmatcher semantics
CASES = [
    (["*.log"], "a.log", True),
    (["*.log"], "dir/a.log", False),  # * does not cross /
    (["**/*.log"], "dir/sub/a.log", True),
    (["**/*.log"], "a.log", True),  # ** matches zero directories
    (["dir"], "dir/deep/file", True),  # a matching parent excludes its children
    (["dir/**"], "dir", False),
    (["dir/**"], "dir/x/y", True),
    (["*", "!keep"], "keep", False),
    (["*", "!keep"], "other", True),
    (["*.md", "!README.md", "README.md"], "README.md", True),  # the last match wins
    (["?.txt"], "a.txt", True),
    (["?.txt"], "ab.txt", False),
    (["[ab].txt"], "b.txt", True),
    (["[ab].txt"], "c.txt", False),
    (["**foo"], "barfoo", True),  # patternmatcher's suffix match, quirk kept
    (["a.b"], "aXb", False),  # '.' is literal
    (["docs/*.md"], "docs/x.md", True),
    (["docs/*.md"], "docs/sub/x.md", False),
    (["node_modules", "!node_modules/keep.js"], "node_modules/keep.js", False),
    (["\\*"], "*", True),
    (["\\*"], "x", False),
]


@pytest.mark.parametrize(("patterns", "path", "excluded"), CASES)
def test_matcher(patterns: list[str], path: str, excluded: bool) -> None:
    assert Matcher(patterns).excluded(path) is excluded


def test_must_descend_only_for_prefix_exceptions() -> None:
    m = Matcher(["dir", "!dir/keep"])
    assert m.must_descend("dir")
    assert not m.must_descend("other")
    # an exception that does not start with the directory's path does not open it (engine quirk)
    assert not Matcher(["dir", "!**/keep"]).must_descend("dir")
    assert not Matcher(["dir"]).must_descend("dir")


def test_pattern_kinds() -> None:
    assert compile_pattern("exact/path").kind == "exact"
    assert compile_pattern("pre/**").kind == "prefix"
    assert compile_pattern("**/suffix").kind == "suffix"
    assert compile_pattern("*.go").kind == "regexp"


@pytest.mark.parametrize("bad", ["!", "[unclosed"])
def test_bad_patterns_raise_context_error(bad: str) -> None:
    with pytest.raises(ContextError, match="Hint:"):
        compile_pattern(bad)
