"""Helm charts and Kustomize overlays on a real cluster, with the real helm and kubectl (issue 11).

- refused before anything starts (run through ``kti up`` itself): a chart's default tag left in
  values.yaml, a template syntax error, a missing values file, an overlay's missing base, no helm —
  typed errors with hints, and clusters, containers, our images and state exactly as before;
- a small busybox suite whose ``web`` service is a chart (pre-install hooks of two weights, one
  ``hook-succeeded``, a post-install hook) and whose ``side`` service is an overlay writing
  ``image: web`` (kustomize's own ``images:`` gives it the run's reference): hooks in order and waited
  for, delete policies honoured, a warm re-run with no rebuild, no reload, no rollout and no hook run,
  a changed image re-running the hooks and rolling out, a failing ``hook-failed`` hook removed;
- the DataStorage chart suite warm: no rebuild, no reload, no rollout, migrations not run again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from conftest import lab_kind_binary, lab_node_image
from kubetest_infra.apply import Applier
from kubetest_infra.cluster import KindClusters
from kubetest_infra.engine import Engine, get_engine
from kubetest_infra.graph import GraphError
from kubetest_infra.kube import api_client
from kubetest_infra.load import LoadedImage, Loader
from kubetest_infra.session import Session
from kubetest_infra.sources import Tools
from kubetest_infra.state import Environment
from kubetest_infra.suite import load_suite
from kubetest_infra.wait import PodStartError

pytestmark = [pytest.mark.kind]
ROOT = Path(__file__).resolve().parents[2]
CLUSTER = os.environ.get("KTI_SOURCES_CLUSTER", "kti-sources")
PORT = int(os.environ.get("KTI_SOURCES_HOSTPORT", "38098"))
NODE_PORT = 30098
KTI = [sys.executable, "-m", "kubetest_infra.cli"]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return get_engine()


@pytest.fixture(scope="module", autouse=True)
def tools() -> None:
    """helm and kubectl are part of the kind tier: missing, they fail it (never a skip)."""
    Tools().helm()
    Tools().kubectl()


def snapshot(engine: Engine, state: Path) -> dict[str, Any]:
    """What exists: Kind clusters, containers, images of ours, state files."""
    def lines(*argv: str) -> list[str]:
        return sorted(subprocess.run(argv, check=True, capture_output=True, text=True).stdout.split())

    files = sorted(str(p.relative_to(state)) for p in state.rglob("*") if p.is_file() and p.suffix != ".lock"
                   and not p.name.endswith(".holder")) if state.exists() else []
    return {"clusters": lines(lab_kind_binary() or "kind", "get", "clusters"),
            "containers": lines(engine.name, "ps", "-a", "--format", "{{.Names}}"),
            "images": lines(engine.name, "images", "--filter", "label=io.kubetest-infra.managed=true",
                            "--format", "{{.ID}}:{{.Repository}}:{{.Tag}}"),
            "state": files}


# -- refused before anything starts --------------------------------------------------------------------
DS_SUITE = (ROOT / "suites" / "datastorage-helm" / "suite.yaml").read_text()


def ds_copy(tmp: Path) -> Path:
    """suites/datastorage-helm in a scratch directory (its own cluster name), with a copy of the chart."""
    suite = tmp / "suites" / "ds"
    suite.mkdir(parents=True)
    shutil.copytree(ROOT / "examples" / "charts" / "datastorage", tmp / "chart")
    shutil.copytree(ROOT / "manifests" / "datastorage", tmp / "manifests" / "datastorage")
    (suite / "values.yaml").write_text((ROOT / "suites" / "datastorage-helm" / "values.yaml").read_text())
    text = DS_SUITE.replace("../../examples/charts/datastorage", "../../chart").replace(
        "name: kti-ds-helm", f"name: {CLUSTER}-refused").replace("../../examples/datastorage",
                                                                 str(ROOT / "examples" / "datastorage"))
    text = text.replace("../../images/", str(ROOT / "images") + "/")
    (suite / "suite.yaml").write_text(text)
    return suite


def kti_up(suite: Path, state: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "KTI_STATE_DIR": str(state), **(env or {})}
    return subprocess.run([*KTI, "up", str(suite)], capture_output=True, text=True, env=full, timeout=300,
                          cwd=ROOT, check=False)


def default_tag(suite: Path) -> dict[str, str]:
    text = (suite / "suite.yaml").read_text()
    (suite / "suite.yaml").write_text(text.replace('        image.tag: "${image.tag:datastorage}"\n', ""))
    return {}


def syntax_error(suite: Path) -> dict[str, str]:
    job = suite.parents[1] / "chart" / "templates" / "migrations-job.yaml"
    job.write_text(job.read_text().replace("{{ .Values.migrations.backoffLimit }}",
                                           "{{ .Values.migrations.backoffLimit | nope }}"))
    return {}


def values_missing(suite: Path) -> dict[str, str]:
    (suite / "values.yaml").unlink()
    return {}


def base_missing(suite: Path) -> dict[str, str]:
    overlay = suite.parents[1] / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text("resources: [../manifests/datastorage-base]\n")
    text = (suite / "suite.yaml").read_text()
    start = text.index("  datastorage:\n    helm:")
    end = text.index("    depends_on: [postgres, redis]")
    (suite / "suite.yaml").write_text(text[:start] + "  datastorage:\n    kustomize: ../../overlay\n" + text[end:])
    return {}


def helm_missing(suite: Path) -> dict[str, str]:
    bare = suite.parents[1] / "bin"
    bare.mkdir()
    for tool in ("docker", "kind", "kubectl"):
        found = shutil.which(tool)
        if found:
            (bare / tool).symlink_to(found)
    return {"KTI_HELM": "", "PATH": str(bare)}


REFUSALS = {
    "default-tag": (default_tag, ["localhost/datastorage:0.1.0 is a local reference this run did not build or load",
                                  "this run built localhost/datastorage:datastorage-helm-",
                                  "image.tag = 0.1.0 (", "/chart/values.yaml)"],
                    'set: {image.tag: "${image.tag:datastorage}"}'),
    "syntax-error": (syntax_error, ["services.datastorage.helm.chart: helm template could not render",
                                    'function "nope" not defined', "migrations-job.yaml"],
                     "fix the chart at the file and line helm names above"),
    "values-missing": (values_missing, ["services.datastorage.helm.values[0]:", "values.yaml does not exist"],
                       "services.datastorage.helm.values[0] is relative to the suite file"),
    "base-missing": (base_missing, ["services.datastorage.kustomize:",
                                    "resources[0] '../manifests/datastorage-base' does not exist"],
                     "fix resources[0] in"),
    "helm-missing": (helm_missing, ["services.datastorage.helm: helm not found on PATH"],
                     "go install helm.sh/helm/v3/cmd/helm@v3.16.3"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_before_anything_starts(case: str, tmp_path: Path, engine: Engine) -> None:
    break_it, fragments, hint = REFUSALS[case]
    suite = ds_copy(tmp_path)
    env = break_it(suite)
    state = tmp_path / "state"
    before = snapshot(engine, state)
    result = kti_up(suite, state, env)
    assert result.returncode != 0
    text = result.stderr
    for fragment in fragments:
        assert fragment in text, text
    assert f"Hint: {hint}" in text or hint in text.split("Hint:", 1)[-1], text
    assert "Traceback" not in text, text
    assert snapshot(engine, state) == before, "something was created or removed"


# -- the busybox suite: a chart and an overlay, hooks, warm re-runs --------------------------------------
DOCKERFILE = """ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY index.html /w/index.html
CMD ["httpd", "-f", "-p", "8080", "-h", "/w"]
"""
CHART = {
    "Chart.yaml": "apiVersion: v2\nname: web\nversion: 0.1.0\nappVersion: \"0.1.0\"\n",
    "values.yaml": textwrap.dedent("""\
        image: {repository: localhost/web, tag: "0.1.0"}
        nodePort: 30080
        failCheck: false
        """),
    "templates/hooks.yaml": textwrap.dedent("""\
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: settings
          annotations: {"helm.sh/hook": "pre-install,pre-upgrade", "helm.sh/hook-weight": "-10"}
        data: {greeting: hello}
        ---
        apiVersion: batch/v1
        kind: Job
        metadata:
          name: prepare
          annotations: {"helm.sh/hook": "pre-install,pre-upgrade", "helm.sh/hook-weight": "-5",
                        "helm.sh/hook-delete-policy": "hook-succeeded"}
        spec:
          backoffLimit: 0
          template:
            spec:
              restartPolicy: Never
              containers:
              - name: prepare
                image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
                command: ["sh", "-c", "test \\"$GREETING\\" = hello"]
                env: [{name: GREETING, valueFrom: {configMapKeyRef: {name: settings, key: greeting}}}]
        ---
        apiVersion: batch/v1
        kind: Job
        metadata:
          name: migrate
          annotations: {"helm.sh/hook": "pre-install,pre-upgrade"}
        spec:
          backoffLimit: 0
          template:
            spec:
              restartPolicy: Never
              containers:
              - name: migrate
                image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
                command: ["sh", "-c", "sleep 2; echo migrated"]
        {{- if .Values.failCheck }}
        ---
        apiVersion: batch/v1
        kind: Job
        metadata:
          name: check
          annotations: {"helm.sh/hook": "pre-install,pre-upgrade", "helm.sh/hook-weight": "5",
                        "helm.sh/hook-delete-policy": "hook-failed"}
        spec:
          backoffLimit: 0
          template:
            spec:
              restartPolicy: Never
              containers:
              - name: check
                image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
                command: ["sh", "-c", "echo check-failed-marker; exit 3"]
        {{- end }}
        ---
        apiVersion: batch/v1
        kind: Job
        metadata:
          name: notify
          annotations: {"helm.sh/hook": "post-install,post-upgrade"}
        spec:
          backoffLimit: 0
          template:
            spec:
              restartPolicy: Never
              containers:
              - name: notify
                image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
                command: ["sh", "-c", "wget -q -O- http://web/index.html"]
        """),
    "templates/web.yaml": textwrap.dedent("""\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web}
        spec:
          replicas: 1
          selector: {matchLabels: {app: web}}
          template:
            metadata: {labels: {app: web}}
            spec:
              containers:
              - name: web
                image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
                readinessProbe: {httpGet: {path: /index.html, port: 8080}, periodSeconds: 1}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          type: NodePort
          selector: {app: web}
          ports: [{port: 80, targetPort: 8080, nodePort: {{ .Values.nodePort }}}]
        """),
}
OVERLAY = {
    "base/kustomization.yaml": "resources: [side.yaml]\n",
    "base/side.yaml": textwrap.dedent("""\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: side}
        spec:
          replicas: 1
          selector: {matchLabels: {app: side}}
          template:
            metadata: {labels: {app: side}}
            spec:
              containers:
              - name: side
                image: web:whatever   # the overlay names the image; kustomize's images: gives the run's ref
                readinessProbe: {httpGet: {path: /index.html, port: 8080}, periodSeconds: 1}
        """),
    "overlay/kustomization.yaml": "resources: [../base]\nnamePrefix: e2e-\ncommonLabels: {tier: e2e}\n",
}
SUITE = """
name: srcs
namespace: srcs
cluster:
  name: {cluster}
  node_image: "{node_image}"
  ports: [{{container_port: {node_port}, host_port: {port}}}]
images:
  web: {{context: ./web, build_args: {{BASE_IMAGE: "{base}"}}}}
services:
  web:
    helm:
      chart: ./chart
      set: {{image.repository: "${{image.repository:web}}", image.tag: "${{image.tag:web}}", nodePort: {node_port}}}
    ready: {{http: {{port: {port}, path: /index.html}}}}
  side:
    kustomize: ./overlay
"""


def write_files(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@pytest.fixture
def world(tmp_path: Path, engine: Engine) -> Iterator[tuple[Path, KindClusters]]:
    root = tmp_path / "suite"
    write_files(root, {"web/Dockerfile": DOCKERFILE, "web/index.html": "v0\n",
                       **{f"chart/{k}": v for k, v in CHART.items()}, **OVERLAY})
    (root / "suite.yaml").write_text(SUITE.format(cluster=CLUSTER, node_image=lab_node_image() or "", port=PORT,
                                                  node_port=NODE_PORT,
                                                  base=os.environ.get("BUSYBOX_IMAGE", "busybox:1.36")))
    clusters = KindClusters(engine, state_dir=tmp_path / "state", kind_binary=lab_kind_binary())
    yield root / "suite.yaml", clusters
    if clusters.exists(CLUSTER):  # a failed test: remove what it left, by ownership records only
        Session(load_suite(root / "suite.yaml"), engine, clusters=clusters).down(force=True)


class Spy:
    """Records what the real loader and applier did during one ``up`` (they still do it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.loads: list[LoadedImage] = []
        self.applied: list[str] = []
        real_load, real_apply = Loader.load, Applier.apply

        def load(loader: Loader, *args: Any, **kwargs: Any) -> LoadedImage:
            result = real_load(loader, *args, **kwargs)
            self.loads.append(result)
            return result

        def apply(applier: Applier, objects: Any, *args: Any, **kwargs: Any) -> Any:
            self.applied += [f"{o['kind']}/{o['metadata']['name']}" for o in objects]
            return real_apply(applier, objects, *args, **kwargs)

        monkeypatch.setattr(Loader, "load", load)
        monkeypatch.setattr(Applier, "apply", apply)

    def reset(self) -> None:
        self.loads.clear()
        self.applied.clear()


def live(env: Environment) -> dict[str, Any]:
    api = api_client(env.kubeconfig)
    batch, apps, core = client.BatchV1Api(api), client.AppsV1Api(api), client.CoreV1Api(api)
    jobs = {j.metadata.name: j for j in batch.list_namespaced_job(env.namespace).items}
    deployments = {d.metadata.name: d for d in apps.list_namespaced_deployment(env.namespace).items}
    maps = {c.metadata.name: c for c in core.list_namespaced_config_map(env.namespace).items}
    return {"jobs": jobs, "deployments": deployments, "configmaps": maps}


def current_replica_set(env: Environment, deployment: str) -> Any:
    apps = client.AppsV1Api(api_client(env.kubeconfig))
    revision = apps.read_namespaced_deployment(deployment, env.namespace).metadata.annotations[
        "deployment.kubernetes.io/revision"]
    return next(rs for rs in apps.list_namespaced_replica_set(env.namespace).items
                if (rs.metadata.annotations or {}).get("deployment.kubernetes.io/revision") == revision
                and any(o.name == deployment for o in rs.metadata.owner_references or []))


def test_a_chart_and_an_overlay_hooks_in_order_policies_and_warm_re_runs(
        world: tuple[Path, KindClusters], engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    suite_file, clusters = world
    state = clusters.state_dir
    before = snapshot(engine, state)
    spy = Spy(monkeypatch)

    # 1. first up: hooks before the release (by weight), post hook after it, policies honoured
    env = Session(load_suite(suite_file), engine, clusters=clusters, command="kti up").up(keep_env=True)
    now = live(env)
    web = now["deployments"]["web"]
    assert "prepare" not in now["jobs"], "hook-succeeded: deleted once the pre-install hooks succeeded"
    migrate, notify = now["jobs"]["migrate"], now["jobs"]["notify"]
    assert migrate.status.succeeded == 1 and notify.status.succeeded == 1, "hook Jobs are waited for"
    assert migrate.status.completion_time <= web.metadata.creation_timestamp <= notify.metadata.creation_timestamp
    assert spy.applied.index("ConfigMap/settings") < spy.applied.index("Job/prepare") < \
        spy.applied.index("Job/migrate") < spy.applied.index("Deployment/web") < spy.applied.index("Job/notify")
    record = now["configmaps"]["kti-hooks-web"]
    assert set(record.data) == {"ConfigMap.settings", "Job.prepare", "Job.migrate", "Job.notify"}
    side = now["deployments"]["e2e-side"]
    assert side.spec.template.spec.containers[0].image == env.images["web"], "kustomize's images: fed the run"
    assert side.spec.template.spec.containers[0].image_pull_policy == "Never"

    # 2. warm re-run, nothing changed: no rebuild, no reload, no rollout, no hook
    spy.reset()
    warm = Session(load_suite(suite_file), engine, clusters=clusters, command="kti up").up(keep_env=True)
    after = live(warm)
    assert warm.run_id == env.run_id and warm.reused_images == ("web",), "no rebuild"
    assert {n.action for image in spy.loads for n in image.nodes} == {"present"}, "no reload"
    assert after["deployments"]["web"].metadata.generation == web.metadata.generation, "no rollout"
    assert after["deployments"]["e2e-side"].metadata.generation == side.metadata.generation
    assert not [a for a in spy.applied if a.startswith("Job/") or a == "ConfigMap/settings"], spy.applied
    assert after["jobs"]["migrate"].metadata.uid == migrate.metadata.uid
    assert after["jobs"]["notify"].metadata.uid == notify.metadata.uid
    assert after["configmaps"]["kti-hooks-web"].metadata.resource_version == record.metadata.resource_version

    # 3. a changed image: rebuilt, the hooks run again (a new Job), the release rolls out
    (suite_file.parent / "web" / "index.html").write_text("v1\n")
    spy.reset()
    changed = Session(load_suite(suite_file), engine, clusters=clusters, command="kti up").up(keep_env=True)
    third = live(changed)
    assert changed.image_ids["web"] != env.image_ids["web"]
    assert third["jobs"]["migrate"].metadata.uid != migrate.metadata.uid, "before-hook-creation: a new Job"
    new_rs = current_replica_set(changed, "web")
    assert third["jobs"]["migrate"].status.completion_time <= new_rs.metadata.creation_timestamp, \
        "the hooks ran before the release rolled out"
    assert third["deployments"]["web"].metadata.generation == web.metadata.generation + 1, "rolled out once"
    assert "Job/prepare" in spy.applied and "prepare" not in third["jobs"]
    assert third["jobs"]["notify"].metadata.uid != notify.metadata.uid

    # 4. a failing hook-failed hook: the error names it, the hook is gone, nothing was recorded for it
    text = (suite_file.parent / "chart" / "values.yaml").read_text().replace("failCheck: false", "failCheck: true")
    (suite_file.parent / "chart" / "values.yaml").write_text(text)
    with pytest.raises(GraphError) as info:
        Session(load_suite(suite_file), engine, clusters=clusters, command="kti up").up(keep_env=True)
    err = info.value.failures.get("service:web")
    assert isinstance(err, PodStartError), info.value
    assert err.target.name == "check" and "check-failed-marker" in err.logs
    failed = live(changed)
    assert "check" not in failed["jobs"], "hook-failed: deleted after it failed"
    assert "Job.check" not in failed["configmaps"]["kti-hooks-web"].data

    Session(load_suite(suite_file), engine, clusters=clusters, command="kti down").down()
    assert snapshot(engine, state) == before, "kti down removed everything the suite made, and only that"


# -- DataStorage from its chart, warm ----------------------------------------------------------------------
def test_the_datastorage_chart_suite_warm_re_run_changes_nothing(engine: Engine, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    suite_file = ROOT / "suites" / "datastorage-helm" / "suite.yaml"
    clusters = KindClusters(engine, state_dir=tmp_path / "state", kind_binary=lab_kind_binary())
    before = snapshot(engine, clusters.state_dir)
    spy = Spy(monkeypatch)
    try:
        first = Session(load_suite(suite_file), engine, clusters=clusters, command="kti up").up(keep_env=True)
        one = live(first)
        spy.reset()
        again = Session(load_suite(suite_file), engine, clusters=clusters, command="kti up").up(keep_env=True)
        two = live(again)
        assert again.run_id == first.run_id
        assert set(again.reused_images) == {"datastorage", "postgres", "redis"}, "no rebuild"
        assert {n.action for image in spy.loads for n in image.nodes} == {"present"}, "no reload"
        assert {k: d.metadata.generation for k, d in two["deployments"].items()} == \
            {k: d.metadata.generation for k, d in one["deployments"].items()}, "no rollout"
        assert two["jobs"]["datastorage-migrations"].metadata.uid == one["jobs"]["datastorage-migrations"].metadata.uid
        assert not [a for a in spy.applied if a.startswith("Job/")], "the migrations hook did not run again"
    finally:
        Session(load_suite(suite_file), engine, clusters=clusters, command="kti down").down(force=True)
    assert snapshot(engine, clusters.state_dir) == before
