"""The bad-input catalogue: one test per row of the table in docs/errors.md.

The table is the single list: this module reads it, runs the case of the same id, and asserts the
exception type, the message excerpt (which names the field), the ``Hint:`` excerpt, that the file
the user wrote is named, and that nothing was left behind — no process started (``subprocess`` is
blocked; cleanup cases get a :class:`RecordingRunner` that answers read-only queries and records any
removal), ``KTI_STATE_DIR`` and ``KTI_CACHE_DIR`` stay empty, and the workspace holds exactly what it
held before. A row without a case, or a case without a row, fails :func:`test_every_row_has_a_case`.
Rows whose exception is ``—`` are inputs that used to go wrong silently and must now be accepted
correctly; their case asserts the outcome.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kubetest_infra.build import LABEL_CONSUMER, LABEL_MANAGED, LABEL_RUN
from kubetest_infra.cleanup import parse_age, remove_run_images
from kubetest_infra.engine import Engine
from kubetest_infra.errors import KtiError
from kubetest_infra.preflight import Plan, check_suite
from kubetest_infra.sources import Tools
from kubetest_infra.suite import Suite, load_suite
from tests.fakes import RecordingRunner

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
RUN = "run1"
ACCEPTED = "—"


@dataclass(frozen=True)
class Row:
    id: str
    input: str
    exception: str
    message: str
    hint: str


def read_catalogue(path: Path = DOC) -> list[Row]:
    """The rows between the catalogue markers of docs/errors.md."""
    text = path.read_text()
    body = text.split("<!-- catalogue:start -->", 1)[1].split("<!-- catalogue:end -->", 1)[0]
    rows: list[Row] = []
    for line in body.splitlines():
        if not line.startswith("| `") or set(line) <= set("|-: "):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        assert len(cells) == 5, f"docs/errors.md catalogue row needs 5 cells: {line}"
        rows.append(Row(*(_code(c) for c in cells[:1]), cells[1], *(_code(c) for c in cells[2:])))
    return rows


def _code(cell: str) -> str:
    """The text of a `code` cell (docs escape | as \\|)."""
    cell = cell.strip()
    if cell.startswith("`") and cell.endswith("`"):
        cell = cell[1:-1]
    return cell.replace("\\|", "|")


# -- the workspace every case edits -----------------------------------------------------------
SUITE = """\
name: s
cluster:
  name: kti-s
  ports:
    - {container_port: 30080, host_port: 38080}
images:
  app:
    context: ../../ctx
external_images:
  db:
    ref: docker.io/library/postgres:16
    env: KTI_DB_IMAGE
services:
  db:
    manifests: [s/db.yaml]
  web:
    manifests: [s/web.yaml]
    depends_on: [db]
    ready: {http: {port: 38080, path: /readyz}}
    timeout: 2m
"""

WEB = """\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 8080, nodePort: 30080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: ${image:app}
"""

DB = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: db}
spec:
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - name: db
        image: ${image:db}
"""

DOCKERFILE = """\
FROM busybox:1.36 AS build
RUN true
FROM busybox:1.36 AS final
COPY hello.txt /hello.txt
"""

CHART = {
    "chart/Chart.yaml": "apiVersion: v2\nname: web\nversion: 0.1.0\nappVersion: \"0.1.0\"\n",
    "chart/values.yaml": "image:\n  repository: localhost/app\n  tag: \"0.1.0\"\n",
    "chart/templates/web.yaml": WEB.replace("${image:app}",
                                            "\"{{ .Values.image.repository }}:{{ .Values.image.tag }}\""),
}
WEB_HELM = """\
  web:
    helm:
      chart: ../../chart
      set: {image.repository: "${image.repository:app}", image.tag: "${image.tag:app}"}
"""
# What helm v3.16.3 answered for the chart above (`helm template web ./chart --namespace s --include-crds
# --skip-tests --values -`), recorded: the unit tier runs no helm (tests/kind/test_sources.py runs it).
HELM_DEFAULT_TAG = """---
# Source: web/templates/web.yaml
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 8080, nodePort: 30080}]
---
# Source: web/templates/web.yaml
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: "localhost/app:0.1.0"
"""
HELM_PARSE_ERROR = """Error: parse error at (web/templates/web.yaml:19): function "nope" not defined

Use --debug flag to render out invalid YAML
"""
OVERLAY = {
    "kustomize/base/kustomization.yaml": "resources: [web.yaml]\n",
    "kustomize/base/web.yaml": WEB,
    "kustomize/overlay/kustomization.yaml": "resources: [../base]\n",
}


@dataclass
class Workspace:
    root: Path
    euid: int = 1000  # an ordinary user, whoever runs the tests
    env: dict[str, str] = field(default_factory=dict)
    names: str | None = "suite.yaml"  # the file the error must name (None: not about a file)
    runner: RecordingRunner | None = None
    tools: Tools | None = None  # how charts and overlays render (None: the machine's helm and kubectl)
    changes: list[tuple[str, ...]] = field(default_factory=list)  # commands beyond read-only queries

    def create(self) -> None:
        self.write("suites/s/suite.yaml", SUITE)
        self.write("manifests/s/web.yaml", WEB)
        self.write("manifests/s/db.yaml", DB)
        self.write("ctx/Dockerfile", DOCKERFILE)
        self.write("ctx/hello.txt", "hello\n")

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def edit(self, rel: str, old: str, new: str) -> None:
        path = self.root / rel
        text = path.read_text()
        assert old in text, f"{old!r} not in {rel}"
        path.write_text(text.replace(old, new, 1))

    def suite(self, old: str, new: str) -> None:
        self.edit("suites/s/suite.yaml", old, new)

    def load(self) -> Suite:
        return load_suite(self.root / "suites" / "s", env=self.env)

    def preflight(self) -> Plan:
        """What `kti up` does before it starts anything: read the suite, then preflight."""
        suite = self.load()
        return check_suite(suite, RUN, euid=self.euid, unprivileged_port_start=1024, env=self.env, tools=self.tools)

    def chart(self, helm_answer: tuple[int, str, str] | None = (0, HELM_DEFAULT_TAG, "")) -> None:
        """Service web from a chart; ``helm template`` answered by a recording runner (None: no helm at all)."""
        for rel, text in CHART.items():
            self.write(rel, text)
        self.suite("  web:\n    manifests: [s/web.yaml]\n", WEB_HELM)
        if helm_answer is None:
            self.tools = Tools(env={"PATH": str(self.root / "ctx")})  # a PATH without helm
            return
        code, out, err = helm_answer
        self.runner = RecordingRunner().on(["/opt/helm", "template"], code, out.replace("0.1.0", "s-run1"), err)
        self.tools = Tools(self.runner, helm_path="/opt/helm")

    def overlay(self, kubectl: bool = True) -> None:
        """Service web from a Kustomize overlay (cases that never reach kubectl)."""
        for rel, text in OVERLAY.items():
            self.write(rel, text)
        self.suite("  web:\n    manifests: [s/web.yaml]\n", "  web:\n    kustomize: ../../kustomize/overlay\n")
        self.tools = Tools(RecordingRunner(), kubectl_path="/opt/kubectl") if kubectl else \
            Tools(env={"PATH": str(self.root / "ctx")})

    def engine(self, images: list[dict[str, Any]]) -> Engine:
        """An engine whose runner answers the image listing and inspection, and records everything."""
        self.runner = RecordingRunner()
        self.runner.on(["docker", "image", "ls"], stdout="\n".join(i["Id"] for i in images))
        self.runner.on(["docker", "image", "inspect"], stdout=json.dumps(images))
        self.names = None
        return Engine("docker", self.runner)


def image(tags: list[str], consumer: str, run: str, n: int = 1) -> dict[str, Any]:
    return {"Id": f"sha256:{n:064x}", "RepoTags": tags,
            "Config": {"Labels": {LABEL_MANAGED: "true", LABEL_CONSUMER: consumer, LABEL_RUN: run}}}


# -- the cases, by catalogue id -----------------------------------------------------------------
Action = Callable[[], object]
Case = Callable[[Workspace], Action]  # sets the bad input up, returns what a user would run
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        assert name not in CASES, name
        CASES[name] = fn
        return fn
    return register


def suite_case(name: str, old: str, new: str) -> None:
    """A case that edits suite.yaml once, then runs preflight."""
    def setup(ws: Workspace) -> Action:
        ws.suite(old, new)
        return ws.preflight
    case(name)(setup)


# suite.yaml
suite_case("images-as-list", "images:\n  app:\n    context: ../../ctx",
           "images:\n  - name: app\n    context: ../../ctx")
suite_case("services-as-list", "services:\n  db:\n    manifests: [s/db.yaml]\n  web:\n",
           "services:\n  - name: db\n    manifests: [s/db.yaml]\n  - name: web\n")
suite_case("build-args-as-list", "context: ../../ctx", "context: ../../ctx\n    build_args: [BASE=busybox]")
suite_case("timeout-in-words", "timeout: 2m", "timeout: 5 minutes")
suite_case("timeout-zero", "timeout: 2m", "timeout: 0")
suite_case("protocol-invalid", "host_port: 38080}", "host_port: 38080, protocol: HTTP}")
suite_case("read-only-quoted", "  ports:",
           "  mounts: [{host_path: ../../ctx, container_path: /data, read_only: \"false\"}]\n  ports:")
suite_case("http-path-no-slash", "path: /readyz", "path: readyz")
suite_case("http-path-is-url", "path: /readyz", "path: http://127.0.0.1:38080/readyz")
suite_case("http-status-invalid", "path: /readyz}", "path: /readyz, status: 2000}")
suite_case("ready-port-is-nodeport", "port: 38080, path", "port: 30080, path")
suite_case("ready-port-unmapped", "port: 38080, path", "port: 9999, path")
suite_case("ready-http-and-tcp", "ready: {http: {port: 38080, path: /readyz}}",
           "ready: {http: {port: 38080, path: /readyz}, tcp: 38080}")
suite_case("suite-name-underscore", "name: s\n", "name: my_suite\n")
suite_case("suite-name-invalid", "name: s\n", "name: My Suite\n")
suite_case("namespace-invalid", "name: s\n", "name: s\nnamespace: Team_A\n")
suite_case("host-port-out-of-range", "host_port: 38080", "host_port: 70000")
suite_case("container-port-zero", "container_port: 30080", "container_port: 0")
suite_case("host-port-quoted", "host_port: 38080", "host_port: '38080'")
suite_case("host-port-twice", "    - {container_port: 30080, host_port: 38080}",
           "    - {container_port: 30080, host_port: 38080}\n    - {container_port: 30081, host_port: 38080}")
suite_case("listen-address-hostname", "host_port: 38080}", "host_port: 38080, listen_address: localhost}")
suite_case("container-path-relative", "  ports:", "  mounts: [{host_path: ../../ctx, container_path: data}]\n  ports:")
suite_case("cluster-name-invalid", "name: kti-s", "name: kti_s")
suite_case("workers-negative", "name: kti-s", "name: kti-s\n  workers: -1")
suite_case("kubeadm-patch-not-yaml", "name: kti-s", "name: kti-s\n  kubeadm_patches: [\"kind: [unclosed\"]")
suite_case("service-declared-twice", "  web:\n", "  db:\n    manifests: [s/db.yaml]\n  web:\n")
suite_case("field-typo", "context: ../../ctx", "context: ../../ctx\n    dockerfle: Dockerfile")
suite_case("context-missing", "context: ../../ctx", "context: ../../ctxx")
suite_case("env-unset", "context: ../../ctx", "context: ../../ctx\n    build_args: {BASE: \"${env:KTI_NOT_SET}\"}")
suite_case("image-built-and-external", "external_images:\n  db:", "external_images:\n  app:\n    ref: x/app:1\n  db:")
suite_case("external-untagged", "ref: docker.io/library/postgres:16", "ref: postgres")
suite_case("external-latest", "ref: docker.io/library/postgres:16", "ref: postgres:latest")
suite_case("external-env-is-a-value", "env: KTI_DB_IMAGE", "env: postgres:16")
suite_case("depends-on-unknown", "depends_on: [db]", "depends_on: [dbb]")
suite_case("depends-on-cycle", "    manifests: [s/db.yaml]\n", "    manifests: [s/db.yaml]\n    depends_on: [web]\n")
suite_case("service-name-invalid", "  web:\n", "  Web_1:\n")
suite_case("manifest-missing", "[s/web.yaml]", "[s/wb.yaml]")
suite_case("manifests-a-string", "manifests: [s/web.yaml]", "manifests: s/web.yaml")


@case("manifests-empty-directory")
def _empty_dir(ws: Workspace) -> Action:
    (ws.root / "manifests" / "empty").mkdir()
    ws.suite("[s/db.yaml]", "[empty]")
    return ws.preflight


@case("malformed-yaml")
def _malformed(ws: Workspace) -> Action:
    ws.suite("depends_on: [db]", "depends_on: [db")
    return ws.preflight


@case("several-problems-at-once")
def _several(ws: Workspace) -> Action:
    ws.suite("timeout: 2m", "timeout: 5 minutes")
    ws.suite("path: /readyz", "path: readyz")
    ws.suite("host_port: 38080}", "host_port: 38080, protocol: http}")
    return ws.preflight


# preflight: images
suite_case("dockerfile-typo", "context: ../../ctx", "context: ../../ctx\n    dockerfile: Dockerfle")


@case("dockerfile-missing")
def _no_dockerfile(ws: Workspace) -> Action:
    (ws.root / "ctx" / "Dockerfile").rename(ws.root / "ctx" / "Containerfile.prod")
    return ws.preflight


@case("dockerfile-unreadable")
def _unreadable_dockerfile(ws: Workspace) -> Action:
    (ws.root / "ctx" / "Dockerfile").chmod(0o600)  # owned by whoever runs the tests, not by uid 1000
    return ws.preflight


@case("dockerfile-without-from")
def _no_from(ws: Workspace) -> Action:
    ws.write("ctx/Dockerfile", "RUN true\n")
    return ws.preflight


@case("dockerfile-refused-by-builders")
def _bad_directive(ws: Workspace) -> Action:
    ws.write("ctx/Dockerfile", "# escape=x\nFROM busybox:1.36\n")
    return ws.preflight


suite_case("target-unknown", "context: ../../ctx", "context: ../../ctx\n    target: prod")


@case("from-arg-without-value")
def _from_arg(ws: Workspace) -> Action:
    ws.write("ctx/Dockerfile", "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY hello.txt /\n")
    return ws.preflight


@case("from-arg-undeclared")
def _from_undeclared(ws: Workspace) -> Action:
    ws.write("ctx/Dockerfile", "FROM ${BASE_IMAGE}\nCOPY hello.txt /\n")
    ws.suite("context: ../../ctx", "context: ../../ctx\n    build_args: {BASE_IMAGE: busybox:1.36}")
    return ws.preflight


@case("context-file-unreadable")
def _unreadable_file(ws: Workspace) -> Action:
    (ws.root / "ctx" / "hello.txt").chmod(0o600)
    return ws.preflight


@case("context-all-ignored")
def _all_ignored(ws: Workspace) -> Action:
    ws.write("ctx/.dockerignore", "*\n")
    return ws.preflight


@case("override-not-a-reference")
def _override(ws: Workspace) -> Action:
    ws.env["KTI_DB_IMAGE"] = "Postgres 16"
    ws.names = "$KTI_DB_IMAGE"
    return ws.preflight


@case("override-latest")
def _override_latest(ws: Workspace) -> Action:
    ws.env["KTI_DB_IMAGE"] = "postgres:latest"
    ws.names = "$KTI_DB_IMAGE"
    return ws.preflight


# preflight: host


@case("privileged-host-port")
def _privileged(ws: Workspace) -> Action:
    ws.suite("host_port: 38080}", "host_port: 80}")
    ws.suite("port: 38080, path", "port: 80, path")
    return ws.preflight


suite_case("mount-host-path-missing", "  ports:",
           "  mounts: [{host_path: ../../data, container_path: /data}]\n  ports:")


# preflight: manifests
@case("manifest-malformed")
def _manifest_malformed(ws: Workspace) -> Action:
    ws.edit("manifests/s/web.yaml", "metadata: {name: web}\nspec:\n  type", "metadata: {name: web\nspec:\n  type")
    return ws.preflight


@case("manifest-duplicate-key")
def _manifest_dupe(ws: Workspace) -> Action:
    ws.edit("manifests/s/web.yaml", "        image: ${image:app}\n",
            "        image: ${image:app}\n        image: busybox:1.36\n")
    return ws.preflight


@case("manifest-not-an-object")
def _not_object(ws: Workspace) -> Action:
    ws.write("manifests/s/db.yaml", "- just\n- a list\n")
    return ws.preflight


@case("manifest-without-kind")
def _no_kind(ws: Workspace) -> Action:
    ws.edit("manifests/s/db.yaml", "kind: Deployment\n", "")
    return ws.preflight


@case("generate-name")
def _generate_name(ws: Workspace) -> Action:
    ws.edit("manifests/s/db.yaml", "metadata: {name: db}", "metadata: {generateName: db-}")
    return ws.preflight


@case("manifests-hold-nothing")
def _nothing(ws: Workspace) -> Action:
    ws.write("manifests/s/db.yaml", "# the db comes later\n---\n")
    return ws.preflight


@case("namespace-differs")
def _namespace(ws: Workspace) -> Action:
    ws.edit("manifests/s/db.yaml", "metadata: {name: db}", "metadata: {name: db, namespace: other}")
    return ws.preflight


@case("namespace-object")
def _namespace_object(ws: Workspace) -> Action:
    ws.edit("manifests/s/db.yaml", "apiVersion: apps/v1",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: extra}\n---\napiVersion: apps/v1")
    return ws.preflight


@case("object-in-two-services")
def _two_services(ws: Workspace) -> Action:
    ws.write("manifests/s/web.yaml", WEB + "---\n" + DB)
    return ws.preflight


@case("placeholder-unknown")
def _placeholder(ws: Workspace) -> Action:
    ws.edit("manifests/s/db.yaml", "${image:db}", "${image:postgres}")
    return ws.preflight


@case("reference-not-built")
def _drift(ws: Workspace) -> Action:
    ws.edit("manifests/s/web.yaml", "${image:app}", "localhost/app:s-1884d074")
    return ws.preflight


@case("reference-latest")
def _latest(ws: Workspace) -> Action:
    ws.edit("manifests/s/web.yaml", "        image: ${image:app}\n",
            "        image: ${image:app}\n      - {name: sidecar, image: \"busybox:latest\"}\n")
    return ws.preflight


@case("node-port-not-exposed")
def _node_port(ws: Workspace) -> Action:
    ws.edit("manifests/s/web.yaml", "nodePort: 30080", "nodePort: 30090")
    return ws.preflight


@case("placeholder-in-a-comment")
def _comment(ws: Workspace) -> Action:
    ws.edit("manifests/s/db.yaml", "        image: ${image:db}\n",
            "        image: ${image:db}\n        # was: image: ${image:postgres-old}\n")

    def run() -> None:
        assert ws.preflight().references["db"] == frozenset({"db"}), "a comment is not a reference"
    return run


@case("container-name-matching")
def _name_matching(ws: Workspace) -> Action:
    ws.edit("manifests/s/web.yaml", "      - name: web\n        image: ${image:app}\n",
            "      - name: web\n        image: busybox:1.36\n      - name: app\n        image: app\n")
    ws.edit("manifests/s/db.yaml", "${image:db}", "docker.io/library/postgres")

    def run() -> None:
        plan = ws.preflight()
        assert plan.references["web"] == frozenset({"app"}), "web waits for the load of app"
        assert plan.references["db"] == frozenset({"db"}), "container db matches image db by name"
    return run


# sources: helm charts and kustomize overlays
@case("service-without-source")
def _no_source(ws: Workspace) -> Action:
    ws.suite("  db:\n    manifests: [s/db.yaml]\n", "  db:\n    depends_on: []\n")
    return ws.preflight


@case("service-two-sources")
def _two_sources(ws: Workspace) -> Action:
    for rel, text in OVERLAY.items():
        ws.write(rel, text)
    ws.suite("    manifests: [s/db.yaml]\n", "    manifests: [s/db.yaml]\n    kustomize: ../../kustomize/overlay\n")
    return ws.preflight


@case("helm-chart-missing")
def _chart_missing(ws: Workspace) -> Action:
    ws.chart()
    ws.suite("chart: ../../chart", "chart: ../../charts/web")
    return ws.preflight


@case("helm-chart-not-a-chart")
def _not_a_chart(ws: Workspace) -> Action:
    ws.chart()
    ws.suite("chart: ../../chart", "chart: ../../ctx")
    return ws.preflight


@case("helm-values-file-missing")
def _values_missing(ws: Workspace) -> Action:
    ws.chart()
    ws.suite("      chart: ../../chart\n", "      chart: ../../chart\n      values: [./values-e2e.yaml]\n")
    return ws.preflight


@case("helm-release-invalid")
def _release(ws: Workspace) -> Action:
    ws.chart()
    ws.suite("      chart: ../../chart\n", "      chart: ../../chart\n      release: Web_1\n")
    return ws.preflight


@case("helm-set-placeholder-unknown")
def _set_unknown(ws: Workspace) -> Action:
    ws.chart()
    ws.suite("${image.tag:app}", "${image.tag:web}")
    return ws.preflight


@case("helm-set-digest-of-built-image")
def _set_digest(ws: Workspace) -> Action:
    ws.chart()
    ws.suite('image.tag: "${image.tag:app}"', 'image.digest: "${image.digest:app}"')
    return ws.preflight


@case("helm-set-a-list")
def _set_list(ws: Workspace) -> Action:
    ws.chart()
    ws.suite('image.tag: "${image.tag:app}"}', 'image.tag: "${image.tag:app}", args: [a, b]}')
    return ws.preflight


@case("helm-namespace-differs")
def _helm_namespace(ws: Workspace) -> Action:
    ws.chart()
    ws.suite("      chart: ../../chart\n", "      chart: ../../chart\n      namespace: other\n")
    return ws.preflight


@case("helm-version-differs")
def _helm_version(ws: Workspace) -> Action:
    ws.chart()
    ws.suite("      chart: ../../chart\n", "      chart: ../../chart\n      version: \"0.2.0\"\n")
    return ws.preflight


@case("helm-values-malformed")
def _values_malformed(ws: Workspace) -> Action:
    ws.chart()
    ws.write("suites/s/values-e2e.yaml", "image: {tag: [unclosed\n")
    ws.suite("      chart: ../../chart\n", "      chart: ../../chart\n      values: [./values-e2e.yaml]\n")
    return ws.preflight


@case("helm-values-placeholder-unknown")
def _values_unknown(ws: Workspace) -> Action:
    ws.chart()
    ws.write("suites/s/values-e2e.yaml", "sidecar:\n  image: \"${image:proxy}\"\n")
    ws.suite("      chart: ../../chart\n", "      chart: ../../chart\n      values: [./values-e2e.yaml]\n")
    return ws.preflight


@case("helm-missing")
def _helm_missing(ws: Workspace) -> Action:
    ws.chart(helm_answer=None)
    return ws.preflight


@case("helm-template-error")
def _template_error(ws: Workspace) -> Action:
    ws.chart(helm_answer=(1, "", HELM_PARSE_ERROR))
    return ws.preflight


@case("helm-default-tag")
def _default_tag(ws: Workspace) -> Action:
    ws.chart()
    ws.suite(', image.tag: "${image.tag:app}"', "")
    assert ws.runner is not None
    ws.runner.responses.clear()
    ws.runner.on(["/opt/helm", "template"], 0, HELM_DEFAULT_TAG, "")
    return ws.preflight


@case("helm-chart-fed-the-run")
def _chart_fed(ws: Workspace) -> Action:
    ws.chart()

    def run() -> None:
        plan = ws.preflight()
        assert plan.references["web"] == frozenset({"app"}), "web waits for the load of app (its rendered ref)"
    return run


@case("kustomize-dir-missing")
def _overlay_missing(ws: Workspace) -> Action:
    ws.overlay()
    ws.suite("kustomize: ../../kustomize/overlay", "kustomize: ../../kustomize/overlays/e2e")
    return ws.preflight


@case("kustomize-no-kustomization")
def _no_kustomization(ws: Workspace) -> Action:
    ws.overlay()
    ws.suite("kustomize: ../../kustomize/overlay", "kustomize: ../../ctx")
    return ws.preflight


@case("kustomize-base-missing")
def _base_missing(ws: Workspace) -> Action:
    ws.overlay()
    ws.write("kustomize/overlay/kustomization.yaml", "resources: [../bases/web]\n")
    return ws.preflight


@case("kubectl-missing")
def _kubectl_missing(ws: Workspace) -> Action:
    ws.overlay(kubectl=False)
    return ws.preflight



# cleanup
@case("clean-run-id-ambiguous")
def _ambiguous(ws: Workspace) -> Action:
    engine = ws.engine([image(["localhost/app:ds-build-1"], "ds", "build-1", 1),
                        image(["localhost/app:ds-build-2"], "ds-build", "2", 2)])
    return lambda: remove_run_images(engine, "1")


@case("clean-run-id-is-a-tag")
def _whole_tag(ws: Workspace) -> Action:
    engine = ws.engine([image(["localhost/app:ds-3f9a1c07b2d4"], "ds", "3f9a1c07b2d4")])
    return lambda: remove_run_images(engine, "ds-3f9a1c07b2d4")


@case("clean-run-id-invalid")
def _invalid_run(ws: Workspace) -> Action:
    engine = ws.engine([])
    return lambda: remove_run_images(engine, "../1")


@case("clean-run-1-keeps-build-1")
def _keeps_build_1(ws: Workspace) -> Action:
    engine = ws.engine([image(["localhost/app:ds-build-1", "localhost/app:ds-1"], "ds", "build-1")])
    assert ws.runner is not None
    ws.runner.on(["docker", "image", "rm"])
    ws.changes = [("docker", "image", "rm", "localhost/app:ds-1")]

    def run() -> None:
        assert remove_run_images(engine, "1").removed == ("localhost/app:ds-1",)
    return run


@case("gc-age-without-unit")
def _gc_age(ws: Workspace) -> Action:
    ws.names = None
    return lambda: parse_age("7")


# -- the tests ----------------------------------------------------------------------------------
ROWS = read_catalogue()


def test_every_row_has_a_case() -> None:
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids)), "a catalogue id is used twice"
    assert set(ids) == set(CASES), f"rows without a case: {set(ids) - set(CASES)}; cases without a row: " \
                                   f"{set(CASES) - set(ids)}"
    assert sum(r.exception != ACCEPTED for r in ROWS) >= 30


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mode, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _no_process(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError(f"a process was started: {args[0] if args else kwargs}")


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state, cache, tmp = tmp_path / "state", tmp_path / "cache", tmp_path / "tmp"
    state.mkdir()
    cache.mkdir()
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("KTI_STATE_DIR", str(state))
    monkeypatch.setenv("KTI_CACHE_DIR", str(cache))
    monkeypatch.setattr(subprocess, "run", _no_process)
    monkeypatch.setattr(subprocess, "Popen", _no_process)
    ws = Workspace(tmp_path / "ws")
    ws.create()
    action = CASES[row.id](ws)
    before = _tree(ws.root)

    if row.exception == ACCEPTED:
        action()
    else:
        with pytest.raises(KtiError) as info:
            action()
        exc = info.value
        text = str(exc)
        assert type(exc).__name__ == row.exception, text
        assert row.message in text, text
        hints = [line.strip()[len("Hint: "):] for line in text.splitlines() if line.strip().startswith("Hint: ")]
        assert any(row.hint in h for h in hints), f"hint {row.hint!r} not in {hints}"
        if ws.names is not None:
            assert ws.names in text, f"{ws.names} not named: {text}"

    assert list(state.iterdir()) == [], "something was written to KTI_STATE_DIR"
    assert list(cache.iterdir()) == [], "something was written to KTI_CACHE_DIR"
    assert list(tmp.iterdir()) == [], "a temp file or directory was left behind"
    assert _tree(ws.root) == before, "the workspace changed"
    if ws.runner is not None:
        read_only = (("image", "ls"), ("image", "inspect"), ("template",), ("kustomize",))
        changes = [c for c in ws.runner.calls if c[1:3] not in read_only and c[1:2] not in read_only]
        assert changes == ws.changes, f"commands beyond read-only queries: {changes}"
