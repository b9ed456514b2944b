"""Suite files: ``suites/<suite>/suite.yaml``, validated with errors that name the field.

Example (see ``suites/datastorage/suite.yaml``)::

    name: datastorage                # the consumer part of every image tag
    namespace: datastorage
    cluster:
      name: kti-datastorage
      workers: 0
      ports: [{container_port: 30081, host_port: 38081}]
    images:                          # built by this suite
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
      migrations: {manifests: [datastorage/migrations.yaml], depends_on: [postgres]}
      datastorage:
        manifests: [datastorage/datastorage.yaml]
        depends_on: [migrations]
        ready: {http: {port: 30081, path: /readyz}}

Paths of build contexts are relative to the suite file; manifest paths are relative to the repository's
``manifests/`` directory (or the suite directory when they start with ``./``). ``${env:NAME}`` and
``${env:NAME:-default}`` are expanded from the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubetest_infra.cluster import ClusterConfig, Mount, PortMapping
from kubetest_infra.errors import ConfigError
from kubetest_infra.graph import Task, validate
from kubetest_infra.tags import validate_consumer, validate_service

_ENV = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class SuiteError(ConfigError):
    """A suite file that cannot be used."""


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
    port: int  # host port (NodePort mapped with extraPortMappings)
    path: str = "/"
    status: int = 200


@dataclass(frozen=True)
class Service:
    name: str
    manifests: tuple[Path, ...]
    depends_on: tuple[str, ...] = ()
    http: HttpCheck | None = None
    tcp_port: int | None = None
    timeout: float | None = None


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


class _Reader:
    def __init__(self, path: Path, env: Mapping[str, str] | None) -> None:
        self.path = path
        self.env = env

    def fail(self, where: str, message: str, hint: str) -> SuiteError:
        return SuiteError(f"{self.path}: {where}: {message}", hint=hint)

    def mapping(self, value: Any, where: str, allowed: set[str],
                required: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {type(value).__name__}", "see docs/suites.md")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise self.fail(where, f"unknown field(s) {', '.join(unknown)}",
                            f"allowed fields: {', '.join(sorted(allowed))}")
        missing = sorted(required - set(value))
        if missing:
            raise self.fail(where, f"missing field(s) {', '.join(missing)}", "see docs/suites.md")
        return value

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise self.fail(where, f"expected a string, got {type(value).__name__}", "quote the value")
        return expand_env(str(value), f"{self.path}: {where}", self.env)

    def integer(self, value: Any, where: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(where, f"expected an integer, got {value!r}", "write a plain number")
        return value

    def strings(self, value: Any, where: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(where, "expected a list", "use [a, b]")
        return [self.string(v, f"{where}[{i}]") for i, v in enumerate(value)]

    def build(self, value: Any, where: str) -> ImageBuild:
        m = self.mapping(value, where, {"context", "dockerfile", "build_args", "target"}, {"context"})
        context = (self.path.parent / self.string(m["context"], f"{where}.context")).resolve()
        if not context.is_dir():
            raise self.fail(f"{where}.context", f"{context} is not a directory", "paths are relative to the suite file")
        args = self.mapping(m.get("build_args"), f"{where}.build_args", set(m.get("build_args") or {}))
        return ImageBuild(
            context=context,
            dockerfile=self.string(m["dockerfile"], f"{where}.dockerfile") if m.get("dockerfile") else None,
            build_args={str(k): self.string(v, f"{where}.build_args.{k}") for k, v in args.items()},
            target=self.string(m["target"], f"{where}.target") if m.get("target") else None,
        )


def load_suite(path: Path | str, env: Mapping[str, str] | None = None, manifests_root: Path | None = None) -> Suite:
    """Read and validate one suite file (a directory means its ``suite.yaml``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "suite.yaml"
    if not path.is_file():
        raise SuiteError(f"suite file {path} not found", hint="suites live in suites/<name>/suite.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}: malformed YAML: {exc}", hint="fix the YAML syntax at the line shown") from exc
    r = _Reader(path.resolve(), env)
    top = r.mapping(raw, "suite", {"name", "namespace", "cluster", "images", "external_images", "services"},
                    {"name", "cluster", "services"})
    name = r.string(top["name"], "name")
    try:
        validate_consumer(name)
    except ConfigError as exc:
        raise r.fail("name", exc.message, exc.hint) from exc
    namespace = r.string(top.get("namespace") or name, "namespace")
    if not _NAME.match(namespace):
        raise r.fail("namespace", f"invalid namespace {namespace!r}", "use a DNS label: lowercase, digits, '-'")
    cluster = _cluster(r, top["cluster"])
    images = {}
    for img_name, spec in r.mapping(top.get("images"), "images", set(top.get("images") or {})).items():
        _check_image_name(r, f"images.{img_name}", img_name)
        images[img_name] = r.build(spec, f"images.{img_name}")
    externals = {}
    for img_name, spec in r.mapping(top.get("external_images"), "external_images",
                                    set(top.get("external_images") or {})).items():
        where = f"external_images.{img_name}"
        _check_image_name(r, where, img_name)
        if img_name in images:
            raise r.fail(where, f"{img_name!r} is also under images", "an image is built or external, not both")
        m = r.mapping(spec, where, {"ref", "env", "build"}, {"ref"})
        externals[img_name] = ExternalImage(
            name=img_name, ref=r.string(m["ref"], f"{where}.ref"),
            env=r.string(m["env"], f"{where}.env") if m.get("env") else None,
            build=r.build(m["build"], f"{where}.build") if m.get("build") else None)
    root = manifests_root or _manifests_root(path)
    services = {}
    raw_services = r.mapping(top["services"], "services", set(top["services"] or {}))
    if not raw_services:
        raise r.fail("services", "no services", "declare at least one service with its manifests")
    for svc_name, spec in raw_services.items():
        services[svc_name] = _service(r, svc_name, spec, root)
    for svc in services.values():
        for dep in svc.depends_on:
            if dep not in services:
                raise r.fail(f"services.{svc.name}.depends_on", f"unknown service {dep!r}",
                             f"known services: {', '.join(sorted(services))}")
    suite = Suite(name, path.resolve(), namespace, cluster, images, externals, services)
    _check_cycles(r, suite)
    return suite


def _manifests_root(path: Path) -> Path:
    for parent in path.resolve().parents:
        if (parent / "manifests").is_dir():
            return parent / "manifests"
    return path.resolve().parent


def _check_image_name(r: _Reader, where: str, name: str) -> None:
    try:
        validate_service(name)
    except ConfigError as exc:
        raise r.fail(where, exc.message, exc.hint) from exc


def _cluster(r: _Reader, value: Any) -> ClusterConfig:
    m = r.mapping(value, "cluster", {"name", "node_image", "workers", "ports", "mounts", "kubeadm_patches"},
                  {"name"})
    ports = []
    for i, p in enumerate(m.get("ports") or []):
        pm = r.mapping(p, f"cluster.ports[{i}]", {"container_port", "host_port", "listen_address", "protocol"},
                       {"container_port", "host_port"})
        ports.append(PortMapping(r.integer(pm["container_port"], f"cluster.ports[{i}].container_port"),
                                 r.integer(pm["host_port"], f"cluster.ports[{i}].host_port"),
                                 r.string(pm.get("listen_address", "127.0.0.1"), f"cluster.ports[{i}].listen_address"),
                                 pm.get("protocol", "TCP")))
    mounts = []
    for i, mt in enumerate(m.get("mounts") or []):
        mm = r.mapping(mt, f"cluster.mounts[{i}]", {"host_path", "container_path", "read_only"},
                       {"host_path", "container_path"})
        mounts.append(Mount(r.string(mm["host_path"], f"cluster.mounts[{i}].host_path"),
                            r.string(mm["container_path"], f"cluster.mounts[{i}].container_path"),
                            bool(mm.get("read_only", False))))
    node_image = r.string(m["node_image"], "cluster.node_image") if m.get("node_image") else None
    try:
        return ClusterConfig(
            name=r.string(m["name"], "cluster.name"), node_image=node_image or None,
            workers=r.integer(m.get("workers", 0), "cluster.workers"), port_mappings=tuple(ports),
            mounts=tuple(mounts), kubeadm_patches=tuple(r.strings(m.get("kubeadm_patches"), "cluster.kubeadm_patches")))
    except ConfigError as exc:
        raise r.fail("cluster", exc.message, exc.hint) from exc


def _service(r: _Reader, name: str, value: Any, root: Path) -> Service:
    where = f"services.{name}"
    if not _NAME.match(name):
        raise r.fail(where, f"invalid service name {name!r}", "use lowercase letters, digits and '-'")
    m = r.mapping(value, where, {"manifests", "depends_on", "ready", "timeout"}, {"manifests"})
    files = []
    for i, rel in enumerate(r.strings(m["manifests"], f"{where}.manifests")):
        p = (r.path.parent / rel) if rel.startswith("./") else (root / rel)
        if not p.exists():
            raise r.fail(f"{where}.manifests[{i}]", f"{p} does not exist",
                         f"manifest paths are relative to {root} (or to the suite file with ./)")
        files.append(p.resolve())
    if not files:
        raise r.fail(f"{where}.manifests", "no manifests", "list the YAML files that make up the service")
    ready = r.mapping(m.get("ready"), f"{where}.ready", {"http", "tcp"})
    http = None
    if ready.get("http") is not None:
        h = r.mapping(ready["http"], f"{where}.ready.http", {"port", "path", "status"}, {"port"})
        http = HttpCheck(r.integer(h["port"], f"{where}.ready.http.port"), r.string(h.get("path", "/"), "path"),
                         r.integer(h.get("status", 200), f"{where}.ready.http.status"))
    tcp = r.integer(ready["tcp"], f"{where}.ready.tcp") if ready.get("tcp") is not None else None
    timeout = float(m["timeout"]) if m.get("timeout") is not None else None
    return Service(name, tuple(files), tuple(r.strings(m.get("depends_on"), f"{where}.depends_on")), http, tcp,
                   timeout)


def _check_cycles(r: _Reader, suite: Suite) -> None:
    try:
        validate([Task(s.name, lambda _: None, s.depends_on) for s in suite.services.values()])
    except ConfigError as exc:
        raise r.fail("services", exc.message, exc.hint) from exc
