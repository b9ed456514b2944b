"""Verified image builds.

``Builder.build(spec)`` returns a frozen :class:`BuiltImage` whose ``ref`` is the only name later
stages may use. The build is *verified*:

1. the input digest (:mod:`kubetest_infra.digest`) is computed before the build and stamped on the
   image as a label; it covers the context, the Dockerfile, the build args *and every external
   image the build uses* (:mod:`kubetest_infra.buildplan` finds them: each ``FROM`` after ARG
   substitution, ``COPY --from``, ``RUN --mount=from=``), each resolved to the engine's image id.
   A base missing from the engine is pulled first (the build would pull it anyway), ``pull=True``
   pulls every base first; a base that cannot be had raises :class:`BaseImageError`;
2. if an image with that digest already exists locally (and ``no_cache`` is off) it is retagged with
   this run's tag instead of rebuilt: unchanged sources cost a retag;
3. after a build the reference is read back from the engine: it must resolve to the image id the
   build produced and carry the digest label computed before the build;
4. the built image must descend from the resolved base of its final stage (its layers start with
   that base's layers), and the context and the base tags are read again: sources edited, or a base
   tag moved, while the build ran make the image stale.

A mismatch raises :class:`StaleImageError` (both digests, the inputs that differ), or triggers one
automatic ``--no-cache`` rebuild when ``rebuild_on_stale`` is set. Every build runs under a timeout
(``build_timeout``, default ``$KTI_BUILD_TIMEOUT`` or 30 minutes): :class:`BuildTimeoutError`.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kubetest_infra.buildplan import BuilderKind, BuildPlan, ImageUse, plan_build, uses_platform_args
from kubetest_infra.digest import DigestCache, InputDigest, check_inputs, compute_digest
from kubetest_infra.engine import BuildRequest, Engine, ImageInfo
from kubetest_infra.errors import (
    BaseImageError,
    BuildError,
    BuildTimeoutError,
    CommandError,
    CommandTimeoutError,
    ConfigError,
    ContextError,
    KtiError,
    MultiBuildError,
    StaleImageError,
    tail_lines,
)
from kubetest_infra.runner import Redactor, is_secret_key
from kubetest_infra.tags import (
    DEFAULT_REGISTRY,
    image_ref,
    validate_consumer,
    validate_run_id,
    validate_service,
)

log = logging.getLogger("kubetest_infra.build")

LABEL_PREFIX = "io.kubetest-infra"
LABEL_MANAGED = f"{LABEL_PREFIX}.managed"
LABEL_DIGEST = f"{LABEL_PREFIX}.input-digest"
LABEL_RUN = f"{LABEL_PREFIX}.run-id"
LABEL_SERVICE = f"{LABEL_PREFIX}.service"
LABEL_CONSUMER = f"{LABEL_PREFIX}.consumer"
LABEL_REVISION = "org.opencontainers.image.revision"
LABEL_SOURCE = "org.opencontainers.image.source"
DEFAULT_PARALLEL = 3
BUILD_TIMEOUT_ENV = "KTI_BUILD_TIMEOUT"
DEFAULT_BUILD_TIMEOUT = 1800.0  # 30 min: a cold build of a large image on a slow CI machine
DEFAULT_PULL_TIMEOUT = 600.0
_SECONDS = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h)?$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}
MISSING = "<missing>"  # a base reference that resolves to nothing in the engine (never in a build's digest)


def parse_timeout(text: str, source: str) -> float:
    """``900``, ``90s``, ``30m``, ``2h`` → seconds (> 0); :class:`ConfigError` naming ``source`` otherwise."""
    match = _SECONDS.match(text.strip())
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"] if match else 0.0
    if seconds <= 0:
        raise ConfigError(f"{source}: invalid timeout {text!r}",
                          hint="give a positive number of seconds, or a number with a unit: 900, 90s, 30m, 2h")
    return seconds


def default_build_timeout(env: Mapping[str, str] | None = None) -> float:
    """``$KTI_BUILD_TIMEOUT`` (seconds, or with a unit), else :data:`DEFAULT_BUILD_TIMEOUT`."""
    raw = (os.environ if env is None else env).get(BUILD_TIMEOUT_ENV, "").strip()
    return parse_timeout(raw, f"${BUILD_TIMEOUT_ENV}") if raw else DEFAULT_BUILD_TIMEOUT


@dataclass(frozen=True)
class BuildSpec:
    """What to build for one service. ``dockerfile`` is relative to ``context`` unless absolute."""

    name: str
    context: Path
    dockerfile: str | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    platform: str | None = None

    def dockerfile_path(self) -> Path:
        df = Path(self.dockerfile or "Dockerfile")
        return df if df.is_absolute() else Path(self.context) / df


@dataclass(frozen=True)
class BuiltImage:
    """One image of this run: the reference every later stage must use, and how it came to be."""

    name: str
    ref: str
    image_id: str
    input_digest: str
    reused: bool
    build_seconds: float
    digest_seconds: float
    engine: str
    run_id: str
    rebuilt_after_stale: bool = False
    base_images: Mapping[str, str] = field(default_factory=dict)  # external ref → image id, in the digest

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "image_id": self.image_id,
            "input_digest": self.input_digest,
            "reused": self.reused,
            "build_seconds": round(self.build_seconds, 3),
            "base_images": dict(self.base_images),
        }


@dataclass(frozen=True)
class BuildEvent:
    """Progress of one build, for CLIs and logs."""

    name: str
    phase: str  # pull | digest | reuse | build | verify | done | failed
    message: str


EventSink = Callable[[BuildEvent], None]


class Builder:
    """Builds :class:`BuildSpec` values into verified :class:`BuiltImage` values for one run."""

    def __init__(
        self,
        engine: Engine,
        run_id: str,
        consumer: str,
        *,
        registry: str = DEFAULT_REGISTRY,
        no_cache: bool = False,
        rebuild_on_stale: bool = False,
        cache_dir: Path | None = None,
        on_event: EventSink | None = None,
        build_timeout: float | None = None,
        pull: bool = False,
        pull_timeout: float = DEFAULT_PULL_TIMEOUT,
    ) -> None:
        """``build_timeout`` bounds each engine build (None: ``$KTI_BUILD_TIMEOUT``, else 30 min);
        ``pull`` pulls every external image a build uses before digesting it (``kti build --pull``)."""
        self.engine = engine
        self.run_id = validate_run_id(run_id)
        self.consumer = validate_consumer(consumer)
        self.registry = registry
        self.no_cache = no_cache
        self.rebuild_on_stale = rebuild_on_stale
        self.cache_dir = cache_dir
        self.on_event = on_event
        if build_timeout is not None and build_timeout <= 0:
            raise ConfigError(f"build_timeout must be more than 0 s, not {build_timeout}",
                              hint="give the longest a single build may take, in seconds")
        self.build_timeout = build_timeout if build_timeout is not None else default_build_timeout()
        self.pull = pull
        self.pull_timeout = pull_timeout

    # -- public ----------------------------------------------------------------------------
    def ref_for(self, spec: BuildSpec) -> str:
        return image_ref(spec.name, self.consumer, self.run_id, self.registry)

    def plan(self, spec: BuildSpec) -> BuildPlan:
        """The stages and external images a build of ``spec`` uses, evaluated as this engine's builder does."""
        path = check_inputs(spec.context, spec.dockerfile)[1]
        try:
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            raise ContextError(f"cannot read the Dockerfile {path}: {exc.strerror}",
                               hint="make it readable by this user") from exc
        kind = self._builder_kind()
        build_platform = target_platform = None
        if kind == "buildkit" and uses_platform_args(text):
            build_platform = self.engine.platform()
            target_platform = spec.platform or build_platform
        return plan_build(text, spec.build_args, spec.target, builder=kind, build_platform=build_platform,
                          target_platform=target_platform, source=str(path))

    def resolve_bases(self, name: str, plan: BuildPlan, *, pull: bool, platform: str | None = None) -> dict[str, str]:
        """``ref → image id`` for every external image of ``plan``; missing ones (all, with ``pull``) pulled.

        A pull asks for the ``FROM --platform`` of that image, else ``platform`` (the build's own).
        Raises :class:`BaseImageError` for an image the engine does not have and cannot pull.
        """
        resolved: dict[str, str] = {}
        uses = self._distinct(plan)
        local = {} if pull else self._inspect_refs([u.ref for u in uses])
        for use in uses:
            info = local.get(use.ref)
            if info is None:
                self._pull(name, use, plan, forced=pull, platform=use.platform or platform)
                info = self.engine.inspect_image(use.ref)
            if info is None:
                raise BaseImageError(use.ref, f"{use.ref} ({use.where(plan.source)}) is still not in the "
                                     f"{self.engine.name} engine after a successful pull",
                                     hint="check the name, and whether the pull stored it under another platform")
            resolved[use.ref] = info.id
        return resolved

    def digest(self, spec: BuildSpec, bases: Mapping[str, str] | None = None) -> InputDigest:
        """The input digest of ``spec``; ``bases`` (``ref → id``) defaults to the engine's ids now.

        Without ``bases`` this only reads: a base the engine does not have counts as ``<missing>``
        (a build pulls it first, so its digest then differs from this one).
        """
        if bases is None:
            bases = self._current_bases(self.plan(spec))
        ctx = Path(spec.context)
        cache = DigestCache.for_context(ctx, self.cache_dir) if ctx.is_dir() else None
        return compute_digest(
            ctx,
            spec.dockerfile,
            spec.build_args,
            spec.target,
            spec.platform,
            buildkit=self.engine.info().buildkit,
            engine=self.engine.name,
            cache=cache,
            base_images=bases,
        )

    def build(self, spec: BuildSpec) -> BuiltImage:
        """Build (or reuse) one image and verify it; see the module docstring."""
        validate_service(spec.name)
        self._register_secrets(spec.build_args)
        started = time.monotonic()
        try:
            image = self._build(spec, started, no_cache=self.no_cache, attempt=1)
        except KtiError as exc:
            self._emit(spec.name, "failed", exc.message.splitlines()[0])
            raise
        self._emit(spec.name, "done", f"{image.ref} ({'reused' if image.reused else 'built'} in "
                                      f"{image.build_seconds:.1f}s)")
        return image

    def build_many(self, specs: Iterable[BuildSpec], max_workers: int = DEFAULT_PARALLEL) -> dict[str, BuiltImage]:
        """Build several specs with a bounded pool; every result is a returned value.

        Raises :class:`MultiBuildError` carrying the successes and every failure.
        """
        specs = list(specs)
        names = [s.name for s in specs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"duplicate image names: {', '.join(dupes)}", hint="give each image its own name")
        if max_workers < 1:
            raise ConfigError(f"max_workers must be at least 1, not {max_workers}", hint="use 1 for sequential builds")
        images: dict[str, BuiltImage] = {}
        errors: dict[str, BaseException] = {}
        with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="kti-build") as pool:
            futures = {s.name: pool.submit(self.build, s) for s in specs}
            for name, future in futures.items():
                try:
                    images[name] = future.result()
                except Exception as exc:  # collected, reported together below
                    errors[name] = exc
        if errors:
            raise MultiBuildError(images, errors)
        return images

    def verify(self, image: BuiltImage) -> None:
        """Check that ``image.ref`` still resolves to ``image.image_id`` with the expected digest label."""
        info = self.engine.inspect_image(image.ref)
        if info is None:
            raise BuildError(
                f"image {image.ref} is gone from the {self.engine.name} engine",
                hint="something removed it (a prune or another run's cleanup?); build again",
            )
        if info.id != image.image_id:
            raise StaleImageError(image.ref, image.input_digest, info.labels.get(LABEL_DIGEST, "<none>"),
                                  reason=f"the tag now points at {info.id[:19]}, not the built {image.image_id[:19]}")
        label = info.labels.get(LABEL_DIGEST)
        if label != image.input_digest:
            raise StaleImageError(image.ref, image.input_digest, label or "<no label>",
                                  reason="the image's input-digest label does not match")

    # -- internals -------------------------------------------------------------------------
    def _build(self, spec: BuildSpec, started: float, *, no_cache: bool, attempt: int) -> BuiltImage:
        ref = self.ref_for(spec)
        plan = self.plan(spec)
        bases = self.resolve_bases(spec.name, plan, pull=self.pull, platform=spec.platform)
        shown = ", ".join(f"{r} = {i[:19]}" for r, i in bases.items()) or "none"
        self._emit(spec.name, "digest", f"digesting {spec.context} (base images: {shown})")
        before = self.digest(spec, bases)
        digest_seconds = before.seconds
        if not no_cache:
            reused = self._try_reuse(spec, ref, before, started, digest_seconds)
            if reused is not None:
                return reused
        self._emit(spec.name, "build", f"building {ref} ({before.file_count} files, "
                                       f"{before.total_bytes / 1e6:.1f} MB){' --no-cache' if no_cache else ''}")
        found = self.engine.inspect_image(ref)
        previous = found.id if found is not None else None  # a warm run's own tag: never ours to remove
        image_id = self._run_build(spec, ref, before, no_cache, previous)
        self._emit(spec.name, "verify", f"verifying {ref}")
        info = self.engine.inspect_image(ref)
        if info is None or info.id != image_id:
            self._discard(ref, previous)
            raise StaleImageError(ref, before.digest, "<unknown>",
                                  reason=f"the tag does not resolve to the image the build produced ({image_id[:19]})")
        if info.labels.get(LABEL_DIGEST) != before.digest:
            self._discard(ref, previous)
            raise StaleImageError(ref, before.digest, info.labels.get(LABEL_DIGEST, "<no label>"),
                                  reason="the built image's input-digest label does not match")
        stale = self._check_descent(ref, plan, bases, layers=info.layers, digest=before.digest)
        after = self.digest(spec, self._current_bases(plan))
        digest_seconds += after.seconds
        if stale is None and after.digest != before.digest:
            changed = after.changed_since(before)
            moved = [c.removeprefix("<base>") for c in changed if c.startswith("<base>")]
            what = (f"the base image tag {', '.join(moved)} moved" if moved else "the sources changed") \
                + " while the build ran"
            hint = ("a base image tag moved while the build ran: build again to build on the new base "
                    "(rebuild_on_stale=True / --rebuild-on-stale does it once automatically)") if moved else ""
            stale = StaleImageError(ref, before.digest, after.digest, changed, reason=what, hint=hint)
        if stale is not None:
            self._discard(ref, previous)
            if self.rebuild_on_stale and attempt == 1:
                log.warning("%s: rebuilding once with --no-cache: %s", spec.name, stale.message.splitlines()[0])
                image = self._build(spec, started, no_cache=True, attempt=2)
                return replace(image, rebuilt_after_stale=True)
            raise stale
        return BuiltImage(
            name=spec.name, ref=ref, image_id=image_id, input_digest=before.digest, reused=False,
            build_seconds=time.monotonic() - started, digest_seconds=digest_seconds,
            engine=self.engine.name, run_id=self.run_id, base_images=bases,
        )

    def _check_descent(self, ref: str, plan: BuildPlan, bases: Mapping[str, str], *,
                       layers: tuple[str, ...], digest: str) -> StaleImageError | None:
        """The built image's layers must start with those of the base its final stage was resolved to."""
        root = plan.root_image()
        if root is None:
            return None  # FROM scratch (possibly through earlier stages): no base to descend from
        base = self.engine.inspect_image(bases[root.ref])
        base_layers = base.layers if base is not None else None
        if base_layers is not None and layers[:len(base_layers)] == base_layers:
            return None
        return StaleImageError(
            ref, digest, "<not built on the digested base>",
            reason=f"the image does not descend from {root.ref} = {bases[root.ref][:19]} "
                   f"({root.where(plan.source)}): the builder used another image for it",
            hint="the base tag moved during the build, or the builder resolved it from a registry instead of "
                 "the engine's store; build again (with --pull to refresh the base first)")

    def _current_bases(self, plan: BuildPlan) -> dict[str, str]:
        """Each base reference as the engine resolves it now (never pulls)."""
        found = self._inspect_refs([use.ref for use in self._distinct(plan)])
        return {r: info.id if info is not None else MISSING for r, info in found.items()}

    def _inspect_refs(self, refs: list[str]) -> dict[str, ImageInfo | None]:
        """``ref → ImageInfo`` (None: not in the engine); one engine call when every ref is there."""
        if len(refs) > 1:
            infos = self.engine.inspect_images(refs)
            if len(infos) == len(refs):  # all found: the engine answers in the order asked
                return dict(zip(refs, infos, strict=True))
        return {ref: self.engine.inspect_image(ref) for ref in refs}

    def _pull(self, name: str, use: ImageUse, plan: BuildPlan, *, forced: bool, platform: str | None) -> None:
        where = use.where(plan.source)
        why = "--pull" if forced else "not in the engine"
        self._emit(name, "pull", f"pulling {use.ref} ({where}; {why})")
        try:
            result = self.engine.pull(use.ref, platform, timeout=self.pull_timeout)
        except CommandTimeoutError as exc:
            raise BaseImageError(use.ref, f"pulling {use.ref} ({where}) did not finish within "
                                 f"{self.pull_timeout:g} s", hint="check the registry and the network, or load "
                                 "the image into the engine yourself") from exc
        if result.returncode == 0:
            return
        tail = tail_lines(result.stderr or result.stdout, 5)
        if forced and self.engine.inspect_image(use.ref) is not None:
            raise BaseImageError(use.ref, f"--pull: cannot pull {use.ref} ({where})", log_tail=tail,
                                 hint="the engine has a local copy: build without --pull to use it, or fix the "
                                      "registry access")
        raise BaseImageError(use.ref, f"base image {use.ref} ({where}) is not in the {self.engine.name} engine "
                             "and cannot be pulled", log_tail=tail,
                             hint="check the name (and the build args it comes from); build or load the image "
                                  "into the engine first (the lab's bases: hack/base-images), or fix the registry "
                                  "access")

    def _distinct(self, plan: BuildPlan) -> list[ImageUse]:
        """One use per reference (its first), in order of first use."""
        first: dict[str, ImageUse] = {}
        for use in plan.images:
            first.setdefault(use.ref, use)
        return list(first.values())

    def _builder_kind(self) -> BuilderKind:
        """Buildah (podman) and BuildKit build only the stages a target needs and set platform ARGs."""
        return "buildkit" if self.engine.name == "podman" or self.engine.info().buildkit else "classic"

    def _try_reuse(self, spec: BuildSpec, ref: str, digest: InputDigest, started: float,
                   digest_seconds: float) -> BuiltImage | None:
        current = self.engine.inspect_image(ref)
        if current is not None and current.labels.get(LABEL_DIGEST) == digest.digest \
                and current.labels.get(LABEL_SERVICE) == spec.name and current.labels.get(LABEL_MANAGED) == "true":
            self._emit(spec.name, "reuse", f"inputs unchanged: {ref} is already {current.id[:19]}")
            return BuiltImage(  # a warm run of the same run id: not even a retag
                name=spec.name, ref=ref, image_id=current.id, input_digest=digest.digest, reused=True,
                build_seconds=time.monotonic() - started, digest_seconds=digest_seconds,
                engine=self.engine.name, run_id=self.run_id, base_images=digest.base_images,
            )
        ids = self.engine.image_ids({LABEL_MANAGED: "true", LABEL_DIGEST: digest.digest, LABEL_SERVICE: spec.name})
        for image_id in ids:
            try:
                self.engine.tag(image_id, ref)
            except CommandError:
                continue  # removed meanwhile (another run's cleanup): try the next, or build
            info = self.engine.inspect_image(ref)
            if info is None or info.id != image_id or info.labels.get(LABEL_DIGEST) != digest.digest:
                self._discard(ref, current.id if current is not None else None)
                continue
            self._emit(spec.name, "reuse", f"inputs unchanged: retagged {image_id[:19]} as {ref}")
            return BuiltImage(
                name=spec.name, ref=ref, image_id=image_id, input_digest=digest.digest, reused=True,
                build_seconds=time.monotonic() - started, digest_seconds=digest_seconds,
                engine=self.engine.name, run_id=self.run_id, base_images=digest.base_images,
            )
        return None

    def _discard(self, ref: str, previous: str | None) -> None:
        """Undo what a failed or stale build did to ``ref``: point it back at the image it named before
        (a warm run's tag belongs to its environment), or remove it if the build created it."""
        if previous is None:
            self.engine.untag(ref)
            return
        now = self.engine.inspect_image(ref)
        if now is None or now.id != previous:
            try:
                self.engine.tag(previous, ref)
            except CommandError:
                self.engine.untag(ref)  # the previous image is gone: never leave the failed one named

    def _run_build(self, spec: BuildSpec, ref: str, digest: InputDigest, no_cache: bool,
                   previous: str | None = None) -> str:
        labels = {
            LABEL_MANAGED: "true",
            LABEL_DIGEST: digest.digest,
            LABEL_RUN: self.run_id,
            LABEL_SERVICE: spec.name,
            LABEL_CONSUMER: self.consumer,
            **self._provenance(Path(spec.context)),
        }
        fd, iidfile = tempfile.mkstemp(prefix="kti-iid-", suffix=".txt")
        os.close(fd)
        try:
            req = BuildRequest(
                context=str(Path(spec.context).resolve()),
                dockerfile=str(spec.dockerfile_path().resolve()),
                tags=(ref,),
                build_args=dict(spec.build_args),
                labels=labels,
                target=spec.target,
                platform=spec.platform,
                no_cache=no_cache,
                iidfile=iidfile,
            )
            try:
                result = self.engine.build(req, timeout=self.build_timeout)
            except CommandTimeoutError as exc:
                self._discard(ref, previous)  # the engine may have tagged it as the client was stopped
                raise BuildTimeoutError(
                    f"building {spec.name} ({ref}) did not finish within {self.build_timeout:g} s; it was stopped",
                    timeout=self.build_timeout,
                    hint=f"a step may hang (a RUN waiting on the network or for input?) or the engine is "
                         f"overloaded; re-run with -v to see the step; raise the limit with build_timeout=, "
                         f"--build-timeout or ${BUILD_TIMEOUT_ENV}",
                    log_tail=tail_lines(exc.stderr, 10),
                ) from exc
            if result.returncode != 0:
                self._discard(ref, previous)  # nothing of a failed build keeps our name
                raise BuildError(
                    f"building {spec.name} ({ref}) failed with exit {result.returncode}",
                    hint=f"fix the step shown above in {spec.dockerfile_path()}; re-run with -v for the full log",
                    log_tail=tail_lines(result.stdout + "\n" + result.stderr, 25),
                )
            image_id = Path(iidfile).read_text().strip()
        finally:
            Path(iidfile).unlink(missing_ok=True)
        if not image_id:
            raise BuildError(f"the {self.engine.name} build of {ref} reported no image id",
                             hint="check the engine with 'kti doctor'")
        return image_id

    def _provenance(self, context: Path) -> dict[str, str]:
        labels: dict[str, str] = {}
        head = self._git(context, "rev-parse", "HEAD")
        if head:
            labels[LABEL_REVISION] = head
        source = self._git(context, "remote", "get-url", "origin")
        labels[LABEL_SOURCE] = Redactor().text(source) if source else f"file://{context.resolve()}"
        return labels

    def _git(self, context: Path, *args: str) -> str:
        try:
            result = self.engine.runner.run(["git", "-C", str(context), *args], check=False, timeout=10)
        except CommandError:  # git not installed: provenance is best effort
            return ""
        return result.stdout.strip() if result.returncode == 0 else ""

    def _register_secrets(self, build_args: Mapping[str, str]) -> None:
        redactor = getattr(self.engine.runner, "redactor", None)
        if isinstance(redactor, Redactor):
            redactor.add(*(value for key, value in build_args.items() if is_secret_key(key)))

    def _emit(self, name: str, phase: str, message: str) -> None:
        log.info("%s: %s", name, message)
        if self.on_event is not None:
            self.on_event(BuildEvent(name, phase, message))


