"""The suite.yaml schema: one description of every field, from which come the parser's field sets
(:mod:`kubetest_infra.suite` asks :func:`fields` which names a section allows and requires), the
configuration reference (``docs/configuration.md``, :func:`markdown`) and a JSON Schema for editors
(``docs/suite.schema.json``, :func:`json_schema`; ``kti schema`` prints either). A unit test checks
that both files match this module, that :data:`EXAMPLE` (every field) loads without a problem, and
that every suite.yaml of the repository validates against the JSON Schema.

The semantic rules (a ready port must be a mapped host port, paths must exist, ...) live in the
parser and in :mod:`kubetest_infra.preflight`; the text here states them for people.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_ENV_PATTERN = r".*\$\{env:[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}.*"
_DURATION = r"^\s*(\d+(\.\d+)?|(\d+(\.\d+)?(ms|s|m|h))+)\s*$"


@dataclass(frozen=True)
class Node:
    """The type of a value: a scalar, an object with fixed fields, a mapping keyed by names, or a list."""

    kind: str  # string | integer | boolean | scalar | duration | object | map | list
    fields: tuple[Field, ...] = ()  # object
    values: Node | None = None  # map: each value; list: each item
    key: str = ""  # map: what a key is, e.g. "image name"
    key_pattern: str = ""  # map: the keys' grammar (JSON Schema propertyNames)
    pattern: str = ""  # string: the grammar (an ${env:…} value is always accepted)
    minimum: int | None = None
    maximum: int | None = None
    one_of: tuple[str, ...] = ()  # object: at most one of these fields
    exactly_one: tuple[str, ...] = ()  # object: exactly one of these fields
    type_text: str = ""  # how the reference names the type (default: from kind)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)


@dataclass(frozen=True)
class Field:
    name: str
    node: Node
    doc: str
    required: bool = False
    default: str = ""  # as the reference shows it; empty: no default (or required)


def _string(pattern: str = "", type_text: str = "string") -> Node:
    return Node("string", pattern=pattern, type_text=type_text)


def _integer(minimum: int | None = None, maximum: int | None = None, type_text: str = "integer") -> Node:
    return Node("integer", minimum=minimum, maximum=maximum, type_text=type_text)


_PORT = _integer(1, 65535, "port (1-65535)")
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"

BUILD = Node("object", (
    Field("context", _string(type_text="path"), "The build context directory, **relative to the directory of the "
          "suite file** (`../../examples/app`). Every file in it, after `.dockerignore`, is part of the image's input "
          "digest.", required=True),
    Field("dockerfile", _string(type_text="path"), "The Dockerfile, **relative to the context**.",
          default="`Dockerfile`"),
    Field("build_args", Node("map", values=_string(), key="build argument", key_pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                             type_text="mapping of NAME → string"),
          "Build arguments, a mapping (`{BASE_IMAGE: python:3.12-slim}`), not a list of `K=V`. A base image chosen "
          "by an argument (`ARG BASE_IMAGE` before `FROM ${BASE_IMAGE}`) is part of the digest. Typical: "
          "`BASE_IMAGE: \"${env:PYTHON_IMAGE:-python:3.12-slim}\"` — the public image, or the lab's offline one "
          "when `PYTHON_IMAGE` is set (see [labs.md](labs.md)).", default="none"),
    Field("target", _string(), "A stage of the Dockerfile (`FROM … AS NAME`) to build.", default="the last stage"),
))

PORT_MAPPING = Node("object", (
    Field("container_port", _PORT, "The port on the Kind node: usually a Service's `nodePort` (30000-32767).",
          required=True),
    Field("host_port", _PORT, "The port on this host. Below 1024 needs root. Give every suite its own host ports "
          "to run suites side by side.", required=True),
    Field("listen_address", _string(type_text="IP address"), "The host address to listen on: `127.0.0.1` is this "
          "host only; `0.0.0.0` every interface (kind's own default).", default="`127.0.0.1`"),
    Field("protocol", _string(r"^([Tt][Cc][Pp]|[Uu][Dd][Pp]|[Ss][Cc][Tt][Pp])$", "TCP, UDP or SCTP"),
          "Any case.", default="`TCP`"),
))

MOUNT = Node("object", (
    Field("host_path", _string(type_text="path"), "A directory or file of this host, **relative to the directory of "
          "the suite file**; it must exist.", required=True),
    Field("container_path", _string(r"^/", "absolute path"), "Where it appears inside each node.", required=True),
    Field("read_only", Node("boolean"), "A real boolean: `true`/`false`, not `\"false\"`.", default="`false`"),
))

CLUSTER = Node("object", (
    Field("name", _string(r"^[a-z0-9]([-a-z0-9]{0,48}[a-z0-9])?$", "cluster name"), "The Kind cluster: 1-50 "
          "lowercase letters, digits and `-`. A cluster of this name that kubetest-infra did not create is never "
          "touched.", required=True),
    Field("node_image", _string(type_text="image reference"), "The node image. Typical: "
          "`\"${env:KTI_NODE_IMAGE:-}\"` (empty: kind's default; the offline lab sets `KTI_NODE_IMAGE`).",
          default="kind's default"),
    Field("workers", _integer(0), "Extra worker nodes; `0` is a single node that runs the pods.", default="`0`"),
    Field("ports", Node("list", values=PORT_MAPPING, type_text="list of port mappings"),
          "Node ports published on this host (kind's `extraPortMappings`). A service's `ready` check and "
          "`kti_service_url` go through these.", default="none"),
    Field("mounts", Node("list", values=MOUNT, type_text="list of mounts"),
          "Host paths mounted into every node (kind's `extraMounts`).", default="none"),
    Field("kubeadm_patches", Node("list", values=_string(), type_text="list of strings"),
          "Each a YAML document (use a `|` block), passed to kind's `kubeadmConfigPatches`.", default="none"),
))

EXTERNAL = Node("object", (
    Field("ref", _string(type_text="pinned image reference"), "The public image: a version tag or a digest "
          "(`docker.io/library/postgres:16`); `latest` and untagged references are refused. Used when the engine "
          "has it or can pull it.", required=True),
    Field("env", _string(r"^[A-Za-z_][A-Za-z0-9_]*$", "variable name"), "The *name* of an environment variable "
          "that, when set, overrides `ref` (it must hold a pinned reference already in the engine).",
          default="none"),
    Field("build", BUILD, "How to build the image locally when `ref` is neither present nor pullable (offline "
          "machines): the fields of `images.NAME`. The result is tagged like a built image "
          "(`localhost/NAME:SUITE-RUN`).", default="none"),
))

HTTP_CHECK = Node("object", (
    Field("port", _PORT, "A **host port** of `cluster.ports` (the check connects to `127.0.0.1:PORT` from this "
          "host), not the NodePort.", required=True),
    Field("path", _string(r"^/\S*$", "path"), "Starts with `/`; no host, no spaces.", default="`/`"),
    Field("status", _integer(100, 599, "HTTP status"), "The status that means ready.", default="`200`"),
))

READY = Node("object", (
    Field("http", HTTP_CHECK, "An HTTP GET that must answer `status`. The service's endpoint "
          "(`kti_service_url`, `Environment.endpoints`) becomes `http://127.0.0.1:PORT`."),
    Field("tcp", _PORT, "A host port of `cluster.ports` that must accept a connection; the endpoint becomes "
          "`tcp://127.0.0.1:PORT`."),
), one_of=("http", "tcp"), type_text="mapping: http or tcp")

_SCALAR = Node("scalar", type_text="string, number or boolean")
HELM = Node("object", (
    Field("chart", _string(type_text="path"), "A chart directory (holding `Chart.yaml`) or a packaged `.tgz`, "
          "**relative to the directory of the suite file**.", required=True),
    Field("release", _string(r"^[a-z0-9]([-a-z0-9.]{0,51}[a-z0-9])?$", "release name"), "The release name: at "
          "most 53 lowercase letters, digits, `-` and `.`.", default="the service name"),
    Field("values", Node("list", values=_string(type_text="path"), type_text="list of paths"), "Values files, "
          "relative to the directory of the suite file, merged in order. Their strings may use the image "
          "placeholders (`${image:NAME}`, `${image.repository:NAME}`, `${image.tag:NAME}`, "
          "`${image.digest:NAME}`).", default="none"),
    Field("set", Node("map", values=_SCALAR, key="helm --set key", type_text="mapping of key → scalar"),
          "Helm `--set` keys (`image.tag`, `a\\.b`, `l[0]`) to strings, numbers or booleans, applied last; lists "
          "and mappings go in a values file. Strings may use the image placeholders.", default="none"),
    Field("namespace", _string(_DNS_LABEL, "DNS label"), "Must be the suite's namespace (the chart is always "
          "rendered with `--namespace` the suite's).", default="the suite's namespace"),
    Field("version", _string(), "The chart's `Chart.yaml` `version` must be this.", default="any"),
))


_DURATION_NODE = Node("duration", type_text="duration")

SERVICE = Node("object", (
    Field("manifests", Node("list", values=_string(type_text="path"), type_text="list of paths"),
          "YAML files or directories (every `.yaml`/`.yml` inside, sorted). A path starting with `./` is relative "
          "to the directory of the suite file. Any other path is relative to the **manifests root**: the first "
          "directory named `manifests` found in the suite's directory or in one of its parents (for "
          "`suites/app/suite.yaml` in a repository with a top-level `manifests/`: that one), else the suite's "
          "directory. `${image:NAME}` in a manifest becomes the exact reference of image NAME."),
    Field("helm", HELM, "A local Helm chart rendered offline with `helm template` (see [suites.md](suites.md#sources-"
          "manifests-a-helm-chart-or-a-kustomize-overlay))."),
    Field("kustomize", _string(type_text="path"), "A Kustomize overlay or base: the directory holding "
          "`kustomization.yaml`, **relative to the directory of the suite file**, built with `kubectl kustomize`; "
          "every image NAME of the suite is given the run's reference through kustomize's `images:`."),
    Field("depends_on", Node("list", values=_string(), type_text="list of service names"),
          "Services deployed and ready before this one.", default="none"),
    Field("ready", READY, "One check from this host after the rollout, also giving the service's endpoint. Without "
          "it the service is ready when its workloads are, and it has no endpoint (`kti_service_url` raises "
          "for it).", default="none"),
    Field("timeout", _DURATION_NODE, "How long the rollout may take, and again the `ready` check after it. "
          "Seconds (`120`, `2.5`) or a duration with units `ms`, `s`, `m`, `h` (`30s`, `5m`, `1m30s`); more than "
          "zero.", default="rollout: the workloads' largest `progressDeadlineSeconds`, else 300 s; check: 120 s"),
    Field("crash_restarts", _integer(0), "Container crashes tolerated before the service fails. With `0` the first "
          "non-zero exit (or any exit of a service container) fails at once, with the container's log. Raise it "
          "for a container expected to crash while an undeclared dependency comes up.", default="`0`"),
    Field("stable_seconds", Node("duration", minimum=0, type_text="duration or 0"), "A container **without a "
          "readiness probe** counts as ready after running this long without a restart (`0`: as soon as it runs). "
          "A container that exited is never ready.", default="2 s"),
), exactly_one=("manifests", "helm", "kustomize"))

SUITE = Node("object", (
    Field("name", _string(r"^[a-z0-9]([a-z0-9_.-]{0,62}[a-z0-9])?$", "suite name"), "The suite (the *consumer* of "
          "DD-TEST-001): every image the run builds is tagged `localhost/IMAGE:NAME-RUNID`. Lowercase letters, "
          "digits, `.`, `_`, `-`. Also the default namespace, so without `namespace` it must be a DNS label.",
          required=True),
    Field("namespace", _string(_DNS_LABEL, "DNS label"), "Where the services are deployed. Manifests must not aim "
          "objects at another namespace.", default="`name`"),
    Field("cluster", CLUSTER, "The Kind cluster.", required=True),
    Field("images", Node("map", values=BUILD, key="image name", type_text="mapping of image name → build"),
          "Images this suite builds, keyed by image name (a mapping, not a list of `- name:` entries). The name is "
          "the repository of the tag and the `NAME` of `${image:NAME}`.", default="none"),
    Field("external_images", Node("map", values=EXTERNAL, key="image name",
                                  type_text="mapping of image name → external image"),
          "Images used as published (databases, caches), each with an offline fallback build. A name is under "
          "`images` or here, not both.", default="none"),
    Field("services", Node("map", values=SERVICE, key="service name", key_pattern=_DNS_LABEL,
                           type_text="mapping of service name → service"),
          "What the suite deploys, keyed by service name (a DNS label); at least one.", required=True),
))

# Every field of the schema, valid as written next to the files that EXAMPLE_FILES lists.
EXAMPLE = """\
# yaml-language-server: $schema=suite.schema.json
name: shop
namespace: shop-e2e
cluster:
  name: kti-shop
  node_image: "${env:KTI_NODE_IMAGE:-}"
  workers: 1
  ports:
    - {container_port: 30080, host_port: 38080}
    - {container_port: 30432, host_port: 38432, listen_address: 127.0.0.1, protocol: tcp}
    - {container_port: 30053, host_port: 38053, protocol: UDP}
  mounts:
    - {host_path: ./fixtures, container_path: /fixtures, read_only: true}
  kubeadm_patches:
    - |
      kind: KubeletConfiguration
      maxPods: 150
images:
  shop:
    context: ./src
    dockerfile: Dockerfile
    target: final
    build_args: {BASE_IMAGE: "${env:PYTHON_IMAGE:-python:3.12-slim}"}
external_images:
  postgres:
    ref: docker.io/library/postgres:16
    env: KTI_POSTGRES_IMAGE
    build: {context: ./postgres}
services:
  postgres:
    manifests: [./manifests/postgres.yaml]
    ready: {tcp: 38432}
    timeout: 2m
  shop:
    manifests: [shop.yaml]
    depends_on: [postgres]
    ready: {http: {port: 38080, path: /readyz, status: 200}}
    timeout: 90s
    crash_restarts: 1
    stable_seconds: 5s
  search:
    helm:
      chart: ./charts/search
      release: search
      values: [./search-values.yaml]
      set: {image.tag: "${image.tag:shop}", replicas: 1}
      namespace: shop-e2e
      version: 0.1.0
    depends_on: [postgres]
  cache:
    kustomize: ./overlays/cache
"""


# -- what the parser asks ---------------------------------------------------------------------
def node(path: str) -> Node:
    """The node at ``path``: ``""`` (top), ``cluster``, ``cluster.ports[]``, ``images.*``,
    ``external_images.*.build``, ``services.*.ready.http`` …"""
    current = SUITE
    for part in [p for p in path.split(".") if p]:
        if part.endswith("[]"):  # an item of a list
            current = current.field(part[:-2]).node
        elif part != "*":  # "*": a value of a mapping keyed by names
            current = current.field(part).node
            continue
        if current.kind not in ("map", "list") or current.values is None:
            raise ValueError(f"{path}: {part} is not a mapping keyed by names nor a list")
        current = current.values
    return current


def fields(path: str) -> tuple[set[str], set[str]]:
    """(allowed, required) field names of the object at ``path``."""
    n = node(path)
    if n.kind != "object":
        raise ValueError(f"{path or 'top level'} is a {n.kind}, not an object")
    return {f.name for f in n.fields}, {f.name for f in n.fields if f.required}


# -- JSON Schema --------------------------------------------------------------------------------
def json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of suite.yaml, for editors (yaml-language-server) and linters."""
    out: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                           "title": "kubetest-infra suite.yaml",
                           "description": "A suite: its Kind cluster, the images it builds, the services it deploys. "
                                          "Reference: docs/configuration.md"}
    out.update(_json(SUITE))
    return out


def _json(n: Node, doc: str = "", default: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if doc:
        out["description"] = doc + (f" Default: {default.replace('`', '')}." if default and default != "none" else "")
    if n.kind == "object":
        out["type"] = "object"
        out["properties"] = {f.name: _json(f.node, f.doc, f.default) for f in n.fields}
        required = [f.name for f in n.fields if f.required]
        if required:
            out["required"] = required
        out["additionalProperties"] = False
        if n.one_of:
            out["not"] = {"required": list(n.one_of)}
        if n.exactly_one:
            out["oneOf"] = [{"required": [f]} for f in n.exactly_one]
    elif n.kind == "map":
        assert n.values is not None
        out["type"] = ["object", "null"]
        out["additionalProperties"] = _json(n.values)
        if n.key_pattern:
            out["propertyNames"] = {"pattern": n.key_pattern}
    elif n.kind == "list":
        assert n.values is not None
        out["type"] = ["array", "null"]
        out["items"] = _json(n.values)
    elif n.kind == "string":
        out["type"] = ["string", "number"] if not n.pattern else "string"
        if n.pattern:
            out["anyOf"] = [{"pattern": n.pattern}, {"pattern": _ENV_PATTERN}]
    elif n.kind == "integer":
        out["type"] = "integer"
        if n.minimum is not None:
            out["minimum"] = n.minimum
        if n.maximum is not None:
            out["maximum"] = n.maximum
    elif n.kind == "boolean":
        out["type"] = "boolean"
    elif n.kind == "scalar":
        out["type"] = ["string", "number", "boolean"]
    elif n.kind == "duration":
        number: dict[str, Any] = {"type": "number"}
        if n.minimum == 0:
            number["minimum"] = 0
        else:
            number["exclusiveMinimum"] = 0
        out["anyOf"] = [number, {"type": "string", "pattern": _DURATION}, {"type": "string", "pattern": _ENV_PATTERN}]
    else:  # pragma: no cover - a new kind must be handled here
        raise ValueError(f"unknown node kind {n.kind}")
    return out


def json_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


# -- the configuration reference ------------------------------------------------------------------
def _type(n: Node) -> str:
    return n.type_text or {"object": "mapping", "duration": "duration"}.get(n.kind, n.kind)


def _sections(n: Node, path: str) -> Iterator[tuple[str, Node]]:
    yield path, n
    for f in n.fields:
        child = f.node
        sub = f"{path}.{f.name}" if path else f.name
        if child.kind == "object":
            yield from _sections(child, sub)
        elif child.kind in ("map", "list") and child.values is not None and child.values.kind == "object":
            key = f"{sub}.NAME" if child.kind == "map" else f"{sub}[]"
            if child.values is BUILD and sub != "images":
                continue  # external_images.NAME.build is images.NAME again
            yield from _sections(child.values, key)


def markdown() -> str:
    lines = [
        "# suite.yaml reference",
        "",
        "<!-- Generated from kubetest_infra/schema.py by `kti schema --format markdown`; a unit test keeps it",
        "     in step. Edit the schema, not this file. -->",
        "",
        "A suite is one `suite.yaml`: its Kind cluster, the images it builds, the services it deploys. `kti init`",
        "writes a first one ([tutorial.md](tutorial.md)); `kti up DIR` and the pytest plugin read it. Every",
        "problem of the file is reported at once, each naming the field below and with a `Hint:`",
        "([errors.md](errors.md)); then preflight checks what the files it names hold.",
        "",
        "- **Paths.** Build contexts and mount host paths are relative to the directory of the suite file;",
        "  `dockerfile` to its context; manifests as said under `services.NAME.manifests`.",
        "- **`${env:NAME}`, `${env:NAME:-default}`** in any string are read from the environment (a variable",
        "  set to nothing counts as unset), else from the lab settings file ([labs.md](labs.md)); an unset",
        "  variable without a default is an error naming the field.",
        "- **Durations**: seconds (`120`, `2.5`) or a number with a unit `ms`, `s`, `m`, `h` (`30s`, `5m`,",
        "  `1m30s`).",
        "- **Mappings, not lists**: `images`, `external_images`, `services` and `build_args` are keyed by",
        "  name. A key written twice is an error (YAML would keep the second silently).",
        "- **Editor completion**: the JSON Schema [suite.schema.json](suite.schema.json) (`kti schema` prints",
        "  it). With the YAML language server (VS Code's YAML extension), put the line",
        "  `# yaml-language-server: $schema=PATH/suite.schema.json` at the top of the file.",
        "",
    ]
    for path, n in _sections(SUITE, ""):
        title = path or "top level"
        lines += [f"## `{title}`" if path else "## Top level", ""]
        if n.one_of:
            lines += [f"At most one of {', '.join(f'`{f}`' for f in n.one_of)}.", ""]
        if n.exactly_one:
            lines += [f"Exactly one of {', '.join(f'`{f}`' for f in n.exactly_one)}.", ""]
        lines += ["| field | type | required / default | meaning |", "|---|---|---|---|"]
        for f in n.fields:
            need = "**required**" if f.required else (f.default or "none")
            doc = f.doc.replace("|", "\\|")
            lines.append(f"| `{f.name}` | {_type(f.node)} | {need} | {doc} |")
        lines.append("")
    lines += ["## Every field in one file", "", "```yaml", EXAMPLE.rstrip(), "```", ""]
    return "\n".join(lines)
