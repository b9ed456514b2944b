"""Verified builds against the real engine (docker tier)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from kubetest_infra.build import LABEL_DIGEST, LABEL_MANAGED, LABEL_RUN, BuildEvent, BuildSpec
from kubetest_infra.cleanup import gc, parse_age, remove_run_images
from kubetest_infra.engine import Engine, get_engine
from kubetest_infra.errors import (
    BuildError,
    ContextError,
    EngineUnavailableError,
    MultiBuildError,
    StaleImageError,
)
from kubetest_infra.tags import new_run_id
from tests.integration.conftest import BuilderFactory, run_in, write_context

ROOT = Path(__file__).resolve().parents[2]

APP_DOCKERFILE = """ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY app.txt /app.txt
RUN cp /app.txt /copied.txt
"""

SLOW_DOCKERFILE = """ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN sleep 4
COPY app.txt /app.txt
"""


def token() -> str:
    return new_run_id()  # unique content per test: no accidental reuse across tests


def spec_for(ctx: Path, busybox: str, name: str = "app") -> BuildSpec:
    return BuildSpec(name=name, context=ctx, build_args={"BASE_IMAGE": busybox})


@pytest.mark.each_engine
def test_stale_image_story(make_builder: BuilderFactory, engine: Engine, busybox: str, tmp_path: Path) -> None:
    """kubernaut's story: edit one source, build again → new digest and image; unchanged → reused."""
    ctx = write_context(tmp_path / "svc", {"app.txt": f"v1 {token()}\n"}, APP_DOCKERFILE)
    spec = spec_for(ctx, busybox)

    first = make_builder().build(spec)
    assert not first.reused
    info = engine.inspect_image(first.ref)
    assert info is not None and info.id == first.image_id
    assert info.labels[LABEL_DIGEST] == first.input_digest
    assert info.labels[LABEL_MANAGED] == "true"
    assert "v1" in run_in(engine, first.ref, "cat", "/copied.txt")

    (ctx / "app.txt").write_text(f"v2 {token()}\n")
    second = make_builder().build(spec)
    assert second.input_digest != first.input_digest
    assert second.image_id != first.image_id
    assert not second.reused
    assert engine.inspect_image(second.ref).labels[LABEL_DIGEST] == second.input_digest  # type: ignore[union-attr]
    assert "v2" in run_in(engine, second.ref, "cat", "/copied.txt")

    third = make_builder().build(spec)
    assert third.reused
    assert third.image_id == second.image_id
    assert third.ref != second.ref  # a new unique tag for the new run
    assert engine.inspect_image(third.ref).id == second.image_id  # type: ignore[union-attr]


@pytest.mark.each_engine
def test_no_cache_rebuilds_even_when_inputs_are_unchanged(make_builder: BuilderFactory, busybox: str,
                                                          tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "svc", {"app.txt": token()}, APP_DOCKERFILE)
    first = make_builder().build(spec_for(ctx, busybox))
    again = make_builder(no_cache=True).build(spec_for(ctx, busybox))
    assert not again.reused
    assert again.image_id != first.image_id
    assert again.input_digest == first.input_digest


@pytest.mark.each_engine
def test_sources_edited_during_the_build_raise_stale(make_builder: BuilderFactory, engine: Engine,
                                                      busybox: str, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "svc", {"app.txt": f"before {token()}"}, SLOW_DOCKERFILE)
    events: list[BuildEvent] = []
    edited = threading.Event()

    def sink(event: BuildEvent) -> None:
        events.append(event)
        if event.phase == "build":
            def edit() -> None:
                time.sleep(1.5)
                (ctx / "app.txt").write_text(f"after {token()}")
                edited.set()
            threading.Thread(target=edit, daemon=True).start()

    builder = make_builder(on_event=sink)
    with pytest.raises(StaleImageError) as info:
        builder.build(spec_for(ctx, busybox))
    assert edited.is_set()
    err = info.value
    assert err.expected != err.actual
    assert err.changed == ("app.txt",)
    assert "app.txt" in str(err) and "Hint:" in str(err)
    assert engine.inspect_image(builder.ref_for(spec_for(ctx, busybox))) is None  # the stale tag is gone


@pytest.mark.each_engine
def test_rebuild_on_stale_produces_a_fresh_matching_image(make_builder: BuilderFactory, engine: Engine,
                                                          busybox: str, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "svc", {"app.txt": f"before {token()}"}, SLOW_DOCKERFILE)
    final = f"after {token()}"
    edits = {"n": 0}

    def sink(event: BuildEvent) -> None:
        if event.phase == "build" and edits["n"] == 0:
            edits["n"] += 1
            threading.Thread(target=lambda: (time.sleep(1.5), (ctx / "app.txt").write_text(final)),
                             daemon=True).start()

    image = make_builder(rebuild_on_stale=True, on_event=sink).build(spec_for(ctx, busybox))
    assert image.rebuilt_after_stale
    assert run_in(engine, image.ref, "cat", "/app.txt") == final
    info = engine.inspect_image(image.ref)
    assert info is not None and info.labels[LABEL_DIGEST] == image.input_digest


@pytest.mark.each_engine
def test_verify_detects_a_tag_that_no_longer_matches(make_builder: BuilderFactory, engine: Engine, busybox: str,
                                                     tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "svc", {"app.txt": token()}, APP_DOCKERFILE)
    builder = make_builder()
    image = builder.build(spec_for(ctx, busybox))
    builder.verify(image)  # fresh: passes

    # Someone overwrites our tag with another image (what a hard-coded tag invites).
    other = write_context(tmp_path / "other", {"x": token()}, f"FROM {busybox}\nCOPY x /x\n")
    subprocess.run([engine.binary, "build", "-q", "-t", image.ref, str(other)], check=True, capture_output=True,
                   env={**os.environ, "DOCKER_BUILDKIT": "0"})
    intruder = engine.inspect_image(image.ref)
    assert intruder is not None
    with pytest.raises(StaleImageError, match="the tag now points at"):
        builder.verify(image)
    engine.untag(intruder.id)
    # our own image lost its tag: cleanup still finds it by its run-id label
    assert image.image_id in remove_run_images(engine, builder.run_id).removed
    assert engine.inspect_image(image.image_id) is None


@pytest.mark.each_engine
def test_concurrent_runs_get_distinct_tags_and_cleanup_is_isolated(make_builder: BuilderFactory, engine: Engine,
                                                                   busybox: str, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "svc", {"app.txt": token()}, APP_DOCKERFILE)
    a, b = make_builder(consumer="suite"), make_builder(consumer="suite")
    results: dict[str, object] = {}

    def go(name: str, builder: object) -> None:
        results[name] = builder.build(spec_for(ctx, busybox))  # type: ignore[attr-defined]

    threads = [threading.Thread(target=go, args=(n, x)) for n, x in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    img_a, img_b = results["a"], results["b"]
    assert img_a.ref != img_b.ref  # type: ignore[attr-defined]
    removal = remove_run_images(engine, a.run_id)
    assert img_a.ref in removal.removed  # type: ignore[attr-defined]
    assert engine.inspect_image(img_a.ref) is None  # type: ignore[attr-defined]
    still = engine.inspect_image(img_b.ref)  # type: ignore[attr-defined]
    assert still is not None and still.id == img_b.image_id  # type: ignore[attr-defined]


@pytest.mark.each_engine
def test_failing_run_step_carries_the_log_tail_and_leaves_nothing(make_builder: BuilderFactory, engine: Engine,
                                                                  busybox: str, tmp_path: Path) -> None:
    marker = f"kti-marker-{token()}"
    ctx = write_context(tmp_path / "svc", {"app.txt": "x"},
                        f"FROM {busybox}\nRUN echo {marker} && echo no-such-dependency >&2 && exit 7\n")
    builder = make_builder()
    spec = BuildSpec(name="broken", context=ctx)
    with pytest.raises(BuildError) as info:
        builder.build(spec)
    text = str(info.value)
    assert "exit" in text and "Hint:" in text
    assert marker in info.value.log_tail and "no-such-dependency" in info.value.log_tail
    assert engine.inspect_image(builder.ref_for(spec)) is None
    leftover = subprocess.run([engine.binary, "ps", "-a", "--no-trunc", "--format", "{{.Command}}"],
                              capture_output=True, text=True, check=True).stdout
    assert marker not in leftover, "an intermediate container of the failed build was left behind"


@pytest.mark.each_engine
def test_a_failed_rebuild_in_a_warm_run_keeps_the_environments_tag(make_builder: BuilderFactory, engine: Engine,
                                                                    busybox: str, tmp_path: Path) -> None:
    """A warm run (same run id) whose rebuild fails must not remove the tag it found: that tag belongs to the
    running environment, which still deploys that image."""
    run_id = new_run_id()
    ctx = write_context(tmp_path / "svc", {"app.txt": f"v1 {token()}\n"}, APP_DOCKERFILE)
    first = make_builder(run_id=run_id).build(spec_for(ctx, busybox))
    (ctx / "Dockerfile").write_text(APP_DOCKERFILE + "RUN exit 9\n")
    with pytest.raises(BuildError):
        make_builder(run_id=run_id).build(spec_for(ctx, busybox))
    info = engine.inspect_image(first.ref)
    assert info is not None, "the environment's tag was removed by a run that did not create it"
    assert info.id == first.image_id


def test_parallel_builds_return_values_and_collect_every_failure(make_builder: BuilderFactory, engine: Engine,
                                                                 busybox: str, tmp_path: Path) -> None:
    specs = [spec_for(write_context(tmp_path / n, {"app.txt": f"{n} {token()}"}, APP_DOCKERFILE), busybox, n)
             for n in ("one", "two")]
    bad = BuildSpec(name="bad", context=write_context(tmp_path / "bad", {}, f"FROM {busybox}\nRUN exit 3\n"))
    missing = BuildSpec(name="missing", context=tmp_path / "nope")
    builder = make_builder()
    with pytest.raises(MultiBuildError) as info:
        builder.build_many([*specs, bad, missing])
    err = info.value
    assert set(err.images) == {"one", "two"}
    assert set(err.errors) == {"bad", "missing"}
    assert isinstance(err.errors["bad"], BuildError)
    assert isinstance(err.errors["missing"], ContextError)
    for image in err.images.values():
        assert engine.inspect_image(image.ref) is not None
    assert "2 of 4 image builds failed" in str(err)


def test_bad_input_fails_before_the_engine_builds(make_builder: BuilderFactory, engine: Engine,
                                                  tmp_path: Path) -> None:
    builder = make_builder()
    ctx = write_context(tmp_path / "svc", {"a": "1"}, "FROM scratch\n")
    cases = [
        (BuildSpec(name="x", context=ctx, dockerfile="Missing.Dockerfile"), ContextError, "Dockerfile not found"),
        (BuildSpec(name="x", context=ctx / "a"), ContextError, "not a directory"),
        (BuildSpec(name="Bad_Name", context=ctx), Exception, "invalid image name"),
    ]
    for spec, exc_type, text in cases:
        with pytest.raises(exc_type, match=text) as info:
            builder.build(spec)
        assert "Hint:" in str(info.value)
    (ctx / ".dockerignore").write_text("*\n")
    with pytest.raises(ContextError, match="every file"):
        builder.build(BuildSpec(name="x", context=ctx))
    assert engine.image_ids({LABEL_RUN: builder.run_id}) == []


def test_engine_not_reachable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-daemon.sock")
    with pytest.raises(EngineUnavailableError, match="not reachable") as info:
        get_engine("docker")
    assert "Hint:" in str(info.value)


def test_unreadable_file_is_a_context_error() -> None:
    """As an unprivileged user (root reads everything), a mode-000 file is named with a hint."""
    if os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists() or not Path("/usr/bin/python3").exists():
        pytest.skip("needs root, setpriv and /usr/bin/python3 to run the digest as an unprivileged user")
    top = Path(tempfile.mkdtemp(prefix="kti-unreadable-"))  # pytest's tmp dirs are private to root
    top.chmod(0o755)
    ctx = write_context(top / "svc", {"secret.txt": "x"}, "FROM scratch\n")
    (ctx / "secret.txt").chmod(0)
    code = f"from kubetest_infra.digest import compute_digest; compute_digest({str(ctx)!r}, use_cache=False)"
    proc = subprocess.run(
        ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "env", f"PYTHONPATH={ROOT}",
         "/usr/bin/python3", "-c", code], capture_output=True, text=True, check=False)
    shutil.rmtree(top)
    assert proc.returncode != 0
    assert "ContextError: cannot read" in proc.stderr and "secret.txt" in proc.stderr and "Hint:" in proc.stderr


def test_cli_build_json_prints_only_json(engine: Engine, busybox: str, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "svc", {"app.txt": token()}, APP_DOCKERFILE)
    run_id = new_run_id()
    argv = [sys.executable, "-m", "kubetest_infra.cli", "build", "--context", str(ctx), "--name", "cliapp",
            "--consumer", "clitest", "--build-arg", f"BASE_IMAGE={busybox}", "--run-id", run_id, "--json"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=True)
        doc = json.loads(proc.stdout)
        entry = doc["images"]["cliapp"]
        assert set(entry) == {"ref", "image_id", "input_digest", "reused", "build_seconds", "base_images"}
        assert entry["base_images"] == {busybox: engine.inspect_image(busybox).id}  # type: ignore[union-attr]
        assert entry["ref"] == f"localhost/cliapp:clitest-{run_id}"
        assert engine.inspect_image(entry["ref"]).id == entry["image_id"]  # type: ignore[union-attr]
        assert "[cliapp] done" in proc.stderr
    finally:
        remove_run_images(engine, run_id)
    assert engine.inspect_image(f"localhost/cliapp:clitest-{run_id}") is None


def test_cli_errors_have_hints_and_exit_codes(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "kubetest_infra.cli"]
    unknown = subprocess.run([*base, "--engine", "rkt", "build", "--context", str(tmp_path), "--name", "a",
                              "--consumer", "b"], capture_output=True, text=True, check=False)
    assert unknown.returncode == 1 and "unknown container engine 'rkt'" in unknown.stderr and "Hint:" in unknown.stderr
    assert unknown.stdout == ""
    bad_run = subprocess.run([*base, "build", "--context", str(tmp_path), "--name", "a", "--consumer", "b",
                              "--run-id", "bad id"], capture_output=True, text=True, check=False)
    assert bad_run.returncode == 1 and "not a valid run id" in bad_run.stderr
    usage = subprocess.run([*base, "build", "--build-arg", "NOEQUALS"], capture_output=True, text=True, check=False)
    assert usage.returncode == 2


@pytest.mark.each_engine
def test_gc_only_touches_our_old_images(make_builder: BuilderFactory, engine: Engine, busybox: str,
                                        tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "svc", {"app.txt": token()}, APP_DOCKERFILE)
    image = make_builder().build(spec_for(ctx, busybox))
    would = gc(engine, parse_age("0s"), dry_run=True)
    assert image.ref in would.removed
    assert busybox not in would.removed  # not labelled by us: never a candidate
    kept = gc(engine, parse_age("1000d"))
    assert image.ref not in kept.removed
    assert engine.inspect_image(image.ref) is not None


def test_secret_build_args_reach_the_build_but_never_our_errors(make_builder: BuilderFactory, busybox: str,
                                                                 tmp_path: Path) -> None:
    secret = f"s3cret-{token()}"
    ctx = write_context(tmp_path / "svc", {"app.txt": token()},
                        f"FROM {busybox}\nARG API_TOKEN\nRUN echo \"token is $API_TOKEN\" && exit 4\n")
    with pytest.raises(BuildError) as info:
        make_builder().build(BuildSpec("secretapp", ctx, build_args={"API_TOKEN": secret}))
    text = str(info.value)
    assert "token is ***" in text  # the value reached the RUN step, and was redacted in our error
    assert secret not in text
