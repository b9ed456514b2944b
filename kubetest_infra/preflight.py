"""Preflight: everything knowable without an engine or a cluster, checked before anything starts.

:func:`check` takes a loaded :class:`~kubetest_infra.suite.Suite` (``load_suite`` has already refused a
bad suite.yaml, unset ``${env:…}`` included) and the references the run will produce
(:func:`check_suite` plans them itself), reads files only (and renders charts and overlays offline
with ``helm template`` / ``kubectl kustomize``), and reports every problem at once in one
:class:`PreflightError`, each with a hint naming the suite.yaml field to change:

- images (``images.NAME`` and ``external_images.NAME.build``): the Dockerfile exists and is readable,
  ``target`` names a stage (``FROM … AS name``), every ARG a ``FROM`` line uses resolves (a default or
  a build arg), every file the engine would receive is readable (``.dockerignore`` applied) and the
  context is not entirely ignored;
- sources (``services.NAME.manifests``, ``.helm``, ``.kustomize``, read through
  :func:`.sources.load`): manifests read and parse (no duplicate keys, no ``generateName``), a chart
  renders with the planned references (its version, values files and placeholders checked first), an
  overlay's bases exist and it builds, ``helm``/``kubectl`` are there; the objects number at least
  one, none is aimed at another namespace or declared by two services, every ``${image:…}`` names a
  declared image, and the drift guard passes with the planned references (a chart's refusal names
  the values key behind the reference);
- readiness: the NodePort behind a service's ready port is exposed by some Service (``nodePort``) or
  pod (``hostPort``) of the suite;
- the host: a host port below ``net.ipv4.ip_unprivileged_port_start`` needs root; mounted host paths
  exist (the engine would create a missing one as an empty root-owned directory).

The result, :class:`Plan`, says which images each service's deploy needs loaded (placeholders and
container-name matching, computed from the parsed objects) and carries warnings that stop nothing.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kubetest_infra import dockerfile, sources
from kubetest_infra.digest import _walk
from kubetest_infra.dockerignore import load_matcher
from kubetest_infra.errors import ConfigError, DockerfileError, InputError, Problem
from kubetest_infra.render import (
    CLUSTER_SCOPED,
    DriftError,
    Obj,
    Source,
    namespace_problems,
    placeholder_names,
    referenced_images,
    render,
)
from kubetest_infra.suite import ImageBuild, Service, Suite
from kubetest_infra.tags import DEFAULT_REGISTRY, RUN_ID_ENV, image_ref, require_pinned
from kubetest_infra.workloads import containers

UNPRIVILEGED_PORT_START = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
PREFLIGHT_RUN_ID = "preflight"  # stands in for a run id chosen later
_UNKNOWN_IMAGE = "localhost/kti-preflight-unknown-image:preflight"  # stands in for an undeclared ${image:…}


class PreflightError(InputError):
    """Problems found before anything started (``.problems``: file, suite.yaml field, message, hint)."""


@dataclass(frozen=True)
class Plan:
    """What preflight learnt: service → names of the images its deploy needs loaded, and warnings."""

    references: Mapping[str, frozenset[str]]
    warnings: tuple[str, ...] = field(default=())


def planned_refs(suite: Suite, run_id: str, registry: str = DEFAULT_REGISTRY) -> dict[str, str]:
    """Image name → the reference the run will use: DD-TEST-001 refs for built images, ``ref`` for
    external ones (their locally built fallback is in :func:`local_refs`)."""
    refs = {name: image_ref(name, suite.name, run_id, registry) for name in suite.images}
    refs.update({name: ext.ref for name, ext in suite.external_images.items()})
    return refs


def local_refs(suite: Suite, run_id: str, registry: str = DEFAULT_REGISTRY) -> dict[str, str]:
    """The references external images get when they are built locally (their ``build:`` fallback)."""
    return {name: image_ref(name, suite.name, run_id, registry) for name in suite.external_images}


def check_suite(suite: Suite, run_id: str | None = None, *, euid: int | None = None,
                unprivileged_port_start: int | None = None, buildkit: bool = True,
                env: Mapping[str, str] | None = None, tools: sources.Tools | None = None) -> Plan:
    """:func:`check` with the references a run of ``run_id`` would plan: what ``kti up`` and the pytest
    plugin call right after :func:`~kubetest_infra.suite.load_suite`, before the engine is asked
    anything or a lock or state file exists. Without a run id (it is chosen later, under the
    environment's lock) ``$KTI_RUN_ID`` or a stand-in is used: the checks do not depend on it, except
    that a manifest hard-coding the exact reference of a pinned run id is accepted only with that id.
    The keyword arguments are :func:`check`'s.
    """
    run = run_id or (os.environ if env is None else env).get(RUN_ID_ENV) or PREFLIGHT_RUN_ID
    return check(suite, planned_refs(suite, run), allowed_refs=local_refs(suite, run).values(), euid=euid,
                 unprivileged_port_start=unprivileged_port_start, buildkit=buildkit, env=env, tools=tools)


def check(suite: Suite, planned: Mapping[str, str], *, allowed_refs: Iterable[str] = (),
          euid: int | None = None, unprivileged_port_start: int | None = None, buildkit: bool = True,
          env: Mapping[str, str] | None = None, tools: sources.Tools | None = None) -> Plan:
    """Check everything knowable without an engine or a cluster; raise :class:`PreflightError` with
    every problem, or return the :class:`Plan`.

    ``planned``: image name → reference the run will produce (:func:`planned_refs`); ``allowed_refs``:
    further local references it may load (:func:`local_refs`). ``euid`` (the user the run acts as;
    default this process, whose reads are judged by ``os.access``), ``unprivileged_port_start`` and
    ``env`` default to this machine's. ``tools``: how charts and overlays are rendered
    (:class:`~kubetest_infra.sources.Tools`; default: ``helm``/``kubectl`` of this machine).
    """
    problems: list[Problem] = []
    warnings: list[str] = []
    allowed = tuple(allowed_refs)
    f = str(suite.path)
    for name, build in _builds(suite):
        problems.extend(_check_build(f, name, build, _Reading(buildkit, euid), warnings))
    problems.extend(_check_host(suite, euid, unprivileged_port_start))
    problems.extend(_check_overrides(suite, os.environ if env is None else env))
    loaded: dict[str, tuple[list[Obj], list[Source]]] = {}
    unread = False
    for svc in suite.services.values():
        read, found = _read_service(suite, svc, planned, tools)
        problems.extend(found)
        unread = unread or bool(found)
        loaded[svc.name] = (list(read.objects), list(read.sources)) if read else ([], [])
        if read is not None:
            warnings.extend(read.warnings)
            problems.extend(_check_objects(suite, svc, read, planned=planned, allowed_refs=allowed))
    references = {svc.name: frozenset(referenced_images(loaded[svc.name][0], planned))
                  for svc in suite.services.values()}
    problems.extend(_check_duplicates(suite, loaded))
    if not unread:  # only against every object of the suite
        problems.extend(_check_node_ports(suite, loaded))
    if problems:
        raise PreflightError.of(problems, "problems found before starting")
    return Plan(references, tuple(warnings))


# -- images ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Reading:
    """How the engine will read a context: its ignore-file rules, and as whom (None: this process)."""

    buildkit: bool
    euid: int | None

    def readable(self, path: str | Path) -> bool:
        if self.euid is None:
            return os.access(path, os.R_OK)  # this process: ACLs and capabilities included
        if self.euid == 0:
            return True
        st = os.stat(path)  # another user: its owner bits if it owns the file, else the others' bits
        return bool(st.st_mode & (stat.S_IRUSR if st.st_uid == self.euid else stat.S_IROTH))


def _builds(suite: Suite) -> list[tuple[str, ImageBuild]]:
    out = [(f"images.{name}", build) for name, build in suite.images.items()]
    out += [(f"external_images.{name}.build", ext.build) for name, ext in suite.external_images.items()
            if ext.build is not None]
    return out


def _check_build(f: str, where: str, build: ImageBuild, reading: _Reading, warnings: list[str]) -> list[Problem]:
    ctx = build.context
    df = Path(build.dockerfile or "Dockerfile")
    df = df if df.is_absolute() else ctx / df
    field_name = f"{where}.dockerfile" if build.dockerfile else f"{where}.context"
    if not df.is_file():
        near = sorted(p.name for p in ctx.iterdir() if "dockerfile" in p.name.lower()) if ctx.is_dir() else []
        seen = f"; Dockerfiles in the context: {', '.join(near)}" if near else ""
        if build.dockerfile:
            hint = f"fix {where}.dockerfile: it is relative to the context {ctx}{seen}"
        else:
            hint = f"add a Dockerfile to {ctx}, or set {where}.dockerfile to the file to build{seen}"
        what = "is a directory" if df.is_dir() else "not found"
        return [Problem(f, field_name, f"Dockerfile {df} {what}", hint)]
    try:
        if not reading.readable(df):
            raise PermissionError(13, "Permission denied")
        text = df.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return [Problem(f, field_name, f"cannot read Dockerfile {df}: {exc.strerror}",
                        f"make it readable by this user (chmod a+r {df}), or point {where}.dockerfile elsewhere")]
    problems: list[Problem] = []
    try:
        parsed = dockerfile.parse(text, str(df))
    except DockerfileError as exc:  # text the builders would refuse (bad directive, open here-document, ...)
        return [Problem(f, field_name, exc.message, f"{exc.hint} (the file is {where}'s Dockerfile)")]
    if not parsed.stages:
        problems.append(Problem(f, field_name, f"{df} has no FROM instruction",
                                f"{where} must point at a Dockerfile (FROM IMAGE …)"))
    if build.target and parsed.stages and not parsed.has_stage(build.target):
        stages = ", ".join(parsed.stage_names) or "none (no FROM … AS NAME)"
        problems.append(Problem(f, f"{where}.target", f"{df} has no stage {build.target!r} (stages: {stages})",
                                f"set {where}.target to one of the stages, or name one with FROM IMAGE AS "
                                f"{build.target}"))
    for stage, arg in parsed.unresolved_base_args(build.build_args):
        if arg in parsed.global_args:
            problems.append(Problem(f, f"{where}.build_args",
                                    f"{df}:{stage.line}: FROM {stage.base} uses ARG {arg}, which has no default "
                                    f"and is not given",
                                    f"add {arg} to {where}.build_args (e.g. {{{arg}: IMAGE:TAG}}), or give it a "
                                    f"default in the Dockerfile (ARG {arg}=…)"))
        else:
            problems.append(Problem(f, f"{where}.build_args",
                                    f"{df}:{stage.line}: FROM {stage.base} uses ${arg}, which is not declared by "
                                    "an ARG before the first FROM (so it expands to nothing)",
                                    f"declare ARG {arg} at the top of the Dockerfile and set it in "
                                    f"{where}.build_args"))
    unused = sorted(set(build.build_args) - parsed.declared_args)
    if unused:
        warnings.append(f"{where}.build_args: {', '.join(unused)} not declared by any ARG in {df} (unused)")
    problems.extend(_check_context_files(f, where, ctx, df, reading))
    return problems


def _check_context_files(f: str, where: str, ctx: Path, df: Path, reading: _Reading) -> list[Problem]:
    try:
        matcher, ignore_file = load_matcher(ctx, df, reading.buildkit)
        found, saw_any = _walk(ctx, matcher)
    except ConfigError as exc:
        return [Problem(f, f"{where}.context", exc.message, f"{exc.hint} (context of {where})")]
    if saw_any and not any(e.kind != "dir" for e in found):
        return [Problem(f, f"{where}.context", f"every file of the build context {ctx} is excluded by {ignore_file}",
                        f"the engine would receive an empty context: narrow {ignore_file} or fix {where}.context")]
    unreadable = [e.rel for e in found if e.kind == "file" and not reading.readable(e.abspath)]
    if not unreadable:
        return []
    shown = ", ".join(unreadable[:5]) + (f" (+{len(unreadable) - 5} more)" if len(unreadable) > 5 else "")
    return [Problem(f, f"{where}.context", f"{len(unreadable)} file(s) of the build context {ctx} cannot be read: "
                    f"{shown}", f"make them readable (chmod a+r) or exclude them in {ctx / '.dockerignore'}")]


# -- host --------------------------------------------------------------------------------------
def _port_start(override: int | None) -> int:
    if override is not None:
        return override
    try:
        return int(UNPRIVILEGED_PORT_START.read_text().strip())
    except (OSError, ValueError):
        return 1024


def _check_host(suite: Suite, euid: int | None, port_start: int | None) -> list[Problem]:
    f = str(suite.path)
    problems: list[Problem] = []
    uid = os.geteuid() if euid is None else euid
    start = _port_start(port_start)
    for i, p in enumerate(suite.cluster.port_mappings):
        if uid != 0 and p.host_port < start:
            problems.append(Problem(f, f"cluster.ports[{i}].host_port",
                                    f"host port {p.host_port} is privileged (below {start}) and this user "
                                    f"(uid {uid}) is not root, so it cannot be checked or bound",
                                    f"use a host_port of {start} or more in cluster.ports[{i}] (e.g. "
                                    f"{30000 + p.host_port}), and the same port in services.*.ready"))
    for i, m in enumerate(suite.cluster.mounts):
        if not Path(m.host_path).exists():
            problems.append(Problem(f, f"cluster.mounts[{i}].host_path", f"{m.host_path} does not exist",
                                    f"create it, or fix cluster.mounts[{i}].host_path (relative to the suite "
                                    "file); the engine would create it as an empty directory owned by root"))
    return problems


def _check_overrides(suite: Suite, env: Mapping[str, str]) -> list[Problem]:
    problems: list[Problem] = []
    for name, ext in suite.external_images.items():
        value = env.get(ext.env) if ext.env else None
        if value:
            try:
                require_pinned(value)  # a reference, and not `latest` nor untagged (as for .ref)
            except ConfigError as exc:
                problems.append(Problem(f"${ext.env}", f"external_images.{name}.env",
                                        f"{exc.message} (override of external_images.{name})",
                                        f"set {ext.env} to a pinned image reference (a version tag or a digest), "
                                        f"or unset it (external_images.{name}.env names it)"))
    return problems


# -- manifests ---------------------------------------------------------------------------------
def _read_service(suite: Suite, svc: Service, planned: Mapping[str, str], tools: sources.Tools | None
                  ) -> tuple[sources.Loaded | None, list[Problem]]:
    """A service's objects through the one seam (:func:`.sources.load`), its problems as values."""
    try:
        return sources.load(suite, svc, planned, tools=tools), []
    except InputError as exc:
        return None, list(exc.problems)
    except ConfigError as exc:  # a missing helm or kubectl
        return None, [Problem(str(suite.path), sources.field_of(svc), exc.message, exc.hint)]


def _check_objects(suite: Suite, svc: Service, read: sources.Loaded, *, planned: Mapping[str, str],
                   allowed_refs: Iterable[str]) -> list[Problem]:
    objs, srcs = list(read.objects), list(read.sources)
    f = str(suite.path)
    problems: list[Problem] = []
    for wrong in namespace_problems(objs, srcs, suite.namespace):
        problems.append(Problem(f, sources.field_of(svc, wrong.source), wrong.message, wrong.hint))
    unknown = sorted(placeholder_names(objs) - set(planned))
    for name in unknown:
        where = next((sources.field_of(svc, s) for o, s in zip(objs, srcs, strict=True)
                      if name in placeholder_names([o])), sources.field_of(svc))
        problems.append(Problem(f, where, f"${{image:{name}}} names no image of the suite "
                                f"(declared: {', '.join(sorted(planned)) or 'none'})",
                                f"declare {name} under images: or external_images: in the suite file, or fix the "
                                "placeholder"))
    stand_in = {name: _UNKNOWN_IMAGE for name in unknown}
    try:
        render(objs, srcs, {**planned, **stand_in}, allowed_refs=[*allowed_refs, _UNKNOWN_IMAGE])
    except DriftError as exc:
        explained = read.explain(exc, planned)
        for message in explained.problems:
            src = next((s for s in srcs if message.startswith(str(s))), None)
            problems.append(Problem(f, sources.field_of(svc, src), message, explained.hint))
    return problems


def _identity(obj: Obj, namespace: str) -> tuple[str, str, str, str]:
    meta = obj.get("metadata") or {}
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    ns = "" if obj.get("kind") in CLUSTER_SCOPED else str(meta.get("namespace") or namespace)
    return group, str(obj.get("kind")), ns, str(meta.get("name"))


def _check_duplicates(suite: Suite, loaded: Mapping[str, tuple[list[Obj], list[Source]]]) -> list[Problem]:
    """The same object declared twice (in one service or two): one apply would silently undo the other."""
    f = str(suite.path)
    first: dict[tuple[str, str, str, str], tuple[str, Source]] = {}
    problems: list[Problem] = []
    for svc_name, (objs, srcs) in loaded.items():
        for obj, src in zip(objs, srcs, strict=True):
            key = _identity(obj, suite.namespace)
            if key in first:
                other_svc, other_src = first[key]
                problems.append(Problem(f, sources.field_of(suite.services[svc_name]),
                                        f"{key[1]}/{key[3]} in {src} is also declared in {other_src} "
                                        f"(service {other_svc})",
                                        "declare each object once: remove one, or rename it; a file shared by two "
                                        "services belongs to one of them (use depends_on)"))
            else:
                first[key] = (svc_name, src)
    return problems


def _exposed_node_ports(objs: Iterable[Obj]) -> set[int]:
    ports: set[int] = set()
    for obj in objs:
        spec = obj.get("spec") or {}
        if obj.get("kind") == "Service" and isinstance(spec, dict):
            for p in spec.get("ports") or []:
                if isinstance(p, dict) and isinstance(p.get("nodePort"), int):
                    ports.add(p["nodePort"])
        for _, container in containers(obj):
            for p in container.get("ports") or []:
                if isinstance(p, dict) and isinstance(p.get("hostPort"), int):
                    ports.add(p["hostPort"])
    return ports


def _check_node_ports(suite: Suite, loaded: Mapping[str, tuple[list[Obj], list[Source]]]) -> list[Problem]:
    """A ready port is a host port mapped to a node port: something in the suite must listen there."""
    exposed = _exposed_node_ports(o for objs, _ in loaded.values() for o in objs)
    if not any(objs for objs, _ in loaded.values()):
        return []
    f = str(suite.path)
    problems: list[Problem] = []
    for svc in suite.services.values():
        if svc.http is not None:
            port, where = svc.http.port, f"services.{svc.name}.ready.http.port"
        elif svc.tcp_port is not None:
            port, where = svc.tcp_port, f"services.{svc.name}.ready.tcp"
        else:
            continue
        for i, p in enumerate(suite.cluster.port_mappings):
            if p.host_port == port and p.container_port not in exposed:
                problems.append(Problem(f, where, f"host port {port} is mapped to node port {p.container_port} "
                                        f"(cluster.ports[{i}]), but no Service of the suite has nodePort "
                                        f"{p.container_port} and no container has hostPort {p.container_port}",
                                        f"set nodePort: {p.container_port} on the Service of {svc.name} (type "
                                        f"NodePort), or make cluster.ports[{i}].container_port its nodePort"))
    return problems
