"""DD-TEST-001 unique image references: ``{registry}/{service}:{consumer}-{run_id}``.

kubernaut derived its suffix from ``time.Now().UnixNano()`` printed in hex and cut to 8 characters,
which keeps the high bits of the clock: the suffix only changes every 2^32 ns ≈ 4.3 s, so two runs
started within seconds collide. Here the run id comes from a CSPRNG (48 bits) unless the caller pins
it, and every tag is checked against Docker's grammar before it reaches an engine.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from kubetest_infra.errors import TagError

DEFAULT_REGISTRY = "localhost"
RUN_ID_ENV = "KTI_RUN_ID"
XDIST_RUN_ENV = "PYTEST_XDIST_TESTRUNUID"
RUN_ID_BYTES = 6  # 12 hex characters, 48 bits: collision odds ~1e-9 for 1000 concurrent runs

MAX_TAG_LENGTH = 128
MAX_NAME_LENGTH = 255
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_DOMAIN_COMPONENT = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_DOMAIN = re.compile(rf"^{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?$|^\[[0-9A-Fa-f:]+\](?::[0-9]+)?$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CONSUMER = re.compile(r"^[a-z0-9](?:[a-z0-9_.-]{0,62}[a-z0-9])?$")


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference. ``domain`` is empty when the reference names none."""

    domain: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def repository(self) -> str:
        return f"{self.domain}/{self.path}" if self.domain else self.path

    def __str__(self) -> str:
        out = self.repository
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out

    @property
    def is_local(self) -> bool:
        """True for references that only exist on this machine (``localhost/…``, ``kti-…``)."""
        return self.domain.split(":")[0] in ("localhost", "127.0.0.1")


def new_run_id() -> str:
    """A fresh run id from the operating system's CSPRNG."""
    return secrets.token_hex(RUN_ID_BYTES)


def resolve_run_id(explicit: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The run id for this process.

    Order: ``explicit`` → ``$KTI_RUN_ID`` → derived from ``$PYTEST_XDIST_TESTRUNUID`` (so every
    xdist worker of one session agrees) → a new CSPRNG id.
    """
    env = os.environ if env is None else env
    if explicit:
        return validate_run_id(explicit, source="the run id given")
    if env.get(RUN_ID_ENV):
        return validate_run_id(env[RUN_ID_ENV], source=f"${RUN_ID_ENV}")
    xdist = env.get(XDIST_RUN_ENV, "")
    if xdist:
        cleaned = re.sub(r"[^a-z0-9]", "", xdist.lower())[: RUN_ID_BYTES * 2]
        if cleaned:
            return cleaned
    return new_run_id()


def validate_run_id(run_id: str, source: str = "run id") -> str:
    if not _RUN_ID.match(run_id):
        raise TagError(
            f"{source} {run_id!r} is not a valid run id",
            hint="use 1-64 characters from [A-Za-z0-9_.-], starting with a letter or digit",
        )
    return run_id


def validate_tag(tag: str) -> str:
    """Docker's tag grammar, plus DD-TEST-001's ban on ``latest``."""
    if len(tag) > MAX_TAG_LENGTH:
        raise TagError(
            f"image tag is {len(tag)} characters long, over Docker's limit of {MAX_TAG_LENGTH}: {tag[:40]}…",
            hint="shorten the consumer (suite) name or the run id",
        )
    if not _TAG.match(tag):
        raise TagError(
            f"invalid image tag {tag!r}",
            hint="a tag uses [A-Za-z0-9_.-] and must not start with '.' or '-'",
        )
    if tag.lower() == "latest":
        raise TagError(
            "the tag 'latest' is refused (DD-TEST-001)",
            hint="'latest' is mutable and shared between runs; use a unique tag such as "
            "'{consumer}-{run_id}' (kubetest_infra.tags.image_ref builds one)",
        )
    return tag


def validate_consumer(consumer: str) -> str:
    if not _CONSUMER.match(consumer):
        raise TagError(
            f"invalid consumer (suite) name {consumer!r}",
            hint="use lowercase letters, digits and '._-', starting and ending with a letter or digit",
        )
    return consumer


def validate_service(service: str) -> str:
    for part in service.split("/"):
        if not _PATH_COMPONENT.match(part):
            raise TagError(
                f"invalid image name {service!r}: component {part!r} breaks Docker's grammar",
                hint="use lowercase letters and digits, separated by '.', '_', '__' or '-'",
            )
    return service


def parse_ref(ref: str) -> ImageRef:
    """Parse ``[domain/]path[:tag][@digest]`` following Docker's reference grammar."""
    if not ref or ref != ref.strip():
        raise TagError(f"invalid image reference {ref!r}", hint="remove surrounding whitespace")
    rest, _, digest = ref.partition("@")
    if digest and not _DIGEST.match(digest):
        raise TagError(f"invalid digest in image reference {ref!r}", hint="use '@sha256:<64 hex>'")
    tag: str | None = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
    domain = ""
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        if not _DOMAIN.match(first):
            raise TagError(f"invalid registry host {first!r} in {ref!r}", hint="check the reference")
        domain, rest = first, remainder
    validate_service(rest)
    if len(rest) + len(domain) + 1 > MAX_NAME_LENGTH:
        raise TagError(f"image name too long in {ref!r}", hint=f"keep it under {MAX_NAME_LENGTH} characters")
    if tag is not None and not _TAG.match(tag):
        raise TagError(
            f"invalid image tag {tag!r} in {ref!r}",
            hint="a tag uses [A-Za-z0-9_.-], at most 128 characters, not starting with '.' or '-'",
        )
    return ImageRef(domain=domain, path=rest, tag=tag, digest=digest or None)


def require_pinned(ref: str) -> ImageRef:
    """Refuse untagged references and ``latest``; accept a tag or a digest."""
    parsed = parse_ref(ref)
    if parsed.tag is None and parsed.digest is None:
        raise TagError(
            f"image reference {ref!r} has no tag (it would mean 'latest')",
            hint="pin it: add a unique tag or an @sha256 digest",
        )
    if parsed.tag is not None:
        validate_tag(parsed.tag)
    return parsed


def image_ref(service: str, consumer: str, run_id: str, registry: str = DEFAULT_REGISTRY) -> str:
    """The DD-TEST-001 reference ``{registry}/{service}:{consumer}-{run_id}``, validated."""
    validate_service(service)
    validate_consumer(consumer)
    validate_run_id(run_id)
    tag = validate_tag(f"{consumer}-{run_id}")
    registry = registry.strip("/")
    ref = f"{registry}/{service}:{tag}" if registry else f"{service}:{tag}"
    parse_ref(ref)
    return ref
