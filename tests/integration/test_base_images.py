"""Base images in the input digest, against the real engine (docker tier).

Each test makes its own base images (busybox + a marker file, built through the Builder so their tags
are cleaned up with the run) and its own movable tags ``localhost/ktibase-<token>:t``, which it
points at one base, then at another, exactly as ``docker tag`` (or a pull) moves a tag for a user.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kubetest_infra.build import LABEL_RUN, BuildEvent, BuildSpec, BuiltImage
from kubetest_infra.engine import Engine
from kubetest_infra.errors import BaseImageError, StaleImageError
from kubetest_infra.tags import new_run_id
from tests.integration.conftest import BuilderFactory, run_in, write_context

BASE_DOCKERFILE = "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo {marker} > /base-marker\n"
APP_DOCKERFILE = "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY app.txt /app.txt\n"

MakeBase = Callable[[str], BuiltImage]
Retag = Callable[[str, BuiltImage], None]


@pytest.fixture
def make_base(make_builder: BuilderFactory, busybox: str, tmp_path: Path) -> MakeBase:
    """A base image: busybox plus /base-marker holding ``marker`` (unique per call)."""
    builder = make_builder(consumer="itestbase")

    def factory(marker: str) -> BuiltImage:
        unique = f"{marker}-{new_run_id()}"
        ctx = write_context(tmp_path / f"base-{unique}", {},
                            BASE_DOCKERFILE.replace("{marker}", unique))
        return builder.build(BuildSpec(name="ktibase", context=ctx, build_args={"BASE_IMAGE": busybox}))

    return factory


@pytest.fixture
def moving_tag(engine: Engine) -> Iterator[tuple[str, Retag]]:
    """A tag of this test's own (``localhost/ktibase-<token>:t``) and a function pointing it at a base."""
    tags: list[str] = []

    def point(tag: str, base: BuiltImage) -> None:
        engine.tag(base.image_id, tag)
        if tag not in tags:
            tags.append(tag)

    yield f"localhost/ktibase-{new_run_id().lower()}:t", point
    for tag in tags:
        engine.untag(tag)
    assert all(engine.inspect_image(t) is None for t in tags), "a moving tag was left behind"


def second_tag(first: str) -> str:
    return first.replace(":t", ":u")


def marker(engine: Engine, ref: str) -> str:
    return run_in(engine, ref, "cat", "/base-marker").strip()


def descends_from(engine: Engine, image: BuiltImage, base: BuiltImage) -> bool:
    """The image's layers start with the base's: it was built on that base."""
    child, parent = engine.inspect_image(image.image_id), engine.inspect_image(base.image_id)
    assert child is not None
    assert parent is not None
    assert parent.layers, "a busybox-derived base has layers"
    return child.layers[:len(parent.layers)] == parent.layers


def app_spec(ctx: Path, base_tag: str) -> BuildSpec:
    return BuildSpec(name="baseapp", context=ctx, build_args={"BASE_IMAGE": base_tag})


def test_a_moved_base_tag_rebuilds_onto_the_new_base(make_builder: BuilderFactory, make_base: MakeBase,
                                                     moving_tag: tuple[str, Retag], engine: Engine,
                                                     tmp_path: Path) -> None:
    tag, point = moving_tag
    one, two = make_base("one"), make_base("two")
    point(tag, one)
    ctx = write_context(tmp_path / "app", {"app.txt": new_run_id()}, APP_DOCKERFILE)

    first = make_builder().build(app_spec(ctx, tag))
    assert not first.reused
    assert first.base_images == {tag: one.image_id}
    assert descends_from(engine, first, one)
    unchanged = make_builder().build(app_spec(ctx, tag))
    assert unchanged.reused and unchanged.image_id == first.image_id

    point(tag, two)  # the sources are unchanged; only the tag in FROM moved
    moved = make_builder().build(app_spec(ctx, tag))
    assert not moved.reused, "unchanged sources on a moved base must be rebuilt, not retagged"
    assert moved.input_digest != first.input_digest
    assert moved.base_images == {tag: two.image_id}
    assert descends_from(engine, moved, two) and not descends_from(engine, moved, one)
    assert marker(engine, moved.ref).startswith("two-")

    point(tag, one)  # back: the first image is exactly right again, so it is reused
    back = make_builder().build(app_spec(ctx, tag))
    assert back.reused and back.image_id == first.image_id


def test_multi_stage_moving_either_base_rebuilds(make_builder: BuilderFactory, make_base: MakeBase,
                                                 moving_tag: tuple[str, Retag], engine: Engine,
                                                 tmp_path: Path) -> None:
    build_tag, point = moving_tag
    final_tag = second_tag(build_tag)
    one, two = make_base("one"), make_base("two")
    point(build_tag, one)
    point(final_tag, two)
    dockerfile = ("ARG BUILD_BASE\nARG FINAL_BASE\n"
                  "FROM ${BUILD_BASE} AS build\nRUN cp /base-marker /built\n"
                  "FROM ${FINAL_BASE}\nCOPY --from=build /built /from-build\n")
    ctx = write_context(tmp_path / "ms", {"app.txt": new_run_id()}, dockerfile)
    spec = BuildSpec(name="multistage", context=ctx, build_args={"BUILD_BASE": build_tag, "FINAL_BASE": final_tag})

    first = make_builder().build(spec)
    assert first.base_images == {build_tag: one.image_id, final_tag: two.image_id}
    assert run_in(engine, first.ref, "cat", "/from-build").startswith("one-")
    assert descends_from(engine, first, two)

    point(build_tag, two)  # the build stage's base: only a COPY --from of it reaches the image
    after_build_base = make_builder().build(spec)
    assert not after_build_base.reused
    assert run_in(engine, after_build_base.ref, "cat", "/from-build").startswith("two-")

    point(final_tag, one)  # the final stage's base
    after_final_base = make_builder().build(spec)
    assert not after_final_base.reused
    assert descends_from(engine, after_final_base, one)
    assert marker(engine, after_final_base.ref).startswith("one-")
    assert len({first.input_digest, after_build_base.input_digest, after_final_base.input_digest}) == 3


def test_copy_from_an_image_is_in_the_digest(make_builder: BuilderFactory, make_base: MakeBase,
                                             moving_tag: tuple[str, Retag], engine: Engine, tmp_path: Path) -> None:
    tag, point = moving_tag
    one, two = make_base("one"), make_base("two")
    point(tag, one)
    ctx = write_context(tmp_path / "cf", {}, f"FROM scratch\nCOPY --from={tag} /base-marker /copied\n")
    spec = BuildSpec(name="copyfrom", context=ctx)
    first = make_builder().build(spec)
    assert first.base_images == {tag: one.image_id}
    point(tag, two)
    second = make_builder().build(spec)
    assert not second.reused and second.image_id != first.image_id


def test_from_scratch_needs_no_base(make_builder: BuilderFactory, engine: Engine, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "scratch", {"app.txt": new_run_id()}, "FROM scratch\nCOPY app.txt /app.txt\n")
    spec = BuildSpec(name="scratchapp", context=ctx)
    first = make_builder().build(spec)
    assert not first.reused and first.base_images == {}
    info = engine.inspect_image(first.ref)
    assert info is not None and len(info.layers) == 1  # only our COPY
    again = make_builder().build(spec)
    assert again.reused and again.image_id == first.image_id


def test_a_build_arg_that_changes_the_base_rebuilds(make_builder: BuilderFactory, make_base: MakeBase,
                                                    moving_tag: tuple[str, Retag], engine: Engine,
                                                    tmp_path: Path) -> None:
    tag, point = moving_tag
    other = second_tag(tag)
    one, two = make_base("one"), make_base("two")
    point(tag, one)
    point(other, two)
    ctx = write_context(tmp_path / "arg", {"app.txt": new_run_id()}, APP_DOCKERFILE)
    on_one = make_builder().build(app_spec(ctx, tag))
    on_two = make_builder().build(app_spec(ctx, other))
    assert not on_two.reused and on_two.image_id != on_one.image_id
    assert on_two.base_images == {other: two.image_id}
    assert descends_from(engine, on_two, two)


def test_a_base_that_cannot_be_had_fails_before_the_build(make_builder: BuilderFactory, engine: Engine,
                                                          tmp_path: Path) -> None:
    missing = f"localhost:1/ktibase-missing-{new_run_id().lower()}:t"  # nothing listens on port 1
    ctx = write_context(tmp_path / "missing", {"app.txt": "x"}, APP_DOCKERFILE)
    builder = make_builder()
    with pytest.raises(BaseImageError, match=r"base image .* is not in the docker engine and cannot be pulled") as info:
        builder.build(app_spec(ctx, missing))
    assert "Dockerfile:2" in str(info.value) and "Hint:" in str(info.value)
    assert engine.image_ids({LABEL_RUN: builder.run_id}) == []


def test_a_base_tag_moved_during_the_build_is_stale(make_builder: BuilderFactory, make_base: MakeBase,
                                                    moving_tag: tuple[str, Retag], engine: Engine,
                                                    tmp_path: Path) -> None:
    """Moved after the engine read FROM: the image is right for the old base, but the tag says otherwise."""
    tag, point = moving_tag
    one, two = make_base("one"), make_base("two")
    point(tag, one)
    ctx = write_context(tmp_path / "slow", {"app.txt": new_run_id()},
                        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN sleep 3\nCOPY app.txt /app.txt\n")
    moved = threading.Event()

    def sink(event: BuildEvent) -> None:
        if event.phase == "build":
            threading.Timer(1.5, lambda: (point(tag, two), moved.set())).start()

    builder = make_builder(on_event=sink)
    with pytest.raises(StaleImageError, match=f"the base image tag {tag} moved while the build ran") as info:
        builder.build(app_spec(ctx, tag))
    assert moved.is_set()
    assert info.value.changed == (f"<base>{tag}",)
    assert engine.inspect_image(builder.ref_for(app_spec(ctx, tag))) is None  # the stale tag is gone


def test_a_base_tag_moved_before_the_engine_read_it_is_caught_by_descent(
        make_builder: BuilderFactory, make_base: MakeBase, moving_tag: tuple[str, Retag], engine: Engine,
        tmp_path: Path) -> None:
    """Moved between our digest and the engine's FROM: the image is built on a base we did not digest."""
    tag, point = moving_tag
    one, two = make_base("one"), make_base("two")
    point(tag, one)
    ctx = write_context(tmp_path / "race", {"app.txt": new_run_id()}, APP_DOCKERFILE)
    attempts: list[str] = []

    def sink(event: BuildEvent) -> None:
        if event.phase == "build":
            attempts.append(event.message)
            if len(attempts) == 1:
                point(tag, two)  # synchronously: before the engine starts

    builder = make_builder(on_event=sink)
    with pytest.raises(StaleImageError, match=f"does not descend from {tag}") as info:
        builder.build(app_spec(ctx, tag))
    assert "Hint: the base tag moved during the build" in str(info.value)
    assert engine.inspect_image(builder.ref_for(app_spec(ctx, tag))) is None

    attempts.clear()
    point(tag, one)
    healed = make_builder(on_event=sink, rebuild_on_stale=True).build(app_spec(ctx, tag))
    assert healed.rebuilt_after_stale and len(attempts) == 2
    assert healed.base_images == {tag: two.image_id} and descends_from(engine, healed, two)
