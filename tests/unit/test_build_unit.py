"""Builder logic on scripted engine answers: base resolution, pulls, timeouts (the real engine: tests/integration)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from kubetest_infra.build import (
    DEFAULT_BUILD_TIMEOUT,
    Builder,
    BuildSpec,
    default_build_timeout,
    parse_timeout,
)
from kubetest_infra.engine import Engine
from kubetest_infra.errors import (
    BaseImageError,
    BuildTimeoutError,
    CommandTimeoutError,
    ConfigError,
    DockerfileError,
)
from kubetest_infra.runner import CommandResult

Answer = tuple[int, str, str]


class ScriptedRunner:
    """Answers each argv with ``script(argv)``; records every call."""

    def __init__(self, script: Callable[[tuple[str, ...]], Answer]) -> None:
        self.script = script
        self.calls: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str], *, input: bytes | None = None, env: Mapping[str, str] | None = None,
            timeout: float | None = None, check: bool = True, cwd: str | None = None) -> CommandResult:
        call = tuple(argv)
        self.calls.append(call)
        assert timeout is not None, f"no timeout for {call}"
        code, out, err = self.script(call)
        return CommandResult(call, code, out, err, 0.0)

    def pipe(self, producer: Sequence[str], consumers: Sequence[Sequence[str]], *,
             timeout: float | None = None) -> list[CommandResult]:
        raise AssertionError("no pipes in builds")


def image(image_id: str, layers: Sequence[str] = ("sha256:l1",)) -> str:
    return json.dumps([{"Id": image_id, "RepoTags": [], "Config": {"Labels": {}}, "RootFS": {"Layers": list(layers)}}])


MISSING: Answer = (1, "", "Error: No such image: x")


def engine_with(handler: Callable[[tuple[str, ...]], Answer | None]) -> tuple[Engine, ScriptedRunner]:
    def script(argv: tuple[str, ...]) -> Answer:
        answer = handler(argv)
        if answer is not None:
            return answer
        if argv[1] == "info":
            return 0, "20.10.24|/var/lib/docker", ""
        if argv[1:3] == ("buildx", "version"):
            return 1, "", "not installed"
        raise AssertionError(f"unexpected command: {argv}")

    runner = ScriptedRunner(script)
    return Engine("docker", runner), runner


@pytest.fixture
def spec(tmp_path: Path) -> BuildSpec:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY app /app\n")
    (ctx / "app").write_text("v1\n")
    return BuildSpec("app", ctx, build_args={"BASE_IMAGE": "busybox:1"})


def test_a_missing_base_is_pulled_then_resolved(spec: BuildSpec, tmp_path: Path) -> None:
    pulled: list[str] = []

    def handler(argv: tuple[str, ...]) -> Answer | None:
        if argv[1:3] == ("image", "inspect"):
            return (0, image("sha256:base"), "") if pulled else MISSING
        if argv[1] == "pull":
            pulled.append(argv[-1])
            return 0, "pulled", ""
        return None

    engine, runner = engine_with(handler)
    builder = Builder(engine, "r1", "suite", cache_dir=tmp_path / "cache")
    assert builder.digest(spec).base_images == {"busybox:1": "<missing>"}  # a query never pulls
    assert not pulled
    assert builder.resolve_bases("app", builder.plan(spec), pull=False) == {"busybox:1": "sha256:base"}
    assert pulled == ["busybox:1"]
    digest = builder.digest(spec)
    assert digest.base_images == {"busybox:1": "sha256:base"}
    assert ("docker", "pull", "busybox:1") in runner.calls


def test_an_unpullable_base_names_the_line_and_says_what_to_do(spec: BuildSpec, tmp_path: Path) -> None:
    def handler(argv: tuple[str, ...]) -> Answer | None:
        if argv[1:3] == ("image", "inspect"):
            return MISSING
        if argv[1] == "pull":
            return 1, "", "Error response from daemon: pull access denied for busybox"
        return None

    engine, _ = engine_with(handler)
    builder = Builder(engine, "r1", "suite", cache_dir=tmp_path / "cache")
    with pytest.raises(BaseImageError, match=r"base image busybox:1 \(FROM at .*Dockerfile:2\) is not in the docker "
                                             "engine and cannot be pulled") as info:
        builder.build(spec)
    assert "pull access denied" in str(info.value) and "Hint: check the name" in str(info.value)
    assert info.value.ref == "busybox:1"


def test_pull_option_pulls_a_present_base_and_never_falls_back_silently(spec: BuildSpec, tmp_path: Path) -> None:
    def handler(argv: tuple[str, ...]) -> Answer | None:
        if argv[1:3] == ("image", "inspect"):
            return 0, image("sha256:local"), ""
        if argv[1] == "pull":
            return 1, "", "dial tcp: lookup registry-1.docker.io: no such host"
        return None

    engine, runner = engine_with(handler)
    builder = Builder(engine, "r1", "suite", cache_dir=tmp_path / "cache", pull=True)
    with pytest.raises(BaseImageError, match="--pull: cannot pull busybox:1") as info:
        builder.resolve_bases("app", builder.plan(spec), pull=builder.pull)
    assert "build without --pull to use it" in str(info.value)
    assert ("docker", "pull", "busybox:1") in runner.calls


def test_pull_keeps_the_from_platform(tmp_path: Path) -> None:
    ctx = tmp_path / "p"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM --platform=linux/arm64 busybox:1\n")
    pulls: list[tuple[str, ...]] = []

    def handler(argv: tuple[str, ...]) -> Answer | None:
        if argv[1:3] == ("image", "inspect"):
            return (0, image("sha256:arm"), "") if pulls else MISSING
        if argv[1] == "pull":
            pulls.append(argv)
            return 0, "", ""
        return None

    engine, _ = engine_with(handler)
    builder = Builder(engine, "r1", "suite", cache_dir=tmp_path / "cache")
    builder.resolve_bases("p", builder.plan(BuildSpec("p", ctx)), pull=False, platform="linux/s390x")
    assert pulls == [("docker", "pull", "--platform", "linux/arm64", "busybox:1")]  # FROM --platform wins
    pulls.clear()
    (ctx / "Dockerfile").write_text("FROM busybox:1\n")
    builder.resolve_bases("p", builder.plan(BuildSpec("p", ctx)), pull=False, platform="linux/s390x")
    assert pulls == [("docker", "pull", "--platform", "linux/s390x", "busybox:1")]  # else the build's


def test_a_pull_that_hangs_is_a_base_image_error(spec: BuildSpec, tmp_path: Path) -> None:
    class Hanging(ScriptedRunner):
        def run(self, argv: Sequence[str], **kw: object) -> CommandResult:  # type: ignore[override]
            if argv[1] == "pull":
                raise CommandTimeoutError(argv, 5, "docker pull busybox:1 to finish")
            return super().run(argv, **kw)  # type: ignore[arg-type]

    engine, _ = engine_with(lambda a: MISSING if a[1:3] == ("image", "inspect") else None)
    engine.runner = Hanging(engine.runner.script)  # type: ignore[attr-defined]
    builder = Builder(engine, "r1", "suite", cache_dir=tmp_path / "cache", pull_timeout=5)
    with pytest.raises(BaseImageError, match=r"pulling busybox:1 .* did not finish within 5 s"):
        builder.build(spec)


def test_a_bad_dockerfile_is_refused_before_any_engine_call(tmp_path: Path) -> None:
    ctx = tmp_path / "bad"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM ${BASE}\n")
    engine, runner = engine_with(lambda _a: None)
    with pytest.raises(DockerfileError, match="expands to nothing"):
        Builder(engine, "r1", "suite", cache_dir=tmp_path / "cache").build(BuildSpec("bad", ctx))
    assert not [c for c in runner.calls if c[1] not in ("info", "buildx")]


def test_build_timeout_defaults_env_and_bad_values() -> None:
    assert default_build_timeout({}) == DEFAULT_BUILD_TIMEOUT
    assert default_build_timeout({"KTI_BUILD_TIMEOUT": "45m"}) == 2700
    assert default_build_timeout({"KTI_BUILD_TIMEOUT": " 90 "}) == 90
    assert parse_timeout("1.5h", "x") == 5400
    for bad in ("soon", "0", "-5", "10d"):
        with pytest.raises(ConfigError, match=r"\$KTI_BUILD_TIMEOUT: invalid timeout") as info:
            default_build_timeout({"KTI_BUILD_TIMEOUT": bad})
        assert "Hint: give a positive number of seconds" in str(info.value)
    engine, _ = engine_with(lambda _a: None)
    with pytest.raises(ConfigError, match="build_timeout must be more than 0"):
        Builder(engine, "r1", "suite", build_timeout=0)


def test_builder_reads_the_timeout_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTI_BUILD_TIMEOUT", "2m")
    engine, _ = engine_with(lambda _a: None)
    assert Builder(engine, "r1", "suite").build_timeout == 120
    assert Builder(engine, "r1", "suite", build_timeout=7).build_timeout == 7


def test_a_build_that_hangs_is_stopped_with_a_build_timeout_error(spec: BuildSpec, tmp_path: Path) -> None:
    removed: list[str] = []

    class HangingBuild(ScriptedRunner):
        def run(self, argv: Sequence[str], **kw: object) -> CommandResult:  # type: ignore[override]
            if argv[1] == "build":
                assert kw["timeout"] == 42
                raise CommandTimeoutError(argv, 42, "docker build to finish", output="Step 3/3 : RUN sleep 1d")
            return super().run(argv, **kw)  # type: ignore[arg-type]

    def handler(argv: tuple[str, ...]) -> Answer | None:
        if argv[1:3] == ("image", "inspect"):
            return (0, image("sha256:base"), "") if argv[3] == "busybox:1" else MISSING
        if argv[1:3] == ("image", "ls"):
            return 0, "", ""
        if argv[1:3] == ("image", "rm"):
            removed.append(argv[3])
            return 1, "", "No such image"
        return None

    def script(argv: tuple[str, ...]) -> Answer:
        if argv[0] == "git":
            return 128, "", "not a git repository"
        return engine_with(handler)[1].script(argv)

    engine = Engine("docker", HangingBuild(script))
    builder = Builder(engine, "r1", "suite", cache_dir=tmp_path / "cache", build_timeout=42)
    with pytest.raises(BuildTimeoutError, match=r"building app \(localhost/app:suite-r1\) did not finish within "
                                                "42 s") as info:
        builder.build(spec)
    assert "RUN sleep 1d" in str(info.value) and "KTI_BUILD_TIMEOUT" in str(info.value)
    assert info.value.timeout == 42
    assert removed == ["localhost/app:suite-r1"]


def test_several_bases_are_resolved_in_one_engine_call(tmp_path: Path) -> None:
    ctx = tmp_path / "multi"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM a:1 AS one\nFROM b:1\nCOPY --from=one / /\nCOPY --from=c:1 / /\n")

    def handler(argv: tuple[str, ...]) -> Answer | None:
        if argv[1:3] == ("image", "inspect"):
            return 0, json.dumps([json.loads(image(f"sha256:{ref[0]}"))[0] for ref in argv[3:]]), ""
        return None

    engine, runner = engine_with(handler)
    builder = Builder(engine, "r1", "suite", cache_dir=tmp_path / "cache")
    bases = builder.resolve_bases("multi", builder.plan(BuildSpec("multi", ctx)), pull=False)
    assert bases == {"a:1": "sha256:a", "b:1": "sha256:b", "c:1": "sha256:c"}
    assert [c for c in runner.calls if c[1] == "image"] == [("docker", "image", "inspect", "a:1", "b:1", "c:1")]


def test_buildkit_platform_args_come_from_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_BUILDKIT", raising=False)
    ctx = tmp_path / "plat"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM --platform=$BUILDPLATFORM tools-${TARGETARCH}:1\n")

    def handler(argv: tuple[str, ...]) -> Answer | None:
        if argv[1:3] == ("buildx", "version"):
            return 0, "github.com/docker/buildx v0.12.1", ""
        if argv[1] == "version":
            return 0, "linux/amd64\n", ""
        return None

    engine, _ = engine_with(handler)
    builder = Builder(engine, "r1", "suite")
    assert builder.plan(BuildSpec("plat", ctx)).refs() == ["tools-amd64:1"]
    assert builder.plan(BuildSpec("plat", ctx, platform="linux/arm64")).refs() == ["tools-arm64:1"]
    classic, _ = engine_with(lambda _a: None)  # no buildx: the classic builder sets no platform ARGs
    with pytest.raises(DockerfileError, match="expands to nothing"):
        Builder(classic, "r1", "suite").plan(BuildSpec("plat", ctx))
