"""Dockerfile reading and variable expansion (pure): what the builders would pull in."""

from __future__ import annotations

import pytest

from kubetest_infra.buildplan import SCRATCH, parse_dockerfile, plan_build, uses_platform_args
from kubetest_infra.errors import ContextError, DockerfileError
from kubetest_infra.shellwords import WordError, expand, variables

# -- expansion -------------------------------------------------------------------------------

ENV = {"A": "alpha", "E": "", "P": "registry.local:5000/team/app:1.2", "X": "a-b-a-b"}


@pytest.mark.parametrize(("word", "expected"), [
    ("$A", "alpha"),
    ("${A}", "alpha"),
    ("pre-${A}-post", "pre-alpha-post"),
    ("$A$A", "alphaalpha"),
    ("$UNSET", ""),
    ("${UNSET}", ""),
    ("$", "$"),
    ("a$", "a$"),
    ("$-x", "x"),  # special parameters exist but are never set
    ("$1x", "x"),
    ("${UNSET:-busybox:1}", "busybox:1"),
    ("${E:-dflt}", "dflt"),
    ("${E-dflt}", ""),
    ("${A:-dflt}", "alpha"),
    ("${UNSET-dflt}", "dflt"),
    ("${A:+alt}", "alt"),
    ("${E:+alt}", ""),
    ("${E+alt}", "alt"),
    ("${UNSET+alt}", ""),
    ("${UNSET:-${A}}", "alpha"),
    ("${UNSET:-\"two words\"}", "two words"),
    ("${A:?must be set}", "alpha"),
    ("${P#*/}", "team/app:1.2"),
    ("${P##*/}", "app:1.2"),
    ("${P%:*}", "registry.local:5000/team/app"),
    ("${P%%:*}", "registry.local"),
    ("${X/a/z}", "z-b-a-b"),
    ("${X//a/z}", "z-b-z-b"),
    ("${X/?-/}", "b-a-b"),
    ("${A#nomatch}", "alpha"),
    ("'$A'", "$A"),
    ('"$A"', "alpha"),
    ('"${A}:1"', "alpha:1"),
    ('"\\$A"', "$A"),
    ('"a\\b"', "a\\b"),  # in double quotes the escape only escapes " $ and itself
    ("\\$A", "$A"),
    ("a\\", "a"),
    ("busybox:1.36", "busybox:1.36"),
])
def test_expand(word: str, expected: str) -> None:
    assert expand(word, ENV) == expected


def test_backtick_escape() -> None:
    assert expand("`$A", ENV, escape="`") == "$A"
    assert expand("\\$A", ENV, escape="`") == "\\alpha"  # a backslash is an ordinary character then


@pytest.mark.parametrize(("word", "message"), [
    ("${}", "bad substitution"),
    ("${:x}", "bad substitution"),
    ("${A", "missing '}'"),
    ("${A:-x", "missing '}'"),
    ("${", "missing '}'"),
    ("'open", "single-quote"),
    ('"open', "double-quote"),
    ("${UNSET:?set BASE first}", "UNSET: set BASE first"),
    ("${UNSET?}", "UNSET: is not allowed to be unset"),
    ("${E:?}", "E: is not allowed to be empty"),
    ("${A:#x}", "unsupported modifier (:#)"),
    ("${A!x}", "unsupported modifier"),
    ("${A/x", "missing '/'"),
    ("${A#\\x}", "invalid escape"),
])
def test_expand_errors(word: str, message: str) -> None:
    with pytest.raises(WordError, match=message.replace("(", r"\(").replace(")", r"\)")):
        expand(word, ENV)


def test_variables_lists_names_in_order() -> None:
    assert variables("${REG:-x}/$NAME:${TAG}-$NAME") == ["REG", "NAME", "TAG"]


# -- parsing ---------------------------------------------------------------------------------

def keywords(text: str) -> list[tuple[str, str, int]]:
    return [(i.keyword, i.args, i.line) for i in parse_dockerfile(text).instructions]


def test_continuations_comments_and_empty_lines() -> None:
    text = ("FROM busybox:1 \\\n"
            "  # a comment inside the instruction\n"
            "\n"
            "  AS base\n"
            "RUN echo a \\   \n"
            "    b\n"
            "# comment\n"
            "   run echo c\n")
    assert keywords(text) == [("FROM", "busybox:1   AS base", 1), ("RUN", "echo a     b", 5),
                              ("RUN", "echo c", 8)]


def test_escaped_escape_at_line_end_is_not_a_continuation() -> None:
    assert keywords("RUN echo \\\\\nFROM x\n") == [("RUN", "echo \\\\", 1), ("FROM", "x", 2)]


def test_escape_directive_switches_to_backtick() -> None:
    df = parse_dockerfile("# escape=`\nFROM x `\n  AS y\nRUN dir c:\\ \n")
    assert df.escape == "`"
    assert [(i.keyword, i.args) for i in df.instructions] == [("FROM", "x   AS y"), ("RUN", "dir c:\\")]


def test_directives_only_at_the_very_top() -> None:
    df = parse_dockerfile("# syntax=docker/dockerfile:1\n# escape=`\nFROM x\n")
    assert df.directives == {"syntax": "docker/dockerfile:1", "escape": "`"}
    after_comment = parse_dockerfile("# hello\n# escape=`\nFROM x \\\n AS y\n")
    assert after_comment.escape == "\\" and after_comment.directives == {}
    after_blank = parse_dockerfile("\n# escape=`\nFROM x\n")
    assert after_blank.escape == "\\"


def test_bad_directives() -> None:
    with pytest.raises(DockerfileError, match=r"Dockerfile:2: only one escape parser directive"):
        parse_dockerfile("# escape=`\n# escape=\\\nFROM x\n")
    with pytest.raises(DockerfileError, match="invalid escape token") as info:
        parse_dockerfile("# escape=!\nFROM x\n")
    assert "Hint:" in str(info.value)


def test_heredoc_bodies_are_not_instructions() -> None:
    text = ("FROM a:1\n"
            "RUN <<EOF\n"
            "FROM not-an-image\n"
            "EOF\n"
            "COPY <<-\"END\" /x\n"
            "\tFROM nope\n"
            "\tEND\n"
            "RUN cat <<one <<two > /f\n"
            "FROM x\n"
            "one\n"
            "FROM y\n"
            "two\n"
            "FROM b:2\n")
    assert [k for k, _, _ in keywords(text)] == ["FROM", "RUN", "COPY", "RUN", "FROM"]
    assert plan_build(text, builder="classic").refs() == ["a:1", "b:2"]


def test_here_string_is_not_a_heredoc() -> None:
    assert [k for k, _, _ in keywords("FROM a:1\nRUN cat <<< word\nFROM b:2\n")] == ["FROM", "RUN", "FROM"]


def test_unterminated_heredoc() -> None:
    with pytest.raises(DockerfileError, match="unterminated here-document <<EOF"):
        parse_dockerfile("FROM a:1\nRUN <<EOF\necho\n")


def test_bom_crlf_and_lowercase_keywords() -> None:
    assert keywords("\ufefffrom a:1 as b\r\nrun true\r\n") == [("FROM", "a:1 as b", 1), ("RUN", "true", 2)]


def test_flags_are_split_off() -> None:
    ins = parse_dockerfile('FROM --platform="linux/arm64" a:1\n').instructions[0]
    assert ins.flags == ("platform=linux/arm64",) and ins.args == "a:1"
    copy = parse_dockerfile("FROM a:1\nCOPY --chown=1:1 --from=b:2 -- --odd /x\n").instructions[1]
    assert copy.flag_values("from") == ["b:2"] and copy.args == "--odd /x"


def test_empty_file() -> None:
    with pytest.raises(DockerfileError, match="no instructions"):
        parse_dockerfile("# only a comment\n\n")


# -- planning --------------------------------------------------------------------------------

def test_global_arg_default_and_build_arg_override() -> None:
    text = "ARG BASE=busybox:1\nFROM ${BASE}\n"
    assert plan_build(text).refs() == ["busybox:1"]
    assert plan_build(text, {"BASE": "busybox:2"}).refs() == ["busybox:2"]


def test_arg_default_uses_earlier_args() -> None:
    text = "ARG REG=localhost:5000\nARG IMG=${REG}/base\nARG TAG=1\nFROM $IMG:$TAG\n"
    plan = plan_build(text, {"TAG": "7"})
    assert plan.refs() == ["localhost:5000/base:7"]
    assert plan.args == {"REG": "localhost:5000", "IMG": "localhost:5000/base", "TAG": "7"}


def test_several_args_on_one_line_and_quotes() -> None:
    assert plan_build('ARG A="busy box" B=busybox C\nFROM ${B}:${C:-1}\n').refs() == ["busybox:1"]


def test_default_in_from() -> None:
    assert plan_build("ARG BASE\nFROM ${BASE:-busybox:1}\n").refs() == ["busybox:1"]


def test_undeclared_build_arg_is_invisible_to_from() -> None:
    with pytest.raises(DockerfileError, match=r"Dockerfile:1: FROM \$\{BASE\} expands to nothing") as info:
        plan_build("FROM ${BASE}\n", {"BASE": "busybox:1"})
    assert "BASE is not set: declare it with ARG before the first FROM" in str(info.value)


def test_declared_arg_without_value_is_blank() -> None:
    with pytest.raises(DockerfileError, match="expands to nothing") as info:
        plan_build("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n")
    assert isinstance(info.value, ContextError) and info.value.line == 2
    assert "pass it as a build arg" in str(info.value)


def test_stage_args_are_not_global() -> None:
    with pytest.raises(DockerfileError, match="Dockerfile:3: FROM"):
        plan_build("FROM a:1 AS one\nARG NEXT=b:2\nFROM $NEXT\n")


def test_from_earlier_stage_and_scratch() -> None:
    text = "FROM scratch AS empty\nFROM busybox:1 AS base\nFROM base\nRUN true\n"
    plan = plan_build(text)
    assert plan.refs() == ["busybox:1"]
    assert plan.stages[0].base == SCRATCH and plan.stages[2].base_stage == 1
    assert plan.root_image() is not None and plan.root_image().ref == "busybox:1"  # type: ignore[union-attr]
    assert plan_build("FROM scratch\nCOPY a /a\n").root_image() is None
    assert plan_build("FROM scratch AS s\nFROM s\n").root_image() is None


def test_from_names_a_stage_only_if_it_comes_earlier() -> None:
    plan = plan_build("FROM later AS first\nFROM busybox:1 AS later\n", builder="classic")
    assert plan.refs() == ["later", "busybox:1"]  # 'later' is an image for the first stage, as the builders see it


def test_stage_reference_is_exact_after_expansion() -> None:
    assert plan_build("ARG S=build\nFROM a:1 AS build\nFROM ${S}\n").refs() == ["a:1"]
    with pytest.raises(DockerfileError, match="not a valid image reference"):
        plan_build("FROM a:1 AS build\nFROM Build\n")  # stage names are compared lower-cased


def test_multi_stage_buildkit_builds_only_what_the_target_needs() -> None:
    text = ("FROM golang:1 AS build\n"
            "FROM alpine:3 AS unused\n"
            "FROM debian:12 AS tools\n"
            "FROM busybox:1\n"
            "COPY --from=build /app /app\n"
            "RUN --mount=type=bind,from=tools,target=/t true\n")
    assert plan_build(text).refs() == ["golang:1", "debian:12", "busybox:1"]
    assert plan_build(text, builder="classic").refs() == ["golang:1", "alpine:3", "debian:12", "busybox:1"]
    assert plan_build(text, target="unused").refs() == ["alpine:3"]
    assert plan_build(text, target="tools", builder="classic").refs() == ["golang:1", "alpine:3", "debian:12"]


def test_copy_from_index_name_and_image() -> None:
    text = ("FROM a:1 AS Build\n"
            "FROM b:1\n"
            "COPY --from=0 /x /x\n"
            "COPY --from=BUILD /y /y\n"
            "COPY --from=c:1 /z /z\n"
            "COPY --from=c:1 /z /z2\n"
            "COPY --from=scratch / /\n")
    plan = plan_build(text)
    assert plan.refs() == ["a:1", "b:1", "c:1"]
    assert plan.stages[1].needs == (0,)
    assert [(u.ref, u.via, u.line) for u in plan.images] == [
        ("a:1", "FROM", 1), ("b:1", "FROM", 2), ("c:1", "COPY --from", 5), ("c:1", "COPY --from", 6)]


@pytest.mark.parametrize(("text", "message"), [
    ("FROM a:1\nCOPY --from=0 /x /x\n", "there is no earlier stage 0"),
    ("FROM a:1\nFROM b:1\nCOPY --from=5 /x /x\n", "there is no earlier stage 5"),
    ("FROM a:1 AS one\nCOPY --from=two /x /x\nFROM b:1 AS two\n", "stage 'two' is defined after this one"),
    ("ARG S=a:1\nFROM b:1\nCOPY --from=$S /x /x\n", "do not expand variables"),
    ("FROM a:1\nRUN --mount=from=${S},target=/s true\n", "do not expand variables"),
    ("FROM a:1\nCOPY --from=Not_Valid /x /x\n", "not a valid image reference"),
])
def test_copy_from_errors(text: str, message: str) -> None:
    with pytest.raises(DockerfileError, match=message) as info:
        plan_build(text)
    assert "Hint:" in str(info.value)


def test_run_mount_from_image_and_stage() -> None:
    text = ('FROM a:1 AS tools\n'
            'FROM b:1\n'
            'RUN --mount=type=cache,target=/c --mount="type=bind,from=c:1,source=/s,target=/t" '
            '--mount=type=bind,FROM=tools,target=/u true\n')
    plan = plan_build(text)
    assert plan.refs() == ["a:1", "b:1", "c:1"]
    assert plan.stages[1].needs == (0,)


def test_platform_args_buildkit_only() -> None:
    text = "ARG TARGETARCH\nFROM --platform=$BUILDPLATFORM base-${TARGETARCH}:1\n"
    plan = plan_build(text, builder="buildkit", build_platform="linux/amd64", target_platform="linux/arm64")
    assert plan.refs() == ["base-arm64:1"]
    assert plan.images[0].platform == "linux/amd64"
    assert plan_build("FROM base-${TARGETARCH:-none}:1\n", builder="classic").refs() == ["base-none:1"]
    overridden = plan_build("FROM base-$TARGETARCH:1\n", {"TARGETARCH": "riscv64"}, builder="buildkit",
                            build_platform="linux/amd64")
    assert overridden.refs() == ["base-riscv64:1"]
    assert uses_platform_args(text) and not uses_platform_args("FROM busybox:1\n")


def test_target_stage_arg() -> None:
    text = "FROM busybox:1 AS app\nFROM tools-$TARGETSTAGE:1 AS debug\n"
    assert plan_build(text, target="debug").refs() == ["tools-debug:1"]
    assert plan_build("FROM x-$TARGETSTAGE:1\n").refs() == ["x-default:1"]


def test_empty_platform_is_refused() -> None:
    with pytest.raises(DockerfileError, match="--platform=\\$P expands to nothing"):
        plan_build("ARG P\nFROM --platform=$P a:1\n")


@pytest.mark.parametrize(("text", "target", "message"), [
    ("RUN true\nFROM a:1\n", None, "RUN before the first FROM"),
    ("ARG A=1\n", None, "no FROM instruction"),
    ("FROM a:1 AS 1st\n", None, "invalid name for build stage"),
    ("FROM a:1 AS x\nFROM b:1 AS X\n", None, "duplicate stage name 'x'"),
    ("FROM a:1 b:1\n", None, "FROM takes an image and optionally 'AS name'"),
    ("FROM\n", None, "FROM takes an image"),
    ("FROM --network=none a:1\n", None, "unknown flag --network"),
    ("FROM a:1 AS build\nFROM b:1 AS final\n", "tset", "target stage 'tset' is not in the Dockerfile"),
    ("ARG A=${B\nFROM a:1\n", None, "ARG A: cannot expand"),
    ("ARG X='has space'\nFROM $X\n", None, "not a valid image reference"),
])
def test_refused_dockerfiles(text: str, target: str | None, message: str) -> None:
    with pytest.raises(DockerfileError, match=message) as info:
        plan_build(text, target=target, source="svc/Dockerfile")
    assert str(info.value).startswith("svc/Dockerfile")
    assert "\nHint: " in str(info.value)


def test_unknown_target_lists_the_stages() -> None:
    with pytest.raises(DockerfileError, match="stages with a name: build, final"):
        plan_build("FROM a:1 AS build\nFROM b:1 AS final\n", target="x")


def test_refs_are_distinct_in_order_of_use() -> None:
    text = "FROM b:1 AS one\nFROM a:1 AS two\nFROM b:1\nCOPY --from=one / /\nCOPY --from=two / /\n"
    assert plan_build(text).refs() == ["b:1", "a:1"]


def test_digest_pinned_and_registry_refs() -> None:
    pinned = "busybox@sha256:" + "a" * 64
    assert plan_build(f"FROM {pinned}\nFROM localhost:5001/x/y:2\n", builder="classic").refs() == [
        pinned, "localhost:5001/x/y:2"]
