"""Rendering manifests from the exact references a run built, with a drift guard.

Image references reach manifests three ways:

- **placeholders** — ``${image:NAME}`` anywhere in a string value (container images, env vars of
  operators, custom-resource fields) becomes the built reference of image ``NAME``;
- **container-name matching** — a container named like a built image whose ``image`` is empty or
  an *untagged* form of the same repository (``datastorage``, ``localhost/datastorage``) gets the
  built reference;
- **JSON paths** — for custom resources, ``ImagePath(kind="Agent", path="spec.image", image="agent")``
  sets a field (``a.b[0].c``, ``[*]`` for every element).

Manifests are read strictly: a key written twice, ``metadata.generateName`` (server-side apply needs a
fixed name) and a directory without any ``.yaml``/``.yml`` file are errors. :func:`referenced_images`
tells, from the parsed objects (so never from a comment), which images a service needs loaded;
:func:`namespace_problems` refuses objects aimed at a namespace other than the suite's.

Then, before anything is applied, the drift guard refuses (all problems reported at once):
a local reference (``localhost/…`` or the run's registry) that this run did not build — naming the
reference that was built for that repository; ``latest`` or untagged references; a placeholder naming
no built image. Containers running a built image get ``imagePullPolicy: Never``. A built image that no
manifest uses is reported in :attr:`Rendered.unused`.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubetest_infra import yamlio
from kubetest_infra.errors import ConfigError, TagError
from kubetest_infra.tags import parse_ref, require_pinned
from kubetest_infra.workloads import containers, template_metadata

IMAGE_IDS_ANNOTATION = "kubetest-infra.io/image-ids"
PLACEHOLDER = re.compile(r"\$\{image:([a-z0-9][a-z0-9._/-]*)\}")
_ANY_PLACEHOLDER = re.compile(r"\$\{image:([^}]*)\}")
# Kinds the API server serves without a namespace: metadata.namespace means nothing on them.
CLUSTER_SCOPED = frozenset({
    "Namespace", "Node", "PersistentVolume", "StorageClass", "PriorityClass", "RuntimeClass", "IngressClass",
    "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "APIService", "CSIDriver", "CSINode",
    "VolumeAttachment", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "FlowSchema",
    "PriorityLevelConfiguration", "CertificateSigningRequest", "VolumeSnapshotClass"})

Obj = dict[str, Any]


class ManifestError(ConfigError):
    """A manifest that cannot be read or is not a Kubernetes object."""


class DriftError(ConfigError):
    """References in the manifests that do not match what this run built."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(
            f"{len(self.problems)} image reference problem(s) in the manifests; nothing was applied:\n"
            + "\n".join(f"  - {p}" for p in self.problems),
            hint="use ${image:NAME} placeholders (or container-name matching) so manifests always carry the "
            "reference this run built; pin external images with a tag or digest",
        )


@dataclass(frozen=True)
class Source:
    """Where an object came from: file and 0-based document index."""

    file: str
    index: int

    def __str__(self) -> str:
        return f"{self.file} (document {self.index + 1})"


@dataclass(frozen=True)
class ImagePath:
    """A field holding an image reference in a custom resource."""

    kind: str
    path: str
    image: str
    api_version: str | None = None


@dataclass(frozen=True)
class Substitution:
    source: Source
    where: str
    image: str
    ref: str


@dataclass
class _Walk:
    """What substitution needs while it walks one object."""

    images: Mapping[str, str]
    src: Source
    label: str
    subs: list[Substitution]
    problems: list[str]


@dataclass(frozen=True)
class Rendered:
    objects: tuple[Obj, ...]
    sources: tuple[Source, ...]
    substitutions: tuple[Substitution, ...]
    unused: tuple[str, ...]
    warnings: tuple[str, ...] = field(default=())


def load_manifests(paths: Iterable[Path]) -> tuple[list[Obj], list[Source]]:
    """Load every document of every file (directories: their *.yaml/*.yml, sorted)."""
    objects: list[Obj] = []
    sources: list[Source] = []
    for path in _expand(paths):
        try:
            text = path.read_text()
        except OSError as exc:
            raise ManifestError(f"cannot read manifest {path}: {exc.strerror}", hint="check the path") from exc
        objs, srcs = load_documents(text, str(path))
        objects.extend(objs)
        sources.extend(srcs)
    return objects, sources


def load_documents(text: str, file: str, first_index: int = 0) -> tuple[list[Obj], list[Source]]:
    """Every object of a YAML stream read strictly, as :func:`load_manifests` reads a file; ``file``
    names where the text came from (a file, or a rendered template), ``first_index`` its first
    document's index there."""
    objects: list[Obj] = []
    sources: list[Source] = []
    try:
        docs = yamlio.load_all(text)
    except yamlio.DuplicateKeyError as exc:
        raise ManifestError(f"{file} (document {first_index + exc.document + 1}): {exc.path} is written twice "
                            f"(lines {exc.first_line} and {exc.second_line})",
                            hint="YAML would silently keep only the second one: remove or rename one") from exc
    except yaml.YAMLError as exc:
        index = first_index + text[: _error_offset(exc, text)].count("\n---")
        raise ManifestError(f"malformed YAML in {file} (document {index + 1}): {exc}",
                            hint="fix the YAML syntax at the line shown") from exc
    for index, doc in enumerate(docs, start=first_index):
        if doc is None:
            continue
        src = Source(file, index)
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            for item in doc.get("items") or []:
                _check_object(item, src)
                objects.append(item)
                sources.append(src)
            continue
        _check_object(doc, src)
        objects.append(doc)
        sources.append(src)
    return objects, sources


def _expand(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
            if not found:
                raise ManifestError(f"manifest directory {path} holds no .yaml or .yml file",
                                    hint="a service with nothing to apply would be 'ready' at once; put its "
                                    "manifests there or fix the path in the suite file")
            out.extend(found)
        elif path.exists():
            out.append(path)
        else:
            raise ManifestError(f"manifest {path} does not exist", hint="check the path in the suite file")
    return out


def _error_offset(exc: yaml.YAMLError, text: str) -> int:
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return len(text)
    return int(getattr(mark, "index", len(text)))


def _check_object(doc: object, src: Source) -> None:
    if not isinstance(doc, dict):
        raise ManifestError(f"{src}: a manifest document must be a mapping, got {type(doc).__name__}",
                            hint="each YAML document must be one Kubernetes object")
    for key in ("apiVersion", "kind"):
        if not isinstance(doc.get(key), str) or not doc.get(key):
            raise ManifestError(f"{src}: missing {key}", hint="every object needs apiVersion, kind and metadata.name")
    meta = doc.get("metadata")
    if isinstance(meta, dict) and meta.get("generateName") and not meta.get("name"):
        raise ManifestError(f"{src}: {doc['kind']} uses metadata.generateName={meta['generateName']!r}; "
                            "server-side apply needs a fixed name (and a generated one could never be found, "
                            "waited for or removed)",
                            hint=f"replace generateName with a fixed metadata.name, e.g. name: "
                            f"{str(meta['generateName']).rstrip('-') or 'NAME'}")
    if not isinstance(meta, dict) or not meta.get("name"):
        raise ManifestError(f"{src}: {doc['kind']} without metadata.name",
                            hint="every object needs apiVersion, kind and metadata.name")
    if not isinstance(meta["name"], str):
        raise ManifestError(f"{src}: {doc['kind']} metadata.name is {meta['name']!r}, not a string",
                            hint="quote the name")


def render(
    objects: Sequence[Obj],
    sources: Sequence[Source],
    images: Mapping[str, str],
    *,
    image_paths: Sequence[ImagePath] = (),
    match_container_names: bool = True,
    local_registries: Iterable[str] = ("localhost",),
    allowed_refs: Iterable[str] = (),
    image_ids: Mapping[str, str] | None = None,
    namespace: str | None = None,
    pull_policy: str = "Never",
) -> Rendered:
    """Substitute this run's references (``images``: name → ref) and refuse any drift.

    With ``namespace`` (the suite's), an object aimed at another namespace is refused first
    (:class:`ManifestError`, see :func:`namespace_problems`).

    ``allowed_refs`` are further local references this run loaded (e.g. locally built external images).
    ``image_ids`` (ref → image id) stamps pod templates with an annotation over the ids they run, so a
    rebuilt image behind an unchanged reference still rolls the workload out. ``pull_policy``: what
    containers running a delivered image get (``Never`` for images loaded into the nodes,
    ``IfNotPresent`` for digests pushed to a registry; see :mod:`.delivery`).
    """
    if namespace is not None:
        wrong = namespace_problems(objects, sources, namespace)
        if wrong:
            raise ManifestError("objects outside the suite's namespace; nothing was applied:\n"
                                + "\n".join(f"  - {p}" for p in wrong), hint=wrong[0].hint)
    registries = {r.strip("/") for r in local_registries}
    ours = set(images.values()) | set(allowed_refs)
    by_repo = {parse_ref(ref).repository: ref for ref in images.values()}
    out = [copy.deepcopy(o) for o in objects]
    subs: list[Substitution] = []
    problems: list[str] = []

    for obj, src in zip(out, sources, strict=True):
        label = f"{src}: {obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
        walk = _Walk(images, src, label, subs, problems)
        _substitute_strings(obj, walk, path="")
        for ip in image_paths:
            if obj.get("kind") == ip.kind and (ip.api_version is None or obj.get("apiVersion") == ip.api_version):
                _set_path(obj, ip, walk)
        used_ids: list[str] = []
        for where, container in containers(obj):
            name = container.get("name", "")
            image = container.get("image")
            if match_container_names and name in images and _matches_untagged(image, name, images[name]):
                container["image"] = images[name]
                subs.append(Substitution(src, f"{where}.image", name, images[name]))
                image = images[name]
            if not isinstance(image, str) or not image:
                problems.append(f"{label}: container {name!r} has no image")
                continue
            problems.extend(_guard(image, f"{label}: container {name!r}", registries, ours, by_repo))
            if image in ours:
                container["imagePullPolicy"] = pull_policy
                if image_ids and image in image_ids:
                    used_ids.append(f"{image}@{image_ids[image]}")
        if used_ids:
            _annotate_template(obj, IMAGE_IDS_ANNOTATION,
                               hashlib.sha256("\n".join(sorted(used_ids)).encode()).hexdigest()[:16])
        for ip in image_paths:
            if obj.get("kind") == ip.kind:
                for value in _get_path(obj, ip.path):
                    if isinstance(value, str):
                        problems.extend(_guard(value, f"{label}: {ip.path}", registries, ours, by_repo))

    if problems:
        raise DriftError(problems)
    dumped = yaml.safe_dump_all(out)  # once, not once per image
    used = {s.image for s in subs} | {n for n, r in images.items() if r in dumped}
    unused = tuple(sorted(set(images) - used))
    warnings = tuple(f"built image {n!r} ({images[n]}) is used by no manifest" for n in unused)
    return Rendered(tuple(out), tuple(sources), tuple(subs), unused, warnings)


def placeholder_names(objects: Iterable[Obj]) -> set[str]:
    """Every NAME of a ``${image:NAME}`` in a string value of ``objects`` (YAML comments are not values)."""
    names: set[str] = set()
    for obj in objects:
        for text in _strings(obj):
            names.update(m.group(1) for m in _ANY_PLACEHOLDER.finditer(text))
    return names


def referenced_images(objects: Iterable[Obj], images: Mapping[str, str], *, match_container_names: bool = True,
                      image_paths: Sequence[ImagePath] = ()) -> set[str]:
    """The names of ``images`` (name → the reference the run will produce) these objects will use.

    Computed from the parsed objects with the rules :func:`render` substitutes by: ``${image:NAME}`` in
    any string value, a container named like an image whose ``image`` is empty or an untagged form of
    its repository, and ``image_paths``; and a container whose ``image`` already is the exact reference
    (what a Helm chart or a Kustomize overlay renders when fed the run's references). A service's
    deploy must wait for the load of each of them.
    """
    objects = list(objects)
    used = placeholder_names(objects) & set(images)
    by_ref = {ref: name for name, ref in images.items()}
    for obj in objects:
        for _, container in containers(obj):
            image = container.get("image")
            if isinstance(image, str) and image in by_ref:
                used.add(by_ref[image])
        if match_container_names:
            for _, container in containers(obj):
                name = container.get("name", "")
                if name in images and _matches_untagged(container.get("image"), name, images[name]):
                    used.add(name)
        for ip in image_paths:
            if (obj.get("kind") == ip.kind and ip.image in images
                    and (ip.api_version is None or obj.get("apiVersion") == ip.api_version)
                    and _get_path(obj, ip.path)):
                used.add(ip.image)
    return used


@dataclass(frozen=True)
class NamespaceProblem:
    source: Source
    message: str
    hint: str

    def __str__(self) -> str:
        return self.message


def namespace_problems(objects: Sequence[Obj], sources: Sequence[Source], namespace: str) -> list[NamespaceProblem]:
    """Objects that would land outside the suite's ``namespace`` (or create another namespace).

    The run waits for, and removes, what is in its namespace only: an object elsewhere is never seen
    ready and outlives the run.
    """
    problems: list[NamespaceProblem] = []
    for obj, src in zip(objects, sources, strict=True):
        kind = str(obj.get("kind"))
        meta = obj.get("metadata") or {}
        label = f"{src}: {kind}/{meta.get('name')}"
        if kind == "Namespace" and meta.get("name") != namespace:
            problems.append(NamespaceProblem(
                src, f"{label} creates namespace {meta.get('name')!r}, but the suite deploys into {namespace!r} "
                "and would never remove another namespace",
                f"remove the Namespace object (the run creates and removes {namespace} itself), or make "
                f"{meta.get('name')} the suite's namespace (namespace: in the suite file)"))
        elif kind not in CLUSTER_SCOPED and meta.get("namespace") not in (None, "", namespace):
            problems.append(NamespaceProblem(
                src, f"{label} sets metadata.namespace {meta.get('namespace')!r}, but the suite's namespace is "
                f"{namespace!r}",
                f"remove metadata.namespace from the object (it then goes to {namespace}), or make "
                f"{meta.get('namespace')} the suite's namespace (namespace: in the suite file)"))
    return problems


def cluster_scoped_problems(objects: Sequence[Obj], sources: Sequence[Source]) -> list[str]:
    """Objects a run on a shared cluster must not create: cluster-scoped kinds (a Namespace included)
    outlive the run's namespace and would collide with another run's."""
    return [f"{src}: {obj.get('kind')}/{(obj.get('metadata') or {}).get('name')} is cluster-scoped"
            for obj, src in zip(objects, sources, strict=True) if str(obj.get("kind")) in CLUSTER_SCOPED]


def _strings(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def _annotate_template(obj: Obj, key: str, value: str) -> None:
    meta = template_metadata(obj)  # the pod template's, not the workload's
    if meta is not None:
        meta.setdefault("annotations", {})[key] = value


def _guard(image: str, where: str, registries: set[str], ours: set[str], by_repo: Mapping[str, str]) -> list[str]:
    if _ANY_PLACEHOLDER.search(image):
        return []  # reported when substituting
    try:
        parsed = require_pinned(image)
    except TagError as exc:
        return [f"{where}: {exc.message}"]
    if image in ours:
        return []
    domain = parsed.domain.split(":")[0]
    if parsed.domain in registries or domain in registries or parsed.is_local:
        built = by_repo.get(parsed.repository)
        hint = f"; this run built {built}" if built else "; this run built no image for that repository"
        return [f"{where}: {image} is a local reference this run did not build or load{hint}"]
    return []


def _matches_untagged(image: object, name: str, ref: str) -> bool:
    if image is None or image == "":
        return True
    if not isinstance(image, str) or ":" in image.rsplit("/", 1)[-1] or "@" in image:
        return False
    repo = parse_ref(ref).repository
    return image in (name, repo, repo.split("/", 1)[-1])


def _substitute_strings(node: Any, walk: _Walk, path: str) -> Any:
    if isinstance(node, dict):
        for key, value in node.items():
            node[key] = _substitute_strings(value, walk, f"{path}.{key}")
        return node
    if isinstance(node, list):
        for i, value in enumerate(node):
            node[i] = _substitute_strings(value, walk, f"{path}[{i}]")
        return node
    if isinstance(node, str) and "${image:" in node:
        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in walk.images:
                known = ", ".join(sorted(walk.images)) or "none"
                walk.problems.append(f"{walk.label}: placeholder ${{image:{name}}} at {path.lstrip('.')} names "
                                     f"no image built by this run (built: {known})")
                return m.group(0)
            walk.subs.append(Substitution(walk.src, path.lstrip("."), name, walk.images[name]))
            return walk.images[name]

        return _ANY_PLACEHOLDER.sub(repl, node)
    return node


_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+|\*)\]")


def _tokens(path: str) -> list[str | int | None]:
    out: list[str | int | None] = []
    for m in _TOKEN.finditer(path):
        if m.group(1) is not None:
            out.append(m.group(1))
        else:
            out.append(None if m.group(2) == "*" else int(m.group(2)))
    return out


def _get_path(obj: Any, path: str) -> list[Any]:
    nodes = [obj]
    for tok in _tokens(path):
        nxt: list[Any] = []
        for n in nodes:
            if isinstance(tok, str) and isinstance(n, dict) and tok in n:
                nxt.append(n[tok])
            elif tok is None and isinstance(n, list):
                nxt.extend(n)
            elif isinstance(tok, int) and isinstance(n, list) and tok < len(n):
                nxt.append(n[tok])
        nodes = nxt
    return nodes


def _set_path(obj: Obj, ip: ImagePath, walk: _Walk) -> None:
    images = walk.images
    if ip.image not in images:
        walk.problems.append(f"{walk.label}: image path {ip.path} names image {ip.image!r}, "
                             "which this run did not build")
        return
    tokens = _tokens(ip.path)
    parents = _get_path(obj, _join(tokens[:-1])) if len(tokens) > 1 else [obj]
    last = tokens[-1]
    hit = False
    for parent in parents:
        if isinstance(last, str) and isinstance(parent, dict) and last in parent:
            parent[last] = images[ip.image]
            hit = True
        elif isinstance(parent, list):
            idx = range(len(parent)) if last is None else [last] if isinstance(last, int) else []
            for i in idx:
                if i < len(parent):
                    parent[i] = images[ip.image]
                    hit = True
    if hit:
        walk.subs.append(Substitution(walk.src, ip.path, ip.image, images[ip.image]))
    else:
        walk.problems.append(f"{walk.label}: image path {ip.path} not found in the object")


def _join(tokens: Sequence[str | int | None]) -> str:
    out = ""
    for t in tokens:
        out += f".{t}" if isinstance(t, str) else f"[{'*' if t is None else t}]"
    return out.lstrip(".")
