"""Removing what this run (or an old run) of ours created, and nothing else.

Only images carrying our ``io.kubetest-infra.managed`` label are ever considered. Removal is always
by *tag* (``docker image rm <ref>``, never forced), so an image that another run reused and tagged
stays until its last tag is gone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from kubetest_infra.build import LABEL_MANAGED, LABEL_RUN
from kubetest_infra.engine import Engine, ImageInfo
from kubetest_infra.errors import ConfigError
from kubetest_infra.tags import validate_run_id

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class Removal:
    """What a cleanup removed and what it had to leave."""

    removed: tuple[str, ...]
    failed: tuple[str, ...]


def managed_images(engine: Engine) -> list[ImageInfo]:
    return engine.inspect_images(engine.image_ids({LABEL_MANAGED: "true"}))


def run_refs(images: list[ImageInfo], run_id: str) -> list[str]:
    """Tags this run put on our images: DD-TEST-001 tags end in ``-{run_id}``."""
    suffix = f"-{run_id}"
    return sorted({ref for image in images for ref in image.repo_tags if ref.rsplit(":", 1)[-1].endswith(suffix)})


def remove_run_images(engine: Engine, run_id: str) -> Removal:
    """Remove every tag this run put on our images, and images this run built that lost all tags."""
    validate_run_id(run_id)
    images = managed_images(engine)
    orphans = [i.id for i in images if not i.repo_tags and i.labels.get(LABEL_RUN) == run_id]
    return _untag_all(engine, run_refs(images, run_id) + orphans)


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
