"""``kti init [DIR]``: a first suite for a directory holding a Dockerfile.

Writes, next to the Dockerfile, and never over an existing file:

- ``suite.yaml`` — the image built from DIR, a one-node cluster ``kti-NAME`` publishing the service's
  NodePort on a host port, and one service with an HTTP ready check;
- ``manifests/NAME.yaml`` — a NodePort Service and a Deployment whose image is ``${image:NAME}``;
- ``conftest.py`` — points the pytest plugin at the suite;
- ``test_NAME.py`` — a first test: the service answers, and its pods run the image this run built.

What the Dockerfile says is used: the first ``EXPOSE`` port (else 8080) is the container port, and
an ``ARG`` a ``FROM`` line uses becomes a build argument read from the environment with the ARG's
default as fallback (``${env:PYTHON_IMAGE:-python:3.12-slim}`` for a Python base: the offline lab's
image where it exists). The result passes :func:`kubetest_infra.preflight.check_suite` (checked).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetest_infra import dockerfile
from kubetest_infra.errors import ConfigError
from kubetest_infra.preflight import check_suite
from kubetest_infra.suite import load_suite

DEFAULT_HOST_PORT = 38080
DEFAULT_NODE_PORT = 30080
DEFAULT_CONTAINER_PORT = 8080
# Lab variables (docs/labs.md) holding an offline image for a base repository.
LAB_BASES = {"python": "PYTHON_IMAGE", "busybox": "BUSYBOX_IMAGE"}
_EXPOSE = re.compile(r"^(\d+)(?:/tcp)?$", re.IGNORECASE)


@dataclass(frozen=True)
class Scaffold:
    """What ``kti init`` writes (path → text) and what the user needs to know about it."""

    directory: Path
    name: str
    files: Mapping[Path, str]
    host_port: int
    container_port: int
    notes: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.host_port}"


def suite_name(directory: Path) -> str:
    """A DNS label from the directory's name (``My_Service`` → ``my-service``)."""
    name = re.sub(r"[^a-z0-9-]+", "-", directory.resolve().name.lower()).strip("-")[:40].strip("-")
    return name or "app"


def _lab_variable(arg: str, default: str | None) -> str:
    repo = (default or "").rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]
    return LAB_BASES.get(repo, arg)


def _read_dockerfile(directory: Path) -> tuple[dockerfile.Dockerfile, list[str]]:
    path = directory / "Dockerfile"
    if not path.is_file():
        raise ConfigError(f"{path} not found: kti init scaffolds a suite for a directory holding a Dockerfile",
                          hint=f"write {path} first (the tutorial, docs/tutorial.md, has one), or pass the "
                               "service's directory: kti init DIR")
    try:
        parsed = dockerfile.parse(path.read_text(), str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", hint="make it a readable text file") from exc
    if not parsed.stages:
        raise ConfigError(f"{path} has no FROM instruction", hint="a Dockerfile starts with FROM IMAGE")
    exposed = [m.group(1) for i in parsed.instructions if i.keyword == "EXPOSE"
               for word in i.arguments.split() if (m := _EXPOSE.match(word))]
    return parsed, exposed


def plan(directory: Path, *, name: str | None = None, host_port: int = DEFAULT_HOST_PORT,
         node_port: int = DEFAULT_NODE_PORT, cluster: str | None = None, path: str = "/") -> Scaffold:
    """What ``init`` would write, without writing anything."""
    directory = directory.resolve()
    parsed, exposed = _read_dockerfile(directory)
    name = name or suite_name(directory)
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?", name):
        raise ConfigError(f"invalid suite name {name!r}",
                          hint="use 1-40 lowercase letters, digits and '-' (it names the suite, the image, the "
                               "service and, with kti-, the cluster)")
    for what, port, low, high in (("--host-port", host_port, 1024, 65535), ("--node-port", node_port, 30000, 32767)):
        if not low <= port <= high:
            raise ConfigError(f"{what} {port} is out of range", hint=f"use {low}-{high}")
    if not path.startswith("/") or any(c.isspace() for c in path):
        raise ConfigError(f"--path {path!r} is not an HTTP path", hint="write it as /PATH, without spaces")
    container_port = int(exposed[0]) if exposed else DEFAULT_CONTAINER_PORT
    base_args = sorted({m for s in parsed.stages for m in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", s.base)
                        if m in parsed.global_args})
    lines = []
    for arg in base_args:
        default = parsed.global_args[arg]
        fallback = f":-{default}" if default is not None else ""
        lines.append(f'\n      {arg}: "${{env:{_lab_variable(arg, default)}{fallback}}}"')
    build = f"\n    build_args:{''.join(lines)}" if lines else ""
    values = {"name": name, "cluster": cluster or f"kti-{name}", "node_port": node_port, "host_port": host_port,
              "container_port": container_port, "build": build, "path": path, "under": name.replace("-", "_")}
    files = {
        directory / "suite.yaml": _SUITE.format(**values),
        directory / "manifests" / f"{name}.yaml": _MANIFEST.format(**values),
        directory / "conftest.py": _CONFTEST,
        directory / f"test_{values['under']}.py": _TEST.format(**values),
    }
    notes = []
    if not exposed:
        notes.append(f"the Dockerfile has no EXPOSE: the container port is assumed to be {DEFAULT_CONTAINER_PORT} "
                     "(change containerPort and targetPort in the manifest)")
    literal = [s.base for s in parsed.stages if "$" not in s.base and s.base.lower() != "scratch"
               and s.base.lower() not in parsed.stage_names]
    if literal:
        notes.append(f"FROM {literal[0]} is pulled from a registry; on an offline machine write "
                     "ARG BASE_IMAGE=... and FROM ${BASE_IMAGE}, then run kti init again (docs/labs.md)")
    return Scaffold(directory, name, files, host_port, container_port, tuple(notes))


def init(directory: Path, **options: Any) -> Scaffold:
    """Write the files of :func:`plan`; refuse, writing nothing, when any of them exists."""
    scaffold = plan(directory, **options)
    existing = sorted(str(p) for p in scaffold.files if p.exists() or p.is_symlink())
    if existing:
        raise ConfigError(f"kti init would overwrite {', '.join(existing)}; nothing was written",
                          hint="move those files away, or scaffold another directory")
    created: list[Path] = []
    try:
        for path, text in scaffold.files.items():
            if not path.parent.exists():
                path.parent.mkdir(parents=True)
                created.append(path.parent)
            path.write_text(text)
            created.append(path)
        check_suite(load_suite(scaffold.directory / "suite.yaml"))  # valid as written, before any engine
    except BaseException:
        for made in reversed(created):  # only what this call wrote
            if made.is_dir():
                made.rmdir()
            else:
                made.unlink(missing_ok=True)
        raise
    return scaffold


_SUITE = """\
# Written by `kti init`; every field: docs/configuration.md. `kti up .` brings it up, `pytest` tests it,
# `kti down .` removes everything it created.
name: {name}                    # tags every image of a run: localhost/{name}:{name}-RUNID
cluster:
  name: {cluster}
  node_image: "${{env:KTI_NODE_IMAGE:-}}"   # empty: kind's default; the offline lab sets KTI_NODE_IMAGE
  ports:
    - {{container_port: {node_port}, host_port: {host_port}}}   # the Service's nodePort → http://127.0.0.1:{host_port}
images:
  {name}:
    context: .{build}
services:
  {name}:
    manifests: [./manifests/{name}.yaml]
    ready: {{http: {{port: {host_port}, path: {path}}}}}   # a host port of cluster.ports
    timeout: 2m
"""

_MANIFEST = """\
# ${{image:{name}}} becomes the exact reference this run built (localhost/{name}:{name}-RUNID).
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  type: NodePort
  selector: {{app: {name}}}
  ports: [{{port: {container_port}, targetPort: {container_port}, nodePort: {node_port}}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
        - name: {name}
          image: ${{image:{name}}}
          ports: [{{containerPort: {container_port}}}]
          readinessProbe: {{httpGet: {{path: {path}, port: {container_port}}}, periodSeconds: 1}}
"""

_CONFTEST = '''\
"""Tests in this directory run against the suite next to this file, unless --kti-suite says otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("kti_suite"):
        config.option.kti_suite = str(Path(__file__).resolve().parent)
'''

_TEST = '''\
"""First tests of {name}, written by `kti init`."""

from __future__ import annotations

import urllib.request
from typing import Any

from kubetest_infra.verify import verify_running_images


def test_{under}_answers(kti_service_url: Any) -> None:
    with urllib.request.urlopen(kti_service_url("{name}", "{path}"), timeout=10) as response:  # noqa: S310
        assert response.status == 200


def test_{under}_runs_the_image_this_run_built(kti_env: Any, kti_images: dict[str, str]) -> None:
    running = verify_running_images(kti_env, "app={name}")  # raises when a pod runs anything else
    assert {{r.spec_image for r in running}} == {{kti_images["{name}"]}}
'''
