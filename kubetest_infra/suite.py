"""Suite files: ``suites/<suite>/suite.yaml``, validated with errors that name the file and the field.

The fields are described once, in :mod:`kubetest_infra.schema` (the reference, docs/configuration.md,
and the JSON Schema are generated from it). Example (``suites/datastorage/suite.yaml``)::

    name: datastorage                # the consumer part of every image tag (and the default namespace)
    namespace: datastorage
    cluster:
      name: kti-datastorage
      workers: 0
      ports: [{container_port: 30081, host_port: 38081}]
    images:                          # built by this suite: a mapping keyed by image name
      datastorage:
        context: ../../examples/datastorage
        build_args: {BASE_IMAGE: "${env:PYTHON_IMAGE:-python:3.11-slim}"}
    external_images:                 # public references, or built locally where nothing can be pulled
      postgres:
        ref: docker.io/library/postgres:16
        env: KTI_POSTGRES_IMAGE      # an explicit override
        build: {context: ../../images/postgres, build_args: {BASE_IMAGE: "${env:POSTGRES_BASE_IMAGE}"}}
    services:
      postgres:   {manifests: [datastorage/postgres.yaml]}
      migrations: {manifests: [datastorage/migrations.yaml], depends_on: [postgres], timeout: 5m}
      datastorage:
        manifests: [datastorage/datastorage.yaml]
        depends_on: [migrations]
        ready: {http: {port: 38081, path: /readyz}}   # a host port of cluster.ports

A service's source is exactly one of ``manifests: [FILE|DIR]``, ``helm: {chart, release, values,
set, namespace, version}`` (a local chart, see :class:`HelmSource`) or ``kustomize: DIR`` (an
overlay); :mod:`.sources` turns each into objects.

Paths of build contexts, mount host paths, charts, values files and overlays are relative to the
suite file; manifest paths are relative to the nearest ``manifests/`` directory above the suite file
(or the suite directory when they start with ``./``). ``${env:NAME}`` and ``${env:NAME:-default}`` are expanded from the
environment. Every problem of the file is reported at once (:class:`SuiteError`, one
:class:`~kubetest_infra.errors.Problem` each, with a hint naming the field to change). What needs more
than the file itself (Dockerfiles, manifests' contents, the user running it) is checked by
:mod:`kubetest_infra.preflight`.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml

from kubetest_infra import labenv, schema, values, yamlio
from kubetest_infra.cluster import ClusterConfig, Mount, PortMapping, validate_cluster_name
from kubetest_infra.errors import ConfigError, InputError, Problem
from kubetest_infra.graph import Task, validate
from kubetest_infra.tags import parse_ref, require_pinned, validate_consumer, validate_service

_ENV = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RELEASE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
SOURCES = ("manifests", "helm", "kustomize")  # a service has exactly one
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
PROTOCOLS = ("TCP", "UDP", "SCTP")
TOP = "top level"
LOOPBACK_REACHABLE = ("127.0.0.1", "0.0.0.0")  # noqa: S104 - listen addresses a check on 127.0.0.1 reaches


class SuiteError(InputError):
    """A suite file that cannot be used: every problem found in it (``.problems``), each with a hint."""


@dataclass(frozen=True)
class ImageBuild:
    context: Path
    dockerfile: str | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None


@dataclass(frozen=True)
class ExternalImage:
    name: str
    ref: str
    env: str | None = None
    build: ImageBuild | None = None


@dataclass(frozen=True)
class HttpCheck:
    port: int  # host port (a NodePort mapped with cluster.ports)
    path: str = "/"
    status: int = 200


@dataclass(frozen=True)
class HelmSource:
    """``services.NAME.helm``: a local chart rendered offline with ``helm template`` (see :mod:`.sources`)."""

    chart: Path  # a chart directory or a packaged .tgz, relative to the suite file
    release: str
    values: tuple[Path, ...] = ()  # values files, relative to the suite file, in order
    set: Mapping[str, str | int | float | bool] = field(default_factory=dict)  # --set keys, applied last
    namespace: str | None = None  # must be the suite's namespace when given
    version: str | None = None  # the chart's version must be this one (Chart.yaml)


@dataclass(frozen=True)
class Service:
    name: str
    manifests: tuple[Path, ...]  # empty when the service's source is a chart or an overlay
    depends_on: tuple[str, ...] = ()
    http: HttpCheck | None = None
    tcp_port: int | None = None
    timeout: float | None = None  # seconds
    crash_restarts: int | None = None  # crashes allowed before failing (None: the run's default, 0)
    stable_seconds: float | None = None  # probe-less containers must run this long (None: default, 2 s)
    helm: HelmSource | None = None
    kustomize: Path | None = None  # an overlay directory (holding a kustomization), relative to the suite file

    @property
    def source(self) -> str:
        """The suite.yaml field of the service's source: ``manifests``, ``helm`` or ``kustomize``."""
        return "helm" if self.helm is not None else "kustomize" if self.kustomize is not None else "manifests"


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    namespace: str
    cluster: ClusterConfig
    images: Mapping[str, ImageBuild]
    external_images: Mapping[str, ExternalImage]
    services: Mapping[str, Service]

    @property
    def directory(self) -> Path:
        return self.path.parent


def expand_env(value: str, where: str, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env

    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if env.get(name):
            return env[name]
        if default is not None:
            return default
        raise SuiteError(f"{where}: environment variable {name} is not set",
                         hint=f"export {name}, or give a default: ${{env:{name}:-VALUE}}")

    return _ENV.sub(repl, value)


def parse_duration(value: object) -> float:
    """Seconds from ``30``, ``2.5``, ``"30"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"1m30s"``, ``"500ms"``.

    A bare number is seconds. Raises ``ValueError`` for anything else, zero or a negative value.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a duration")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        elif text and _DURATION_PART.sub("", text) == "":
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
        else:
            raise ValueError("not a number of seconds nor NUMBER+UNIT (ms, s, m, h)")
    else:
        raise ValueError(f"expected a number or a string, got {type(value).__name__}")
    if not seconds > 0:
        raise ValueError("it must be more than zero")
    return seconds


class _Bad(Exception):
    """Raised after a problem is recorded: abandons the current field, not the whole file."""


class _Reader:
    def __init__(self, path: Path, env: Mapping[str, str] | None) -> None:
        self.path = path
        self.env = env
        self.problems: list[Problem] = []

    def note(self, where: str, message: str, hint: str) -> None:
        """Record a problem and go on reading the same field."""
        self.problems.append(Problem(str(self.path), where, message, hint))

    def bad(self, where: str, message: str, hint: str) -> NoReturn:
        """Record a problem and abandon the current field (see :meth:`section`)."""
        self.note(where, message, hint)
        raise _Bad

    def section(self) -> AbstractContextManager[None]:
        """A field whose problem (already recorded) must not stop the reading of the next one."""
        return suppress(_Bad)

    def clean_since(self, count: int) -> bool:
        return len(self.problems) == count

    def mapping(self, value: Any, where: str, allowed: set[str],
                required: frozenset[str] | set[str] = frozenset(), *, soft: bool = False) -> dict[str, Any]:
        """``value`` as a mapping; unknown fields are reported and skipped, missing ones abandon the
        field (``soft``: reported, and the caller copes)."""
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.bad(where, f"expected a mapping with fields {', '.join(sorted(allowed))}, got {_kind(value)}",
                     f"write {where} as `{where}: {{FIELD: VALUE}}` (docs/configuration.md lists the fields)")
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            guesses = [f"{u} → {m[0]}" for u in unknown if (m := difflib.get_close_matches(u, allowed, 1, 0.7))]
            did_you_mean = f"; did you mean {', '.join(guesses)}?" if guesses else ""
            self.note(where, f"unknown field(s) {', '.join(unknown)}",
                      f"allowed fields of {where}: {', '.join(sorted(allowed))}{did_you_mean}")
        missing = sorted(required - set(value))
        if missing:
            prefix = "" if where == TOP else f"{where}."
            self.note(where, f"missing field(s) {', '.join(missing)}",
                      f"add {', '.join(prefix + m for m in missing)} (see docs/configuration.md)")
            if not soft:
                raise _Bad
        return {k: v for k, v in value.items() if k in allowed}

    def named(self, value: Any, where: str, example: str) -> dict[str, Any]:
        """A mapping keyed by names (images, services, build args); a list gets a hint to rewrite it."""
        if value is None:
            return {}
        if isinstance(value, list):
            names = [str(v["name"]) for v in value if isinstance(v, dict) and v.get("name")]
            shown = f" ({', '.join(names)} would be the keys)" if names else ""
            self.bad(where, f"expected a mapping keyed by name, got a list{shown}",
                     f"write {where} as a mapping, e.g. `{where}: {example}`, not a list of `- name:` entries")
        if not isinstance(value, dict):
            self.bad(where, f"expected a mapping keyed by name, got {_kind(value)}", f"write `{where}: {example}`")
        for key in value:
            if not isinstance(key, str):
                self.bad(f"{where}.{key}", f"a name must be a string, got {_kind(key)}",
                         f"quote the name under {where}: \"{key}\"")
        return value

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            self.bad(where, f"expected a string, got {_kind(value)}", f"quote the value of {where}")
        env = os.environ if self.env is None else self.env
        for m in _ENV.finditer(str(value)):
            name, default = m.group(1), m.group(2)
            if not env.get(name) and default is None:
                self.bad(where, f"environment variable {name} is not set",
                         f"export {name}, or give a default in {where}: ${{env:{name}:-VALUE}}")
        return expand_env(str(value), f"{self.path}: {where}", env)

    def optional_string(self, value: Any, where: str) -> str | None:
        """A string, or None for a missing or empty value (also one that expands to nothing)."""
        if value is None or value == "":
            return None
        return self.string(value, where) or None

    def integer(self, value: Any, where: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            self.bad(where, f"expected an integer, got {value!r}", f"write {where} as a plain number, without quotes")
        return value

    def port(self, value: Any, where: str) -> int:
        port = self.integer(value, where)
        if not 0 < port < 65536:
            self.bad(where, f"port {port} is out of range", f"{where} must be between 1 and 65535")
        return port

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            self.bad(where, f"expected true or false, got {value!r}",
                     f"write {where}: true or {where}: false, without quotes (a quoted \"false\" is a string)")
        return value

    def duration(self, value: Any, where: str) -> float:
        if isinstance(value, str):
            value = self.string(value, where)
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.bad(where, f"invalid duration {value!r}: {exc}",
                     f"write {where} as seconds (120) or with a unit: 30s, 5m, 1h, 1m30s")

    def strings(self, value: Any, where: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            shown = f"[{value}]" if isinstance(value, str) else "[a, b]"
            self.bad(where, f"expected a list, got {_kind(value)}", f"write {where} as a list: {shown}")
        out = [self.string(v, f"{where}[{i}]") for i, v in enumerate(value)]
        dupes = sorted({v for v in out if out.count(v) > 1})
        if dupes:
            self.bad(where, f"listed twice: {', '.join(dupes)}", f"list each entry of {where} once")
        return out

    def build(self, value: Any, where: str) -> ImageBuild:
        m = self.mapping(value, where, *schema.fields("images.*"))
        count = len(self.problems)
        context = dockerfile = target = None
        args: dict[str, str] = {}
        with self.section():
            context = (self.path.parent / self.string(m["context"], f"{where}.context")).resolve()
            if not context.is_dir():
                what = "does not exist" if not context.exists() else "is not a directory"
                self.bad(f"{where}.context", f"{context} {what}",
                         f"{where}.context is relative to the suite file ({self.path.parent})")
        with self.section():
            dockerfile = self.optional_string(m.get("dockerfile"), f"{where}.dockerfile")
        with self.section():
            target = self.optional_string(m.get("target"), f"{where}.target")
        with self.section():
            raw_args = self.named(m.get("build_args"), f"{where}.build_args", "{KEY: VALUE}")
            for key, val in raw_args.items():
                with self.section():
                    if not _ENV_NAME.match(key):
                        self.bad(f"{where}.build_args.{key}", f"invalid build argument name {key!r}",
                                 "a build argument name uses letters, digits and '_' (as in ARG NAME)")
                    args[key] = self.string(val, f"{where}.build_args.{key}")
        if not self.clean_since(count) or context is None:
            raise _Bad
        return ImageBuild(context=context, dockerfile=dockerfile, build_args=args, target=target)


def _kind(value: object) -> str:
    if value is None:
        return "nothing (null)"
    return {list: "a list", dict: "a mapping", str: f"the string {value!r}", bool: f"the boolean {value}"}.get(
        type(value), f"{type(value).__name__} {value!r}")


def load_suite(path: Path | str, env: Mapping[str, str] | None = None, manifests_root: Path | None = None) -> Suite:
    """Read and validate one suite file (a directory means its ``suite.yaml``).

    Raises :class:`SuiteError` listing every problem of the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "suite.yaml"
    if not path.is_file():
        raise SuiteError(f"suite file {path} not found", hint="suites live in suites/<name>/suite.yaml")
    try:
        raw = yamlio.load(path.read_text())
    except OSError as exc:
        raise SuiteError(f"cannot read suite file {path}: {exc.strerror}",
                         hint="make it readable by this user") from exc
    except yamlio.DuplicateKeyError as exc:
        raise SuiteError.of([Problem(str(path), exc.path,
                                     f"{exc.key!r} is written twice (lines {exc.first_line} and {exc.second_line})",
                                     f"YAML would silently keep only the second {exc.path}: remove or rename one "
                                     f"(line {exc.second_line})")]) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        raise SuiteError.of([Problem(str(path), where, f"malformed YAML: {exc}",
                                     "fix the YAML syntax at the line shown")]) from exc
    r = _Reader(path.resolve(), labenv.environ() if env is None else env)
    suite = _read(r, raw, path, manifests_root)
    if r.problems or suite is None:
        raise SuiteError.of(r.problems, "problems in the suite file")
    return suite


def _read(r: _Reader, raw: Any, path: Path, manifests_root: Path | None) -> Suite | None:
    top: dict[str, Any] = {}
    with r.section():
        if not isinstance(raw, dict):
            r.bad(TOP, f"expected a mapping (name, cluster, services, ...), got {_kind(raw)}",
                  "start from `kti init` or suites/datastorage/suite.yaml; docs/configuration.md lists the fields")
        top = r.mapping(raw, TOP, *schema.fields(""), soft=True)
    if not top:
        return None
    name = _name_and_namespace(r, top)
    cluster, ports = _cluster(r, top["cluster"]) if "cluster" in top else (None, None)
    images = _images(r, top.get("images"))
    externals = _externals(r, top.get("external_images"), images)
    root = manifests_root or _manifests_root(path)
    services: dict[str, Service] = {}
    declared: set[str] = set()
    with r.section():
        raw_services = r.named(top.get("services"), "services", "{NAME: {manifests: [FILE]}}")
        if not raw_services and "services" in top:
            r.bad("services", "no services", "declare at least one service under services with its manifests")
        declared = set(raw_services)
        for svc_name, spec in raw_services.items():
            with r.section():
                services[svc_name] = _service(r, svc_name, spec, root)
    for svc in services.values():
        for dep in svc.depends_on:
            with r.section():
                if dep not in declared:
                    r.bad(f"services.{svc.name}.depends_on", f"unknown service {dep!r}",
                          f"known services: {', '.join(sorted(declared))}")
    if name is not None:
        for svc in services.values():
            _check_helm(r, name[1], svc, images, externals)
    if ports is not None:  # only against a complete list of mappings
        for svc in services.values():
            _check_ready_ports(r, svc, ports)
    if r.problems or name is None or cluster is None:
        return None
    suite = Suite(name[0], path.resolve(), name[1], cluster, images, externals, services)
    with r.section():
        _check_cycles(r, suite)
    return suite


def _name_and_namespace(r: _Reader, top: dict[str, Any]) -> tuple[str, str] | None:
    """(name, namespace); a name that cannot be the default namespace is reported on ``name``."""
    name = namespace = None
    valid_name = False
    with r.section():
        if "name" in top:
            name = r.string(top["name"], "name")
            try:
                validate_consumer(name)
            except ConfigError as exc:
                r.bad("name", exc.message, f"{exc.hint} (name is the suite part of every image tag)")
            valid_name = True
    with r.section():
        if top.get("namespace") is not None:
            namespace = r.string(top["namespace"], "namespace")
            if not _NAME.match(namespace):
                r.bad("namespace", f"invalid namespace {namespace!r}",
                      "namespace must be a DNS label: 1-63 lowercase letters, digits and '-', "
                      "starting and ending with a letter or digit")
        elif valid_name and name is not None and not _NAME.match(name):
            suggestion = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")
            r.bad("name", f"{name!r} is also the default namespace, and a namespace must be a DNS label "
                          "(lowercase letters, digits and '-')",
                  f"rename it (e.g. name: {suggestion}), or add namespace: {suggestion} to keep the name")
    if name is None or (namespace is None and not _NAME.match(name)):
        return None
    return name, namespace or name


def _images(r: _Reader, value: Any) -> dict[str, ImageBuild]:
    images: dict[str, ImageBuild] = {}
    with r.section():
        for img_name, spec in r.named(value, "images", "{NAME: {context: DIR}}").items():
            with r.section():
                _check_image_name(r, f"images.{img_name}", img_name)
                images[img_name] = r.build(spec, f"images.{img_name}")
    return images


def _externals(r: _Reader, value: Any, images: Mapping[str, ImageBuild]) -> dict[str, ExternalImage]:
    externals: dict[str, ExternalImage] = {}
    with r.section():
        for img_name, spec in r.named(value, "external_images", "{NAME: {ref: REPOSITORY:TAG}}").items():
            where = f"external_images.{img_name}"
            with r.section():
                _check_image_name(r, where, img_name)
                if img_name in images:
                    r.bad(where, f"{img_name!r} is also under images",
                          f"an image is built or external, not both: remove images.{img_name} or {where}")
                m = r.mapping(spec, where, *schema.fields("external_images.*"))
                count = len(r.problems)
                ref = r.string(m["ref"], f"{where}.ref")
                with r.section():
                    try:
                        require_pinned(ref)
                    except ConfigError as exc:
                        r.bad(f"{where}.ref", exc.message,
                              f"pin {where}.ref to a version tag or a digest (e.g. postgres:16 or "
                              "postgres@sha256:...): a moving tag can change between runs")
                env_name = None
                with r.section():
                    env_name = r.optional_string(m.get("env"), f"{where}.env")
                    if env_name is not None and not _ENV_NAME.match(env_name):
                        r.bad(f"{where}.env", f"{env_name!r} is not an environment variable name",
                              f"{where}.env names the variable (e.g. KTI_POSTGRES_IMAGE), not its value")
                build = None
                with r.section():
                    build = r.build(m["build"], f"{where}.build") if m.get("build") is not None else None
                if r.clean_since(count):
                    externals[img_name] = ExternalImage(img_name, ref, env_name, build)
    return externals


def _manifests_root(path: Path) -> Path:
    for parent in path.resolve().parents:
        if (parent / "manifests").is_dir():
            return parent / "manifests"
    return path.resolve().parent


def _check_image_name(r: _Reader, where: str, name: str) -> None:
    try:
        validate_service(name)
    except ConfigError as exc:
        r.bad(where, exc.message, f"{exc.hint} (rename {where})")


def _cluster(r: _Reader, value: Any) -> tuple[ClusterConfig | None, list[PortMapping] | None]:
    """The cluster (None when any field is bad) and its port mappings (None when any is bad)."""
    count = len(r.problems)
    m: dict[str, Any] = {}
    with r.section():
        m = r.mapping(value, "cluster", *schema.fields("cluster"))
    if not m:
        return None, None
    name = node_image = None
    workers = 0
    with r.section():
        name = r.string(m["name"], "cluster.name")
        try:
            validate_cluster_name(name)
        except ConfigError as exc:
            r.bad("cluster.name", exc.message, f"cluster.name: {exc.hint}")
    with r.section():
        node_image = r.optional_string(m.get("node_image"), "cluster.node_image")
        if node_image is not None:
            try:
                parse_ref(node_image)
            except ConfigError as exc:
                r.bad("cluster.node_image", exc.message, f"{exc.hint} in cluster.node_image")
    with r.section():
        workers = r.integer(m.get("workers", 0), "cluster.workers")
        if workers < 0:
            r.bad("cluster.workers", f"workers must be >= 0, not {workers}",
                  "cluster.workers: 0 is a single-node cluster (the control plane runs the pods)")
    before_ports = len(r.problems)
    ports = _ports(r, m.get("ports"))
    complete = ports if r.clean_since(before_ports) else None
    mounts = _mounts(r, m.get("mounts"))
    patches: list[str] = []
    with r.section():
        patches = r.strings(m.get("kubeadm_patches"), "cluster.kubeadm_patches")
        for i, patch in enumerate(patches):
            with r.section():
                try:
                    parsed = yaml.safe_load(patch)
                except yaml.YAMLError as exc:
                    r.bad(f"cluster.kubeadm_patches[{i}]", f"not valid YAML: {exc}",
                          "each kubeadm patch is a YAML document in a string (use a `|` block)")
                if not isinstance(parsed, dict):
                    r.bad(f"cluster.kubeadm_patches[{i}]", f"expected a YAML mapping, got {_kind(parsed)}",
                          "each kubeadm patch is a YAML document with kind/apiVersion (use a `|` block)")
    if not r.clean_since(count) or name is None or complete is None:
        return None, complete
    try:
        return ClusterConfig(name=name, node_image=node_image, workers=workers, port_mappings=tuple(complete),
                             mounts=tuple(mounts), kubeadm_patches=tuple(patches)), complete
    except ConfigError as exc:  # checked above; kept so a new rule in ClusterConfig still names the section
        with r.section():
            r.bad("cluster", exc.message, exc.hint)
        return None, complete


def _list(r: _Reader, value: Any, where: str, example: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        r.bad(where, f"expected a list, got {_kind(value)}", f"write {where} as a list: [{example}]")
    return value


def _ports(r: _Reader, value: Any) -> list[PortMapping]:
    ports: list[PortMapping] = []
    seen: dict[tuple[str, int, str], int] = {}
    with r.section():
        for i, p in enumerate(_list(r, value, "cluster.ports", "{container_port: 30080, host_port: 38080}")):
            where = f"cluster.ports[{i}]"
            with r.section():
                pm = r.mapping(p, where, *schema.fields("cluster.ports[]"))
                count = len(r.problems)
                container_port = host_port = 0
                listen, protocol = "127.0.0.1", "TCP"
                with r.section():
                    container_port = r.port(pm["container_port"], f"{where}.container_port")
                with r.section():
                    host_port = r.port(pm["host_port"], f"{where}.host_port")
                with r.section():
                    listen = r.string(pm.get("listen_address", "127.0.0.1"), f"{where}.listen_address")
                    try:
                        ipaddress.ip_address(listen)
                    except ValueError:
                        r.bad(f"{where}.listen_address", f"{listen!r} is not an IP address",
                              f"{where}.listen_address is an address of this host: 127.0.0.1 (the default, "
                              "this host only) or 0.0.0.0 (every interface)")
                with r.section():
                    raw_protocol = r.string(pm.get("protocol", "TCP"), f"{where}.protocol")
                    protocol = raw_protocol.upper()
                    if protocol not in PROTOCOLS:
                        r.bad(f"{where}.protocol", f"unknown protocol {raw_protocol!r}",
                              f"{where}.protocol is one of {', '.join(PROTOCOLS)} (default TCP)")
                if not r.clean_since(count):
                    continue
                key = (listen, host_port, protocol)
                if key in seen:
                    r.bad(f"{where}.host_port", f"host port {host_port}/{protocol} on {listen} is already mapped by "
                                                f"cluster.ports[{seen[key]}]",
                          f"give every entry of cluster.ports its own host_port (change {where}.host_port)")
                seen[key] = i
                ports.append(PortMapping(container_port, host_port, listen, protocol))  # type: ignore[arg-type]
    return ports


def _mounts(r: _Reader, value: Any) -> list[Mount]:
    mounts: list[Mount] = []
    with r.section():
        for i, mt in enumerate(_list(r, value, "cluster.mounts", "{host_path: DIR, container_path: /DIR}")):
            where = f"cluster.mounts[{i}]"
            with r.section():
                mm = r.mapping(mt, where, *schema.fields("cluster.mounts[]"))
                count = len(r.problems)
                host = container = ""
                read_only = False
                with r.section():
                    host = str((r.path.parent / r.string(mm["host_path"], f"{where}.host_path")).resolve())
                with r.section():
                    container = r.string(mm["container_path"], f"{where}.container_path")
                    if not container.startswith("/"):
                        r.bad(f"{where}.container_path", f"{container!r} is not an absolute path",
                              f"{where}.container_path is a path inside the node: start it with /")
                with r.section():
                    read_only = r.boolean(mm.get("read_only", False), f"{where}.read_only")
                if r.clean_since(count):
                    mounts.append(Mount(host, container, read_only))
    return mounts


def _service(r: _Reader, name: str, value: Any, root: Path) -> Service:
    where = f"services.{name}"
    count = len(r.problems)
    with r.section():
        if not _NAME.match(name):
            suggestion = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-") or "web"
            r.bad(where, f"invalid service name {name!r}",
                  f"a service name is a DNS label: lowercase letters, digits and '-' (e.g. {suggestion})")
    m = r.mapping(value, where, *schema.fields("services.*"))
    given = [k for k in SOURCES if m.get(k) is not None]
    if not given:
        r.bad(where, "no source: the service needs manifests, helm or kustomize",
              f"add {where}.manifests: [FILE], {where}.helm: {{chart: DIR}} or {where}.kustomize: DIR "
              "(docs/suites.md)")
    if len(given) > 1:
        r.note(where, f"{' and '.join(given)} are both given: a service has exactly one source",
               f"keep one of {where}.{f', {where}.'.join(given)}; split the service in two (depends_on) for both")
    files: list[Path] = []
    helm: HelmSource | None = None
    overlay: Path | None = None
    with r.section():
        if m.get("manifests") is not None:
            listed = r.strings(m["manifests"], f"{where}.manifests")
            if not listed:
                r.bad(f"{where}.manifests", "no manifests",
                      f"list the YAML files of the service in {where}.manifests")
            for i, rel in enumerate(listed):
                with r.section():
                    files.append(_manifest_path(r, rel, f"{where}.manifests[{i}]", root))
    with r.section():
        if m.get("helm") is not None:
            helm = _helm(r, m["helm"], f"{where}.helm", name)
    with r.section():
        if m.get("kustomize") is not None:
            overlay = _overlay(r, m["kustomize"], f"{where}.kustomize")
    depends: list[str] = []
    with r.section():
        depends = r.strings(m.get("depends_on"), f"{where}.depends_on")
    http, tcp = None, None
    with r.section():
        http, tcp = _ready(r, m.get("ready"), f"{where}.ready")
    timeout = None
    with r.section():
        timeout = r.duration(m["timeout"], f"{where}.timeout") if m.get("timeout") is not None else None
    crash_restarts, stable = None, None
    with r.section():
        if m.get("crash_restarts") is not None:
            crash_restarts = r.integer(m["crash_restarts"], f"{where}.crash_restarts")
            if crash_restarts < 0:
                r.bad(f"{where}.crash_restarts", f"must be 0 or more, not {crash_restarts}",
                      f"{where}.crash_restarts is how many crashes are tolerated before failing (0: the first fails)")
    with r.section():
        if m.get("stable_seconds") is not None:
            stable = 0.0 if m["stable_seconds"] == 0 else r.duration(m["stable_seconds"], f"{where}.stable_seconds")
    if not r.clean_since(count):
        raise _Bad
    return Service(name, tuple(files), tuple(depends), http, tcp, timeout, crash_restarts, stable, helm, overlay)


def _helm(r: _Reader, value: Any, where: str, service: str) -> HelmSource:
    m = r.mapping(value, where, *schema.fields("services.*.helm"))
    count = len(r.problems)
    chart: Path | None = None
    release = service
    files: list[Path] = []
    sets: dict[str, str | int | float | bool] = {}
    namespace = version = None
    with r.section():
        chart = _suite_path(r, r.string(m["chart"], f"{where}.chart"), f"{where}.chart")
        if chart.is_dir() and not (chart / "Chart.yaml").is_file():
            r.bad(f"{where}.chart", f"{chart} is a directory without Chart.yaml: not a chart",
                  f"point {where}.chart at the chart's directory (the one holding Chart.yaml) or at a packaged .tgz")
        if chart.is_file() and not chart.name.endswith((".tgz", ".tar.gz")):
            r.bad(f"{where}.chart", f"{chart} is a file but not a packaged chart (.tgz)",
                  f"point {where}.chart at a chart directory or at the .tgz `helm package` wrote")
    with r.section():
        if m.get("release") is not None:
            release = r.string(m["release"], f"{where}.release")
            if not _RELEASE.match(release) or len(release) > 53:
                r.bad(f"{where}.release", f"invalid release name {release!r}",
                      "a Helm release name is at most 53 lowercase letters, digits, '-' and '.', starting and ending "
                      f"with a letter or digit (default: the service name, {service})")
    with r.section():
        for i, rel in enumerate(r.strings(m.get("values"), f"{where}.values")):
            with r.section():
                path = _suite_path(r, rel, f"{where}.values[{i}]")
                if not path.is_file():
                    r.bad(f"{where}.values[{i}]", f"{path} is not a file", f"{where}.values lists values files")
                files.append(path)
    with r.section():
        for key, val in r.named(m.get("set"), f"{where}.set", "{image.tag: \"${image.tag:NAME}\"}").items():
            at = f"{where}.set.{key}"
            with r.section():
                try:
                    values.parse_key(key)
                except values.ValuesError as exc:
                    r.bad(at, str(exc), f"write the keys of {where}.set as helm --set keys (image.tag, a\\.b, l[0])")
                if isinstance(val, (bool, int, float)):
                    sets[key] = val
                elif isinstance(val, str):
                    sets[key] = r.string(val, at)
                else:
                    r.bad(at, f"expected a string, number or boolean, got {_kind(val)}",
                          f"write lists and mappings in a values file ({where}.values), not in {where}.set")
    with r.section():
        namespace = r.optional_string(m.get("namespace"), f"{where}.namespace")
    with r.section():
        version = r.optional_string(m.get("version"), f"{where}.version")
    if not r.clean_since(count) or chart is None:
        raise _Bad
    return HelmSource(chart, release, tuple(files), sets, namespace, version)


KUSTOMIZATIONS = ("kustomization.yaml", "kustomization.yml", "Kustomization")


def _overlay(r: _Reader, value: Any, where: str) -> Path:
    path = _suite_path(r, r.string(value, where), where)
    if not path.is_dir():
        r.bad(where, f"{path} is not a directory", f"{where} is the directory holding a kustomization.yaml")
    if not any((path / k).is_file() for k in KUSTOMIZATIONS):
        r.bad(where, f"{path} holds no kustomization.yaml", f"point {where} at a Kustomize overlay or base directory")
    return path


def _suite_path(r: _Reader, rel: str, where: str) -> Path:
    """A path relative to the suite file, which must exist."""
    path = (r.path.parent / rel).resolve()
    if not path.exists():
        r.bad(where, f"{path} does not exist", f"{where} is relative to the suite file ({r.path.parent})")
    return path


def _check_helm(r: _Reader, suite_namespace: str, svc: Service, images: Mapping[str, ImageBuild],
                externals: Mapping[str, ExternalImage]) -> None:
    """What needs the whole file: placeholders of helm.set name declared images; the namespace is the suite's."""
    if svc.helm is None:
        return
    where = f"services.{svc.name}.helm"
    known = [*images, *externals]
    for key, val in svc.helm.set.items():
        for p in values.placeholders(val) if isinstance(val, str) else []:
            with r.section():
                why = values.check_placeholder(p, known)
                if why:
                    r.bad(f"{where}.set.{key}", why, f"declare {p.name} under images: or external_images:, or fix "
                          "the placeholder")
                if p.part == "digest" and (p.name in images or parse_ref(externals[p.name].ref).digest is None):
                    ref = "is built by the run (loaded by tag)" if p.name in images else \
                        f"is {externals[p.name].ref} (no digest)"
                    r.bad(f"{where}.set.{key}", f"{p.text}: image {p.name} {ref}, so it has no digest",
                          f"use ${{image.tag:{p.name}}} (and ${{image.repository:{p.name}}}) for it")
    with r.section():
        if svc.helm.namespace is not None and svc.helm.namespace != suite_namespace:
            r.bad(f"{where}.namespace", f"{svc.helm.namespace!r} is not the suite's namespace {suite_namespace!r}: the "
                  "run deploys into, waits for and removes its own namespace only",
                  f"remove {where}.namespace (the chart is rendered with --namespace {suite_namespace}), or make "
                  f"{svc.helm.namespace} the suite's namespace (namespace: at the top)")


def _manifest_path(r: _Reader, rel: str, where: str, root: Path) -> Path:
    base = r.path.parent if rel.startswith("./") else root
    p = (base / rel).resolve()
    relative_to = f"the suite directory {r.path.parent}" if rel.startswith("./") else \
        f"{root} (start it with ./ for the suite directory)"
    if not p.exists():
        r.bad(where, f"{p} does not exist", f"{where} is relative to {relative_to}")
    if p.is_dir() and not any(f.suffix in (".yaml", ".yml") and f.is_file() for f in p.rglob("*")):
        r.bad(where, f"directory {p} holds no .yaml or .yml file: the service would apply nothing",
              f"put the service's manifests in {p}, or point {where} at the right directory")
    return p


def _ready(r: _Reader, value: Any, where: str) -> tuple[HttpCheck | None, int | None]:
    ready = r.mapping(value, where, *schema.fields("services.*.ready"))
    if ready.get("http") is not None and ready.get("tcp") is not None:
        r.bad(where, "both http and tcp are given", f"{where} takes one check: keep http or tcp")
    http = tcp = None
    if ready.get("http") is not None:
        h = r.mapping(ready["http"], f"{where}.http", *schema.fields("services.*.ready.http"))
        count = len(r.problems)
        port = status = 0
        path = "/"
        with r.section():
            port = r.port(h["port"], f"{where}.http.port")
        with r.section():
            path = r.string(h.get("path", "/"), f"{where}.http.path")
            if "://" in path:
                r.bad(f"{where}.http.path", f"{path!r} is a URL, not a path",
                      f"{where}.http.path is the path only (e.g. /readyz); the host is 127.0.0.1 and the port "
                      f"{where}.http.port")
            if not path.startswith("/"):
                r.bad(f"{where}.http.path", f"{path!r} does not start with '/'",
                      f"write {where}.http.path: /{path}")
            if any(c.isspace() for c in path):
                r.bad(f"{where}.http.path", f"{path!r} contains whitespace",
                      f"percent-encode spaces in {where}.http.path (%20)")
        with r.section():
            status = r.integer(h.get("status", 200), f"{where}.http.status")
            if not 100 <= status <= 599:
                r.bad(f"{where}.http.status", f"{status} is not an HTTP status code",
                      f"{where}.http.status is the expected code, 100-599 (default 200)")
        if r.clean_since(count):
            http = HttpCheck(port, path, status)
    if ready.get("tcp") is not None:
        tcp = r.port(ready["tcp"], f"{where}.tcp")
    return http, tcp


def _check_ready_ports(r: _Reader, svc: Service, mappings: list[PortMapping]) -> None:
    """A readiness check connects to 127.0.0.1:PORT on this host: PORT must be a mapped host port."""
    if svc.http is not None:
        port, where = svc.http.port, f"services.{svc.name}.ready.http.port"
    elif svc.tcp_port is not None:
        port, where = svc.tcp_port, f"services.{svc.name}.ready.tcp"
    else:
        return
    host = [(i, p) for i, p in enumerate(mappings) if p.host_port == port]
    with r.section():
        if not host:
            node = [(i, p) for i, p in enumerate(mappings) if p.container_port == port]
            if node:
                i, p = node[0]
                r.bad(where, f"{port} is the NodePort (cluster.ports[{i}].container_port), reachable only inside "
                             "the cluster; the check connects from this host",
                      f"use the host port it is mapped to: {where}: {p.host_port} (cluster.ports[{i}].host_port)")
            known = ", ".join(str(p.host_port) for p in mappings) or "none"
            r.bad(where, f"{port} is not a host_port of cluster.ports (mapped host ports: {known}); the check "
                         f"connects to 127.0.0.1:{port}",
                  f"map it in cluster.ports ({{container_port: NODEPORT, host_port: {port}}}) or change {where}")
        i, p = host[0]
        if p.protocol != "TCP":
            r.bad(where, f"cluster.ports[{i}] maps {port} as {p.protocol}; HTTP and TCP checks need TCP",
                  f"set cluster.ports[{i}].protocol: TCP, or check another port")
        if p.listen_address not in LOOPBACK_REACHABLE:
            r.bad(where, f"cluster.ports[{i}] listens on {p.listen_address}; the check connects to 127.0.0.1",
                  f"set cluster.ports[{i}].listen_address to 127.0.0.1 (or 0.0.0.0)")


def _check_cycles(r: _Reader, suite: Suite) -> None:
    try:
        validate([Task(s.name, lambda _: None, s.depends_on) for s in suite.services.values()])
    except ConfigError as exc:
        r.bad("services", exc.message, f"{exc.hint} (in services.NAME.depends_on)")
