"""Removing what this run (or an old run) of ours created, and nothing else.

Only images carrying our ``io.kubetest-infra.managed`` label are ever considered. Removal is always
by *tag* (``docker image rm <ref>``, never forced), so an image that another run reused and tagged
stays until its last tag is gone.

A run's tags are ``{consumer}-{run_id}`` (DD-TEST-001). Both parts may contain ``-``, so a tag is
matched exactly, never by suffix: with the consumer given, ``{consumer}-{run_id}``; without it, the
consumers known from the images' ``io.kubetest-infra.consumer`` labels. A tag that reads as two
different (consumer, run) pairs is ambiguous and refused (:class:`AmbiguousRunError`) rather than
guessed: ``kti clean --run-id 1`` never removes run ``build-1``'s tags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from kubetest_infra.build import LABEL_CONSUMER, LABEL_MANAGED, LABEL_RUN
from kubetest_infra.engine import Engine, ImageInfo
from kubetest_infra.errors import ConfigError, TagError
from kubetest_infra.tags import validate_consumer, validate_run_id

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class Removal:
    """What a cleanup removed and what it had to leave."""

    removed: tuple[str, ...]
    failed: tuple[str, ...]


def managed_images(engine: Engine) -> list[ImageInfo]:
    return engine.inspect_images(engine.image_ids({LABEL_MANAGED: "true"}))


class AmbiguousRunError(ConfigError):
    """A tag that reads as this run's and as another (consumer, run) pair's: nothing is removed."""


def _tag(ref: str) -> str:
    return ref.rsplit(":", 1)[-1] if ":" in ref.rsplit("/", 1)[-1] else ""


def _readings(tag: str, consumers: set[str]) -> list[tuple[str, str]]:
    """Every (consumer, run id) pair ``tag`` can be read as, for the known consumers."""
    out = []
    for consumer in consumers:
        if tag.startswith(consumer + "-"):
            run = tag[len(consumer) + 1:]
            try:
                validate_run_id(run)
            except TagError:
                continue
            out.append((consumer, run))
    return sorted(out)


def run_refs(images: list[ImageInfo], run_id: str, consumer: str | None = None) -> list[str]:
    """Tags ``{consumer}-{run_id}`` on our images, matched exactly (see the module docstring)."""
    if consumer is not None:
        return sorted({ref for image in images for ref in image.repo_tags if _tag(ref) == f"{consumer}-{run_id}"})
    known = {c for image in images if (c := image.labels.get(LABEL_CONSUMER))}
    refs: set[str] = set()
    ambiguous: list[str] = []
    for image in images:
        for ref in image.repo_tags:
            readings = _readings(_tag(ref), known)
            if not any(run == run_id for _, run in readings):
                continue
            if len(readings) == 1:
                refs.add(ref)
            else:
                ambiguous.append(f"{ref} (" + " or ".join(f"suite {c} run {r}" for c, r in readings) + ")")
    if ambiguous:
        raise AmbiguousRunError(
            f"run id {run_id!r} is ambiguous: {len(ambiguous)} tag(s) read as this run and as another one: "
            + ", ".join(sorted(ambiguous)) + "; nothing was removed",
            hint=f"name the suite too: kti clean --run-id {run_id} --suite SUITE "
            "(remove_run_images(..., consumer=SUITE))")
    return sorted(refs)


def remove_run_images(engine: Engine, run_id: str, consumer: str | None = None) -> Removal:
    """Remove every tag this run put on our images, and images this run built that lost all tags.

    ``consumer`` (the suite name) makes the match exact even when suite names and run ids share
    ``-``-separated parts; without it an ambiguous tag raises :class:`AmbiguousRunError`.
    """
    validate_run_id(run_id, source="the run id")
    if consumer is not None:
        validate_consumer(consumer)
    images = managed_images(engine)
    refs = run_refs(images, run_id, consumer)
    orphans = [i.id for i in images if not i.repo_tags and i.labels.get(LABEL_RUN) == run_id
               and (consumer is None or i.labels.get(LABEL_CONSUMER) == consumer)]
    if not refs and not orphans:
        _refuse_whole_tag(images, run_id)
    return _untag_all(engine, refs + orphans)


def _refuse_whole_tag(images: list[ImageInfo], run_id: str) -> None:
    """A run id that is itself a whole tag ``{consumer}-{run}`` of ours was pasted from ``kti status``."""
    known = {c for image in images if (c := image.labels.get(LABEL_CONSUMER))}
    for image in images:
        for ref in image.repo_tags:
            if _tag(ref) == run_id:
                readings = _readings(run_id, known)
                if readings:
                    consumer, run = readings[0]
                    raise ConfigError(f"{run_id!r} is a whole tag ({ref}: suite {consumer}, run {run}), not a run "
                                      "id; nothing was removed",
                                      hint=f"pass the run id alone: kti clean --run-id {run} --suite {consumer}")


def parse_age(text: str) -> timedelta:
    """``30m``, ``12h``, ``7d``, ``2w`` → timedelta."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ConfigError(f"invalid age {text!r}", hint="use a number and a unit: 30m, 12h, 7d, 2w")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def parse_time(text: str) -> datetime | None:
    """RFC 3339 with up to nanoseconds, as engines print it."""
    if not text or text.startswith("0001-01-01"):
        return None
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?", text)
    if not m:
        return None
    frac = (m.group(2) or ".0")[:7]
    zone = m.group(3) or "Z"
    zone = "+00:00" if zone == "Z" else zone
    return datetime.fromisoformat(f"{m.group(1)}{frac}{zone}")


def last_used(image: ImageInfo) -> datetime | None:
    """The later of creation and last tag time (a reused image is retagged, not rebuilt)."""
    times = [t for t in (parse_time(image.created), parse_time(image.last_tag_time)) if t is not None]
    return max(times) if times else None


def gc(engine: Engine, older_than: timedelta, now: datetime | None = None, dry_run: bool = False) -> Removal:
    """Remove our labelled images not built or tagged within ``older_than``."""
    now = now or datetime.now(timezone.utc)
    cutoff = now - older_than
    refs: list[str] = []
    for image in managed_images(engine):
        when = last_used(image)
        if when is not None and when < cutoff:
            refs.extend(image.repo_tags or (image.id,))
    if dry_run:
        return Removal(tuple(sorted(refs)), ())
    return _untag_all(engine, sorted(refs))


def _untag_all(engine: Engine, refs: list[str]) -> Removal:
    removed: list[str] = []
    failed: list[str] = []
    for ref in refs:
        (removed if engine.untag(ref) else failed).append(ref)
    return Removal(tuple(removed), tuple(failed))
