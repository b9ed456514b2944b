from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from kubetest_infra.build import LABEL_CONSUMER
from kubetest_infra.cleanup import AmbiguousRunError, last_used, parse_age, parse_time, run_refs
from kubetest_infra.engine import ImageInfo
from kubetest_infra.errors import ConfigError


def test_parse_age() -> None:
    assert parse_age("30m") == timedelta(minutes=30)
    assert parse_age("7d") == timedelta(days=7)
    assert parse_age("0s") == timedelta(0)
    for bad in ("", "7", "d7", "1y", "-1d"):
        with pytest.raises(ConfigError, match="Hint:"):
            parse_age(bad)


def test_parse_time_nanoseconds_and_zero() -> None:
    t = parse_time("2026-11-22T03:40:00.123456789Z")
    assert t == datetime(2026, 11, 22, 3, 40, 0, 123456, tzinfo=timezone.utc)
    assert parse_time("0001-01-01T00:00:00Z") is None
    assert parse_time("") is None
    assert parse_time("2026-11-22T03:40:00+02:00") == datetime(2026, 11, 22, 1, 40, tzinfo=timezone.utc)


def image(tags: tuple[str, ...], created: str = "", tagged: str = "", consumer: str | None = None) -> ImageInfo:
    labels = {LABEL_CONSUMER: consumer} if consumer else {}
    return ImageInfo(id="sha256:1", repo_tags=tags, labels=labels, created=created, size=0, last_tag_time=tagged)


def test_run_refs_only_take_this_runs_tags() -> None:
    imgs = [image(("localhost/a:suite-run1", "localhost/a:suite-run2"), consumer="suite"),
            image(("localhost/b:x-run1",), consumer="x")]
    assert run_refs(imgs, "run1") == ["localhost/a:suite-run1", "localhost/b:x-run1"]
    assert run_refs(imgs, "run") == []
    assert run_refs(imgs, "run1", consumer="x") == ["localhost/b:x-run1"]


def test_run_1_does_not_take_run_build_1() -> None:
    """The old suffix match took `ds-build-1` for run `1`."""
    imgs = [image(("localhost/a:ds-build-1", "localhost/a:ds-1"), consumer="ds")]
    assert run_refs(imgs, "1") == ["localhost/a:ds-1"]
    assert run_refs(imgs, "build-1") == ["localhost/a:ds-build-1"]
    assert run_refs(imgs, "1", consumer="ds") == ["localhost/a:ds-1"]


def test_a_tag_with_two_readings_is_refused_unless_the_suite_is_named() -> None:
    imgs = [image(("localhost/a:ds-build-1",), consumer="ds"), image(("localhost/b:ds-build-2",), consumer="ds-build")]
    with pytest.raises(AmbiguousRunError, match="--suite") as info:
        run_refs(imgs, "1")
    assert "suite ds-build run 1 or suite ds run build-1" in str(info.value) or \
        "suite ds run build-1 or suite ds-build run 1" in str(info.value)
    assert run_refs(imgs, "1", consumer="ds-build") == ["localhost/a:ds-build-1"]
    assert run_refs(imgs, "build-1", consumer="ds") == ["localhost/a:ds-build-1"]


def test_tags_of_a_consumer_no_label_names_are_left() -> None:
    """Without a label naming the consumer, nothing says where the run id starts: keep the tag."""
    assert run_refs([image(("localhost/a:other-1",))], "1") == []


def test_last_used_takes_the_later_of_created_and_tagged() -> None:
    img = image((), created="2026-01-01T00:00:00Z", tagged="2026-02-01T00:00:00Z")
    assert last_used(img) == datetime(2026, 2, 1, tzinfo=timezone.utc)
