"""The Dockerfile reader used by preflight: stages, FROM arguments, continuations, here-documents."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetest_infra.dockerfile import parse

ROOT = Path(__file__).resolve().parents[2]

MULTI = """\
# syntax=docker/dockerfile:1
ARG GO=1.22 BASE
FROM --platform=$BUILDPLATFORM golang:${GO} AS Build
RUN <<EOF
FROM scratch AS not-a-stage
EOF
RUN go build \\
  # a comment inside a continuation
  -o /app .
FROM ${BASE} as final
FROM ${OTHER:-busybox:1.36} AS third
FROM build
ARG LATE
"""


def test_stages_are_named_lowercase_and_here_documents_are_skipped() -> None:
    d = parse(MULTI)
    assert [(s.name, s.base, s.line) for s in d.stages] == [
        ("build", "golang:${GO}", 3), ("final", "${BASE}", 10), ("third", "${OTHER:-busybox:1.36}", 11),
        (None, "build", 12)]
    assert d.has_stage("BUILD") and d.has_stage("final") and not d.has_stage("not-a-stage")
    assert [i.keyword for i in d.instructions].count("RUN") == 2
    assert d.instructions[3].arguments.split() == ["go", "build", "-o", "/app", "."]


def test_from_arguments_need_a_default_or_a_build_arg() -> None:
    d = parse(MULTI)
    assert dict(d.global_args) == {"GO": "1.22", "BASE": None}
    assert d.declared_args == {"GO", "BASE", "LATE"}
    assert [(s.name, a) for s, a in d.unresolved_base_args({})] == [("final", "BASE")]
    assert d.unresolved_base_args({"BASE": "debian:bookworm"}) == []
    late = parse("FROM busybox:1.36\nARG TAG\nFROM alpine:${TAG}\n")
    assert [a for _, a in late.unresolved_base_args({"TAG": "3"})] == ["TAG"], "an ARG after FROM cannot reach FROM"


def test_escape_directive_and_platform_args() -> None:
    d = parse("# escape=`\nFROM busybox:1.36 AS a\nRUN echo a `\n  b\n"
              "FROM --platform=$TARGETPLATFORM x:${TARGETARCH}\n")
    assert d.instructions[1].arguments.split() == ["echo", "a", "b"]
    assert d.unresolved_base_args({}) == []


@pytest.mark.parametrize("path", ["examples/datastorage/Dockerfile", "examples/hello/Dockerfile",
                                  "images/postgres/Dockerfile", "images/redis/Dockerfile"])
def test_the_repositorys_dockerfiles(path: str) -> None:
    d = parse((ROOT / path).read_text())
    assert len(d.stages) == 1
    assert d.unresolved_base_args({"BASE_IMAGE": "debian:bookworm"}) == []
