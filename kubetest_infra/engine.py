"""Container engines (Docker, Podman) behind one interface, driven through their CLIs.

One engine is chosen per run (explicitly, ``$KTI_ENGINE``, or autodetected) and every later stage
(build, load into Kind, cleanup) uses that same :class:`Engine`, so images never end up in one
engine's store while Kind reads another's. Docker builds use BuildKit when the ``buildx`` plugin is
present and the classic builder otherwise (both understand ``--iidfile`` and ``--label``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

from kubetest_infra.errors import CommandError, EngineUnavailableError, UnknownEngineError
from kubetest_infra.runner import Command, CommandResult, Runner, SubprocessRunner, is_secret_key

EngineName = Literal["docker", "podman"]
ENGINES: tuple[EngineName, ...] = ("docker", "podman")
ENGINE_ENV = "KTI_ENGINE"
_QUERY_TIMEOUT = 120.0
_LIST_ATTEMPTS = 5


@dataclass(frozen=True)
class EngineInfo:
    name: EngineName
    version: str
    buildkit: bool
    root_dir: str
    storage_driver: str = ""  # overlay2 (docker), overlay (podman's containers/storage), vfs...
    rootless: bool | None = None  # None: the engine did not say


@dataclass(frozen=True)
class ImageInfo:
    """What the engine knows about one local image."""

    id: str
    repo_tags: tuple[str, ...]
    labels: Mapping[str, str] = field(repr=False)
    created: str
    size: int
    last_tag_time: str = ""
    layers: tuple[str, ...] = ()  # RootFS diff ids, base image's first: an image built FROM x starts with x's


@dataclass(frozen=True)
class BuildRequest:
    """Everything ``<engine> build`` is given: the argv is a pure function of it."""

    context: str
    dockerfile: str
    tags: tuple[str, ...]
    build_args: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    platform: str | None = None
    no_cache: bool = False
    iidfile: str | None = None


class Engine:
    """A container engine reached through its CLI and a :class:`Runner`."""

    def __init__(self, name: EngineName, runner: Runner | None = None, binary: str | None = None) -> None:
        self.name: EngineName = name
        self.runner: Runner = runner or SubprocessRunner()
        self.binary = binary or name
        self._info: EngineInfo | None = None
        self._platform: str | None = None

    def __repr__(self) -> str:
        return f"Engine({self.name!r})"

    # -- queries ---------------------------------------------------------------------------
    def run(self, *args: str, timeout: float | None = _QUERY_TIMEOUT, check: bool = True,
            env: Mapping[str, str] | None = None, input: bytes | None = None) -> CommandResult:
        try:
            return self.runner.run([self.binary, *args], timeout=timeout, check=check, env=env, input=input)
        except CommandError as exc:
            if exc.returncode == 127:
                raise EngineUnavailableError(
                    f"the {self.name} CLI ({self.binary}) is not installed or not on PATH",
                    hint=f"install {self.name}, or choose another engine with ${ENGINE_ENV}",
                ) from exc
            if _daemon_down(exc.stderr):
                raise _unreachable(self.name, exc.stderr) from exc
            raise

    def info(self) -> EngineInfo:
        """Engine version and builder mode; raises :class:`EngineUnavailableError` when down."""
        if self._info is not None:
            return self._info
        fmt = (
            "{{.ServerVersion}}|{{.DockerRootDir}}|{{.Driver}}|{{.SecurityOptions}}"
            if self.name == "docker"
            else "{{.Version.Version}}|{{.Store.GraphRoot}}|{{.Store.GraphDriverName}}|{{.Host.Security.Rootless}}"
        )
        result = self.run("info", "--format", fmt, check=False, timeout=30)
        if result.returncode != 0:
            raise _unreachable(self.name, result.stderr or result.stdout)
        version, root, driver, security = [*result.stdout.strip().split("|", 3), "", "", ""][:4]
        rootless: bool | None = None
        if security:
            rootless = "rootless" in security if self.name == "docker" else security.strip() == "true"
        buildkit = False
        if self.name == "docker" and os.environ.get("DOCKER_BUILDKIT") != "0":
            buildkit = self.run("buildx", "version", check=False, timeout=30).returncode == 0
        self._info = EngineInfo(self.name, version, buildkit, root, driver, rootless)
        return self._info

    def platform(self) -> str:
        """The engine's own ``os/arch`` (e.g. ``linux/amd64``): BuildKit's BUILDPLATFORM."""
        if self._platform is None:
            fmt = ("version", "--format", "{{.Server.Os}}/{{.Server.Arch}}") if self.name == "docker" \
                else ("info", "--format", "{{.Host.OS}}/{{.Host.Arch}}")
            self._platform = self.run(*fmt, timeout=30).stdout.strip()
        return self._platform

    def inspect_images(self, refs: Sequence[str]) -> list[ImageInfo]:
        """Inspect several images at once; missing ones are left out."""
        if not refs:
            return []
        result = self.run("image", "inspect", *refs, check=False)
        # With some refs missing, docker still prints the found ones and exits 1.
        if result.returncode != 0 and not result.stdout.strip().startswith("["):
            lowered = result.stderr.lower()
            if "no such" in lowered or "not known" in lowered:
                if len(refs) == 1:
                    return []
                return [i for r in refs for i in self.inspect_images([r])]
            raise CommandError(result.argv, result.returncode, result.stdout, result.stderr)
        return [_image_info(raw) for raw in json.loads(result.stdout or "[]")]

    def inspect_image(self, ref: str) -> ImageInfo | None:
        found = self.inspect_images([ref])
        return found[0] if found else None

    def image_ids(self, label_filters: Mapping[str, str | None]) -> list[str]:
        """Full ids of local images carrying all the given labels (value None: any value)."""
        argv = Command(["image", "ls", "-q", "--no-trunc"])
        for key, value in label_filters.items():
            argv.add_option("--filter", f"label={key}" if value is None else f"label={key}={value}")
        for attempt in range(_LIST_ATTEMPTS):
            result = self.run(*argv, check=False)
            if result.returncode == 0:
                return list(dict.fromkeys(image_id(i) for i in result.stdout.split()))
            # podman lists the store, then reads each image: one removed meanwhile (another run's
            # cleanup) fails the whole listing with "image not known"; a fresh listing no longer has it.
            if not (self.name == "podman" and "image not known" in result.stderr) or attempt == _LIST_ATTEMPTS - 1:
                break
        raise CommandError(result.argv, result.returncode, result.stdout, result.stderr)

    # -- changes ---------------------------------------------------------------------------
    def build_argv(self, req: BuildRequest) -> list[str]:
        """The argv (without the binary) for one build: a pure function, unit-tested."""
        argv = Command(["build", "-f", req.dockerfile])
        argv.add_repeated("-t", req.tags)
        # Secret-looking args are passed by name only; their values travel in the environment
        # (docker and podman read `--build-arg KEY` from it), so they never show up in `ps`.
        argv.add_repeated("--build-arg", [k if is_secret_key(k) else f"{k}={v}"
                                          for k, v in sorted(req.build_args.items())])
        argv.add_repeated("--label", [f"{k}={v}" for k, v in sorted(req.labels.items())])
        argv.add_option("--target", req.target)
        argv.add_option("--platform", req.platform)
        argv.add_flag("--no-cache", req.no_cache)
        argv.add_option("--iidfile", req.iidfile)
        if self.name == "docker" and not self.info().buildkit:
            argv.add_flag("--force-rm", True)  # classic builder: no intermediate containers left on failure
        if self.name == "podman":
            argv.add_flag("--layers", True)
        argv.append(req.context)
        return argv

    def build_env(self, req: BuildRequest | None = None) -> dict[str, str]:
        env = {k: v for k, v in (req.build_args if req else {}).items() if is_secret_key(k)}
        if self.name == "docker":
            env["DOCKER_BUILDKIT"] = "1" if self.info().buildkit else "0"
        return env

    def build(self, req: BuildRequest, timeout: float | None = None) -> CommandResult:
        return self.run(*self.build_argv(req), timeout=timeout, env=self.build_env(req), check=False)

    def pull(self, ref: str, platform: str | None = None, timeout: float = 600) -> CommandResult:
        """``<engine> pull [--platform P] ref``; the result's return code says whether it worked."""
        argv = Command(["pull"]).add_option("--platform", platform)
        return self.run(*argv, ref, timeout=timeout, check=False)

    def tag(self, source: str, target: str) -> None:
        self.run("tag", source, target)

    def untag(self, ref: str) -> bool:
        """Remove one tag (the image goes only with its last tag); never forced."""
        result = self.run("image", "rm", ref, check=False)
        return result.returncode == 0


def image_id(raw: str) -> str:
    """An image id as ``sha256:<hex>``: podman's ``inspect`` prints the bare hex, docker the prefixed form."""
    raw = raw.strip()
    return raw if ":" in raw or not raw else f"sha256:{raw}"


def _image_info(raw: Mapping[str, object]) -> ImageInfo:
    config = cast("Mapping[str, object]", raw.get("Config") or {})
    labels = cast("Mapping[str, str]", config.get("Labels") or raw.get("Labels") or {})
    return ImageInfo(
        id=image_id(str(raw.get("Id", ""))),
        repo_tags=tuple(cast("Sequence[str]", raw.get("RepoTags") or ())),
        labels=dict(labels),
        created=str(raw.get("Created", "")),
        size=int(cast("int", raw.get("Size") or 0)),
        last_tag_time=str(cast("Mapping[str, object]", raw.get("Metadata") or {}).get("LastTagTime", "")),
        layers=tuple(cast("Sequence[str]", cast("Mapping[str, object]", raw.get("RootFS") or {}).get("Layers") or ())),
    )


def _daemon_down(stderr: str) -> bool:
    text = stderr.lower()
    return any(s in text for s in (
        "cannot connect to the docker daemon",
        "is the docker daemon running",
        "error during connect",
        "cannot connect to podman",
        "connection refused",
    ))


def _unreachable(name: str, stderr: str) -> EngineUnavailableError:
    hint = (
        "start the engine (here: 'bash hack/lab/engine'; elsewhere: 'sudo systemctl start docker'), "
        "or point DOCKER_HOST at a running daemon"
        if name == "docker"
        else "start the podman service or check 'podman info'"
    )
    detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no answer"
    return EngineUnavailableError(f"the {name} engine is not reachable: {detail}", hint=hint)


def get_engine(name: str | None = None, runner: Runner | None = None) -> Engine:
    """The engine for this run: ``name``, else ``$KTI_ENGINE``, else the first that answers.

    Raises :class:`UnknownEngineError` for an unsupported name and
    :class:`EngineUnavailableError` when nothing answers.
    """
    wanted = (name or os.environ.get(ENGINE_ENV) or "auto").strip().lower()
    if wanted not in (*ENGINES, "auto"):
        raise UnknownEngineError(
            f"unknown container engine {wanted!r}",
            hint=f"use one of: {', '.join(ENGINES)} (or 'auto' to detect), e.g. {ENGINE_ENV}=docker",
        )
    if wanted != "auto":
        engine = Engine(cast("EngineName", wanted), runner)
        engine.info()
        return engine
    problems: list[str] = []
    for candidate in ENGINES:
        if runner is None and shutil.which(candidate) is None:
            problems.append(f"{candidate}: not installed")
            continue
        engine = Engine(candidate, runner)
        try:
            engine.info()
        except EngineUnavailableError as exc:
            problems.append(f"{candidate}: {exc.message}")
            continue
        return engine
    raise EngineUnavailableError(
        "no container engine answers (" + "; ".join(problems) + ")",
        hint="install and start Docker or Podman (here: 'bash hack/lab/engine'), or set "
        f"{ENGINE_ENV} and DOCKER_HOST",
    )
