"""Where a service's objects come from: plain manifests, a Helm chart, or a Kustomize overlay.

:func:`load` is the one seam: whatever the source, it returns the objects and their
:class:`~kubetest_infra.render.Source` as :func:`~kubetest_infra.render.load_manifests` does for YAML
files, plus each object's Helm hook (None for ordinary objects). Preflight, the orchestrator,
``kti logs`` and the session's plan digest read services through it; render's drift guard, apply's
ordering and the waiter never learn which source it was.

=============== ================================================================================
``manifests``   the files, read strictly (:func:`~kubetest_infra.render.load_manifests`)
``helm``        ``helm template RELEASE CHART --namespace NS --include-crds --skip-tests -f -``,
                offline; the values (files, then ``set``, with the run's references substituted
                for ``${image…:NAME}``, see :mod:`.values`) go in on stdin; ``--kube-version`` and
                ``--api-versions`` are the cluster's when it is known (the run), else the version
                of the suite's node image (preflight). Hooks stay in the objects with their
                :class:`~kubetest_infra.hooks.Hook`; the orchestrator runs them in phases.
``kustomize``   ``kubectl kustomize`` of a throw-away kustomization (a private temp directory,
                removed) whose ``resources`` is the overlay and whose ``images:`` maps each image
                NAME of the suite to the run's reference (``newName``/``newTag`` or ``digest``):
                kustomize's own image transformer puts the run's reference wherever the overlay
                writes ``image: NAME`` (or ``NAME:any-tag``); ``${image:NAME}`` placeholders in
                the overlay's files are substituted by render as in any manifest.
=============== ================================================================================

``helm`` and ``kubectl`` are ``$KTI_HELM`` / ``$KTI_KUBECTL`` when set, else found on ``PATH``; a
missing one is a :class:`ToolNotFoundError` with an install hint. Every process goes through the
:class:`~kubetest_infra.runner.Runner` (argv lists, a timeout), whose output redaction is off for the
rendered stdout only: a manifest's ``postgresql://$(USER):$(PASSWORD)@host`` is data, and redacting it
(as a log line would be) deployed ``postgresql://***@host``. Every problem of a source is a
:class:`~kubetest_infra.errors.Problem` naming the suite.yaml field (:class:`SourceError`).

The drift guard's refusal of a chart's output (:class:`ChartDriftError`) names the values key that
produced the refused reference where it can be found: every leaf of the chart's ``values.yaml``
(and its subcharts'), of the values files and of ``set`` is searched for the reference, its
repository and its tag (and Chart.yaml's ``appVersion``, the usual default of a tag).
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from kubetest_infra import hooks as hk
from kubetest_infra import values, yamlio
from kubetest_infra.errors import CommandError, ConfigError, InputError, Problem, tail_lines
from kubetest_infra.render import (
    DriftError,
    ManifestError,
    Obj,
    Rendered,
    Source,
    load_documents,
    load_manifests,
    render,
)
from kubetest_infra.runner import Runner, SubprocessRunner
from kubetest_infra.suite import KUSTOMIZATIONS, HelmSource, Service, Suite
from kubetest_infra.tags import parse_ref

HELM_ENV = "KTI_HELM"
KUBECTL_ENV = "KTI_KUBECTL"
RENDER_TIMEOUT = 120.0
HELM_HINT = ("install helm 3 (https://helm.sh/docs/intro/install/, or `go install helm.sh/helm/v3/cmd/helm@v3.16.3`; "
             "on the offline lab hack/setup builds it and writes KTI_HELM into .kti/env) and put it on PATH, or set "
             f"${HELM_ENV} to its path")
KUBECTL_HINT = ("install kubectl (https://kubernetes.io/docs/tasks/tools/; on the offline lab hack/setup builds it and "
                f"writes KTI_KUBECTL into .kti/env) and put it on PATH, or set ${KUBECTL_ENV} to its path")
_SOURCE_LINE = re.compile(r"^# Source: (.+)$", re.MULTILINE)
_SEPARATOR = re.compile(r"^---[ \t]*$", re.MULTILINE)
_KUBE_VERSION = re.compile(r":v?(\d+\.\d+\.\d+)")
_REFUSED = re.compile(r": (\S+) is a local reference this run did not build or load")


class ToolNotFoundError(ConfigError):
    """``helm`` or ``kubectl`` is needed to render a service and cannot be found."""


class SourceError(InputError):
    """A service's chart, values or overlay cannot be read or rendered (``.problems``, each naming the field)."""


class ChartDriftError(DriftError):
    """The drift guard refused a chart's output: the problems name the values keys behind each reference."""

    def __init__(self, problems: Sequence[str], hint: str) -> None:
        self.problems = tuple(problems)
        ConfigError.__init__(self, f"{len(self.problems)} image reference problem(s) in the rendered chart; nothing "
                             "was applied:\n" + "\n".join(f"  - {p}" for p in self.problems), hint)


# -- tools ---------------------------------------------------------------------------------------------
def find_tool(name: str, variable: str, hint: str, env: Mapping[str, str] | None = None) -> str:
    """``$variable`` when set (it must be an executable file), else ``name`` on ``PATH``."""
    env = os.environ if env is None else env
    explicit = env.get(variable)
    if explicit:
        if Path(explicit).is_file() and os.access(explicit, os.X_OK):
            return explicit
        raise ToolNotFoundError(f"${variable}={explicit} is not an executable file", hint=hint)
    found = shutil.which(name, path=env.get("PATH"))
    if found is None:
        raise ToolNotFoundError(f"{name} not found on PATH (and ${variable} is not set)", hint=hint)
    return found


@dataclass(frozen=True)
class Tools:
    """The processes rendering needs: a runner and where ``helm`` and ``kubectl`` are."""

    runner: Runner = field(default_factory=SubprocessRunner)
    env: Mapping[str, str] | None = None  # None: os.environ
    helm_path: str | None = None  # None: $KTI_HELM, else PATH
    kubectl_path: str | None = None  # None: $KTI_KUBECTL, else PATH
    timeout: float = RENDER_TIMEOUT

    def helm(self) -> str:
        return self.helm_path or find_tool("helm", HELM_ENV, HELM_HINT, self.env)

    def kubectl(self) -> str:
        return self.kubectl_path or find_tool("kubectl", KUBECTL_ENV, KUBECTL_HINT, self.env)


@dataclass(frozen=True)
class Capabilities:
    """What ``helm template`` is told about the cluster (``.Capabilities``)."""

    kube_version: str | None = None  # v1.33.1; None: helm's own default
    api_versions: tuple[str, ...] = ()  # group/version and group/version/Kind, as helm's discovery lists them

    @classmethod
    def of_node_image(cls, image: str | None) -> Capabilities:
        """The Kubernetes version a node image's tag names (``kindest/node:v1.31.0``, the lab's
        ``kti-lab/node:v1.33.1-…``), when the cluster cannot be asked."""
        m = _KUBE_VERSION.search(image.rsplit("/", 1)[-1]) if image else None
        return cls(f"v{m.group(1)}") if m else cls()


def cluster_capabilities(api_client: Any, dynamic: Any) -> Capabilities:
    """The cluster's version and every group/version and group/version/Kind it serves (as helm's
    ``GetVersionSet`` lists them), from the version endpoint and the dynamic client's discovery."""
    version = client.VersionApi(api_client).get_code(_request_timeout=30).git_version
    found: set[str] = set()
    for res in dynamic.resources.search():
        group_version = getattr(res, "group_version", None)
        kind = getattr(res, "kind", None)
        if group_version:
            found.add(str(group_version))
            if kind and not str(kind).endswith("List"):
                found.add(f"{group_version}/{kind}")
    return Capabilities(str(version).split("+", 1)[0], tuple(sorted(found)))


# -- what load returns ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Loaded:
    """A service's objects, whatever their source, with Helm's hooks and what explains a chart's drift."""

    field: str  # services.NAME.manifests | services.NAME.helm | services.NAME.kustomize
    objects: tuple[Obj, ...]
    sources: tuple[Source, ...]
    hooks: tuple[hk.Hook | None, ...]  # parallel to objects; None: an ordinary object
    release: str | None = None  # a chart's release name (its hooks' record)
    layers: tuple[values.Layer, ...] = ()  # a chart's values, lowest precedence first
    app_version: str | None = None
    warnings: tuple[str, ...] = ()
    fed: frozenset[str] = frozenset()  # values keys the suite sets from a ${image…} placeholder

    def render(self, images: Mapping[str, str], **kwargs: Any) -> Rendered:
        """:func:`~kubetest_infra.render.render`, a chart's drift explained (:meth:`explain`)."""
        try:
            return render(list(self.objects), list(self.sources), images, **kwargs)
        except DriftError as exc:
            raise self.explain(exc, images) from None

    def explain(self, exc: DriftError, images: Mapping[str, str]) -> DriftError:
        """For a chart: the drift problems with the values key behind each refused reference."""
        if not self.layers:
            return exc
        out: list[str] = []
        suggestions: dict[str, str] = {}
        for message in exc.problems:
            m = _REFUSED.search(message)
            found = self.origins(m.group(1)) if m else []
            if m and found:
                suggestions.update(_suggest(m.group(1), found, images, self.fed))
                out.append(f"{message}; from the chart's values: " + ", ".join(str(o) for o in found))
            else:
                out.append(message)
        example = ", ".join(f"{k}: \"{v}\"" for k, v in sorted(suggestions.items())) or \
            "image.repository: \"${image.repository:NAME}\", image.tag: \"${image.tag:NAME}\""
        return ChartDriftError(out, f"feed the chart the run's references in {self.field}.set (or a values file), "
                               f"e.g. set: {{{example}}}; a chart's default tag never names what the run built")

    def origins(self, ref: str) -> list[values.Origin]:
        """The values keys (and Chart.yaml's appVersion) whose value is ``ref``, its repository or its tag."""
        try:
            parsed = parse_ref(ref)
        except ConfigError:
            return []
        wanted = [w for w in (ref, parsed.repository, parsed.path, parsed.tag, parsed.digest) if w]
        found = values.origins(self.layers, wanted)
        if parsed.tag and parsed.tag == self.app_version and not any(o.value == parsed.tag for o in found):
            found.append(values.Origin("appVersion", parsed.tag, "Chart.yaml, the usual default of an empty tag"))
        return found


def _suggest(ref: str, found: Sequence[values.Origin], images: Mapping[str, str], fed: frozenset[str]
             ) -> dict[str, str]:
    """values key → the placeholder that would give it the run's reference (keys already fed: none)."""
    parsed = parse_ref(ref)
    name = next((n for n, r in images.items() if parse_ref(r).repository == parsed.repository), None) or \
        next((n for n, r in images.items() if parse_ref(r).path.rsplit("/", 1)[-1] == parsed.path.rsplit("/", 1)[-1]),
             "NAME")
    out = {}
    for o in found:
        if o.key == "appVersion" or o.key in fed:
            continue
        if o.value == ref:
            out[o.key] = f"${{image:{name}}}"
        elif o.value in (parsed.repository, parsed.path):
            out[o.key] = f"${{image.repository:{name}}}"
        elif o.value == parsed.tag:
            out[o.key] = f"${{image.tag:{name}}}"
    return out


# -- the seam ----------------------------------------------------------------------------------------------
def load(suite: Suite, service: Service, images: Mapping[str, str], *, tools: Tools | None = None,
         capabilities: Capabilities | None = None) -> Loaded:
    """A service's objects: its manifests, its chart rendered, or its overlay built.

    ``images``: image name → the reference the run uses (planned ones in preflight, the loaded ones when
    deploying). ``capabilities``: the cluster's (None: the version of the suite's node image).
    Raises :class:`SourceError` (every problem, each naming the suite.yaml field) or
    :class:`ToolNotFoundError`.
    """
    tools = tools or Tools()
    if service.helm is not None:
        caps = capabilities or Capabilities.of_node_image(suite.cluster.node_image)
        return _load_chart(suite, service, images, tools, caps)
    if service.kustomize is not None:
        return _load_overlay(suite, service, service.kustomize, images, tools)
    return _load_manifests(suite, service)


def field_of(service: Service, src: Source | None = None) -> str:
    """The suite.yaml field an object of the service comes from (``services.web.manifests[1]``)."""
    where = f"services.{service.name}.{service.source}"
    if service.source != "manifests" or src is None:
        return where
    path = Path(src.file)
    for i, listed in enumerate(service.manifests):
        if path == listed or listed in path.parents:
            return f"{where}[{i}]"
    return where


def input_files(service: Service) -> list[Path]:
    """Every file that decides what a service's source renders (for the environment's plan digest)."""
    if service.helm is not None:
        chart = service.helm.chart
        files = sorted(p for p in chart.rglob("*") if p.is_file()) if chart.is_dir() else [chart]
        return files + list(service.helm.values)
    if service.kustomize is not None:
        return sorted(_overlay_files(service.kustomize))
    return [f for path in service.manifests
            for f in (sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])]


def _empty(f: str, where: str, what: str) -> Problem:
    return Problem(f, where, f"{what} holds no object: the service would be 'ready' with nothing applied",
                   f"give the service its objects, or fix {where}")


# -- manifests -------------------------------------------------------------------------------------------
def _load_manifests(suite: Suite, service: Service) -> Loaded:
    f = str(suite.path)
    where = f"services.{service.name}.manifests"
    objs: list[Obj] = []
    srcs: list[Source] = []
    problems: list[Problem] = []
    for i, path in enumerate(service.manifests):
        try:
            o, s = load_manifests([path])
        except ManifestError as exc:
            problems.append(Problem(f, f"{where}[{i}]", exc.message, exc.hint))
            continue
        objs.extend(o)
        srcs.extend(s)
    if not objs and not problems:
        shown = ", ".join(str(p) for p in service.manifests)
        problems.append(Problem(f, where, f"the manifests of service {service.name} hold no object ({shown}): it "
                                "would be 'ready' with nothing applied",
                                f"put the service's objects in those files, or fix {where}"))
    if problems:
        raise SourceError.of(problems, "problems in the service's manifests")
    return Loaded(where, tuple(objs), tuple(srcs), (None,) * len(objs))


# -- helm ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chart:
    """What kti reads of a chart itself: its name, version, appVersion and values (with subcharts')."""

    name: str
    version: str
    app_version: str | None
    layers: tuple[values.Layer, ...]


class _ChartFiles:
    """A chart directory or a packaged .tgz, read as relative path → text (only what kti needs)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.texts: dict[str, str] = {}
        if path.is_dir():
            for rel in ("Chart.yaml", "values.yaml"):
                if (path / rel).is_file():
                    self.texts[rel] = (path / rel).read_text()
            for sub in sorted((path / "charts").glob("*/values.yaml")) if (path / "charts").is_dir() else []:
                self.texts[str(sub.relative_to(path))] = sub.read_text()
            return
        with tarfile.open(path, "r:*") as tar:
            for member in tar.getmembers():
                parts = member.name.split("/", 1)
                if len(parts) != 2 or not member.isfile():
                    continue
                rel = parts[1]
                if rel in ("Chart.yaml", "values.yaml") or re.fullmatch(r"charts/[^/]+/values\.yaml", rel):
                    handle = tar.extractfile(member)
                    if handle is not None:
                        self.texts[rel] = handle.read().decode("utf-8", errors="replace")

    def label(self, rel: str) -> str:
        return str(self.path / rel) if self.path.is_dir() else f"{self.path}:{rel}"


def read_chart(path: Path) -> Chart:
    """Chart.yaml and the values files of a chart (directory or .tgz); :class:`ManifestError` if unusable."""
    try:
        files = _ChartFiles(path)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise ManifestError(f"cannot read chart {path}: {exc}",
                            hint="point it at a chart directory or a .tgz written by `helm package`") from exc
    if "Chart.yaml" not in files.texts:
        raise ManifestError(f"{path} holds no Chart.yaml", hint="a chart has Chart.yaml at its top")
    meta = _yaml_mapping(files.texts["Chart.yaml"], files.label("Chart.yaml"))
    name, version = meta.get("name"), meta.get("version")
    if not isinstance(name, str) or version is None:
        raise ManifestError(f"{files.label('Chart.yaml')} lacks name or version",
                            hint="Chart.yaml needs apiVersion, name and version")
    layers = []
    for rel, text in sorted(files.texts.items(), key=lambda kv: (kv[0] != "values.yaml", kv[0])):
        if rel == "Chart.yaml":
            continue
        prefix = rel.split("/")[1] if rel.startswith("charts/") else ""
        layers.append(values.Layer(files.label(rel), _yaml_mapping(text, files.label(rel)), prefix))
    app = meta.get("appVersion")
    return Chart(name, str(version), None if app is None else str(app), tuple(layers))


def _yaml_mapping(text: str, label: str) -> dict[str, Any]:
    try:
        doc = yamlio.load(text)
    except yamlio.DuplicateKeyError as exc:
        raise ManifestError(f"{label}: {exc.path} is written twice (lines {exc.first_line} and {exc.second_line})",
                            hint="YAML would silently keep only the second one: remove or rename one") from exc
    except yaml.YAMLError as exc:
        raise ManifestError(f"malformed YAML in {label}: {exc}", hint="fix the YAML syntax at the line shown") from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ManifestError(f"{label} is not a YAML mapping", hint="values and Chart.yaml are mappings (KEY: VALUE)")
    return doc


@dataclass(frozen=True)
class ValuesDocument:
    doc: dict[str, Any]  # what helm gets on stdin
    layers: tuple[values.Layer, ...]  # the values files and set, placeholders substituted
    fed: frozenset[str]  # keys whose value came from a placeholder
    problems: tuple[Problem, ...]


def values_document(f: str, where: str, spec: HelmSource, images: Mapping[str, str]) -> ValuesDocument:
    """The values handed to helm (files merged in order, then ``set``), the layers they came from
    (placeholders substituted), and every problem (each naming its field)."""
    doc: dict[str, Any] = {}
    layers: list[values.Layer] = []
    problems: list[Problem] = []
    fed: set[str] = set()
    for i, path in enumerate(spec.values):
        at = f"{where}.values[{i}]"
        try:
            raw = _yaml_mapping(path.read_text(), str(path))
        except OSError as exc:
            problems.append(Problem(f, at, f"cannot read values file {path}: {exc.strerror}",
                                    f"make it readable, or fix {at}"))
            continue
        except ManifestError as exc:
            problems.append(Problem(f, at, exc.message, exc.hint))
            continue
        fed.update(k for k, v in values.leaves(raw) if isinstance(v, str) and values.placeholders(v))
        subbed, bad = values.substitute_tree(raw, images)
        problems += [Problem(f, at, f"{path}: {key}: {why}", _placeholder_hint(images)) for key, why in bad]
        doc = values.merge(doc, subbed)
        layers.append(values.Layer(str(path), subbed))
    overrides: dict[str, Any] = {}
    for key, raw_value in spec.set.items():
        at = f"{where}.set.{key}"
        try:
            value = values.substitute(raw_value, images) if isinstance(raw_value, str) else raw_value
            parts = values.parse_key(key)
        except values.ValuesError as exc:
            problems.append(Problem(f, at, str(exc), _placeholder_hint(images)))
            continue
        values.set_key(doc, parts, value)
        values.set_key(overrides, parts, value)
        if isinstance(raw_value, str) and values.placeholders(raw_value):
            fed.add(values.key_text(parts))
    if overrides:
        layers.append(values.Layer(f"{where}.set", overrides))
    return ValuesDocument(doc, tuple(layers), frozenset(fed), tuple(problems))


def _placeholder_hint(images: Mapping[str, str]) -> str:
    return (f"write ${{image:NAME}}, ${{image.repository:NAME}}, ${{image.tag:NAME}} or ${{image.digest:NAME}} with "
            f"NAME one of the suite's images ({', '.join(sorted(images)) or 'none'})")


def helm_argv(helm: str, spec: HelmSource, namespace: str, caps: Capabilities) -> list[str]:
    """``helm template`` for a chart (pure); its values come on stdin."""
    argv = [helm, "template", spec.release, str(spec.chart), "--namespace", namespace, "--include-crds",
            "--skip-tests", "--values", "-"]
    if caps.kube_version:
        argv += ["--kube-version", caps.kube_version]
    if caps.api_versions:
        argv += ["--api-versions", ",".join(caps.api_versions)]
    return argv


def split_rendered(text: str, label: Any) -> tuple[list[Obj], list[Source]]:
    """The objects of ``helm template`` output; each :class:`Source` is the template file (``label``
    maps helm's ``# Source:`` path to a file name) and the document's index in it."""
    objects: list[Obj] = []
    sources: list[Source] = []
    counts: dict[str, int] = {}
    for chunk in _SEPARATOR.split(text):
        if not chunk.strip():
            continue
        m = _SOURCE_LINE.search(chunk)
        file = label(m.group(1).strip() if m else None)
        objs, srcs = load_documents(chunk, file, counts.get(file, 0))
        counts[file] = counts.get(file, 0) + 1
        objects += objs
        sources += srcs
    return objects, sources


def _load_chart(suite: Suite, service: Service, images: Mapping[str, str], tools: Tools,
                caps: Capabilities) -> Loaded:
    assert service.helm is not None
    spec = service.helm
    f = str(suite.path)
    where = f"services.{service.name}.helm"
    problems: list[Problem] = []
    chart: Chart | None = None
    try:
        chart = read_chart(spec.chart)
    except ManifestError as exc:
        problems.append(Problem(f, f"{where}.chart", exc.message, exc.hint))
    if chart is not None and spec.version is not None and chart.version != spec.version:
        problems.append(Problem(f, f"{where}.version", f"the chart {spec.chart} is version {chart.version}, not "
                                f"{spec.version}", f"point {where}.chart at version {spec.version}, or set "
                                f"{where}.version: \"{chart.version}\""))
    vals = values_document(f, where, spec, images)
    problems += vals.problems
    if problems:
        raise SourceError.of(problems, "problems in the service's chart")
    assert chart is not None
    argv = helm_argv(tools.helm(), spec, suite.namespace, caps)
    try:
        result = tools.runner.run(argv, input=yaml.safe_dump(vals.doc, sort_keys=False).encode(),
                                  timeout=tools.timeout, verbatim_stdout=True)
    except CommandError as exc:
        raise SourceError.of([Problem(f, f"{where}.chart", f"helm template could not render {spec.chart}:\n"
                                      + _indent(tail_lines(exc.stderr or exc.stdout or exc.message, 12)),
                                      _helm_hint(exc.stderr, spec.chart))]) from exc

    def label(path: str | None) -> str:
        if path is None:
            return f"{spec.chart} (helm template)"
        rel = path.split("/", 1)[1] if "/" in path else path
        return str(spec.chart / rel) if spec.chart.is_dir() else f"{spec.chart}:{rel}"

    try:
        objs, srcs = split_rendered(result.stdout, label)
    except ManifestError as exc:
        raise SourceError.of([Problem(f, f"{where}.chart", exc.message, exc.hint)]) from exc
    kept: list[tuple[Obj, Source, hk.Hook | None]] = []
    warnings: list[str] = []
    for obj, src in zip(objs, srcs, strict=True):
        hook = hk.hook_of(obj)
        label_ = f"{src}: {obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
        if hook is not None:
            problems += [Problem(f, where, p, "helm.sh/hook events and delete policies are helm's (docs/suites.md)")
                         for p in hk.problems(hook, label_)]
            if not hook.runs:
                warnings.append(f"{label_}: a {', '.join(hook.events)} hook, which kti never runs: not applied")
                continue
        kept.append((obj, src, hook))
    if not kept and not problems:
        problems.append(_empty(f, where, f"the chart {spec.chart} as rendered"))
    if problems:
        raise SourceError.of(problems, "problems in the service's chart")
    return Loaded(where, tuple(o for o, _, _ in kept), tuple(s for _, s, _ in kept), tuple(h for *_, h in kept),
                  spec.release, (*chart.layers, *vals.layers), chart.app_version, tuple(warnings), vals.fed)


def _helm_hint(stderr: str, chart: Path) -> str:
    if "missing in charts/ directory" in stderr:
        return f"vendor the chart's dependencies: `helm dependency build {chart}` (where a repository is reachable)"
    if "not found" in stderr and "helm" in stderr.split(":", 1)[0]:
        return HELM_HINT
    return (f"fix the chart at the file and line helm names above; `helm lint {chart}` and `helm template --debug` "
            "show more")


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())


# -- kustomize -------------------------------------------------------------------------------------------
def _kustomization(directory: Path) -> Path | None:
    return next((directory / k for k in KUSTOMIZATIONS if (directory / k).is_file()), None)


def _remote(entry: str) -> bool:
    return "://" in entry or entry.startswith(("github.com/", "git@", "gitlab.com/", "bitbucket.org/")) or \
        "?ref=" in entry or entry.endswith(".git")


def _kustomizations(overlay: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The overlay's kustomization and every local base/component it reaches (each once)."""
    seen: set[Path] = set()
    todo = [overlay.resolve()]
    while todo:
        directory = todo.pop(0)
        if directory in seen:
            continue
        seen.add(directory)
        kfile = _kustomization(directory)
        if kfile is None:
            continue
        doc = _yaml_mapping(kfile.read_text(), str(kfile))
        yield kfile, doc
        for entry in _entries(doc):
            path = (directory / entry).resolve()
            if path.is_dir():
                todo.append(path)


_RESOURCE_FIELDS = ("resources", "bases", "components")


def _entries(doc: Mapping[str, Any]) -> Iterator[str]:
    for name in _RESOURCE_FIELDS:
        for entry in doc.get(name) or []:
            if isinstance(entry, str) and not _remote(entry):
                yield entry


def overlay_problems(overlay: Path) -> list[tuple[str, str]]:
    """(message, hint) for every local resource, base or component a kustomization names that does not
    exist, or that is a directory without a kustomization (read without kubectl)."""
    out: list[tuple[str, str]] = []
    for kfile, doc in _kustomizations(overlay):
        for name in _RESOURCE_FIELDS:
            entries = doc.get(name) or []
            if not isinstance(entries, list):
                out.append((f"{kfile}: {name} is not a list", f"write {name}: [PATH, ...] in {kfile}"))
                continue
            for i, entry in enumerate(entries):
                if not isinstance(entry, str) or _remote(entry):
                    continue
                path = (kfile.parent / entry).resolve()
                if not path.exists():
                    out.append((f"{kfile}: {name}[{i}] {entry!r} does not exist ({path})",
                                f"fix {name}[{i}] in {kfile} (relative to {kfile.parent}), or remove it"))
                elif path.is_dir() and _kustomization(path) is None:
                    out.append((f"{kfile}: {name}[{i}] {entry!r} is a directory without a kustomization.yaml",
                                f"a directory in {name} must be a kustomization (base); list its files instead"))
    return out


def _overlay_files(overlay: Path) -> set[Path]:
    """Every file of the overlay and of the bases it reaches, and every other local file they name."""
    files: set[Path] = set()
    for kfile, doc in _kustomizations(overlay):
        files.update(p for p in kfile.parent.rglob("*") if p.is_file())
        for text in _strings(doc):
            path = (kfile.parent / text.split("=", 1)[-1]).resolve()
            if path.is_file():
                files.add(path)
    return files


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str) and len(node) < 4096:
        yield node


def kustomize_images(images: Mapping[str, str]) -> list[dict[str, str]]:
    """kustomize ``images:`` entries giving each image NAME the run's reference (pure)."""
    out = []
    for name, ref in sorted(images.items()):
        parsed = parse_ref(ref)
        entry = {"name": name, "newName": parsed.repository}
        if parsed.digest:
            entry["digest"] = parsed.digest
        elif parsed.tag:
            entry["newTag"] = parsed.tag
        out.append(entry)
    return out


def _load_overlay(suite: Suite, service: Service, overlay: Path, images: Mapping[str, str],
                  tools: Tools) -> Loaded:
    f = str(suite.path)
    where = f"services.{service.name}.kustomize"
    try:
        problems = [Problem(f, where, msg, hint) for msg, hint in overlay_problems(overlay)]
    except (ManifestError, OSError) as exc:
        message = exc.message if isinstance(exc, ManifestError) else str(exc)
        hint = exc.hint if isinstance(exc, ManifestError) else f"make the kustomization readable ({where})"
        problems = [Problem(f, where, message, hint)]
    if problems:
        raise SourceError.of(problems, "problems in the service's overlay")
    kubectl = tools.kubectl()
    with tempfile.TemporaryDirectory(prefix="kti-kustomize-") as tmp:
        rel = os.path.relpath(overlay, tmp)
        wrapper = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                   "resources": [rel], "images": kustomize_images(images)}
        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump(wrapper, sort_keys=False))
        try:
            result = tools.runner.run([kubectl, "kustomize", tmp], timeout=tools.timeout, verbatim_stdout=True)
        except CommandError as exc:
            text = (exc.stderr or exc.stdout or exc.message).replace(rel, str(overlay)).replace(tmp, "<kti>")
            raise SourceError.of([Problem(f, where, f"kubectl kustomize could not build {overlay}:\n"
                                          + _indent(tail_lines(text, 12)),
                                          f"fix the kustomization (the path or field kustomize names above); "
                                          f"`kubectl kustomize {overlay}` shows the same")]) from exc
    try:
        objs, srcs = load_documents(result.stdout, f"{overlay} (kustomize)")
    except ManifestError as exc:
        raise SourceError.of([Problem(f, where, exc.message, exc.hint)]) from exc
    if not objs:
        raise SourceError.of([_empty(f, where, f"the overlay {overlay} as built")])
    return Loaded(where, tuple(objs), tuple(srcs), (None,) * len(objs))

