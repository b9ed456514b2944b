"""sources.py without helm or kubectl: argv, parsing of their output, values, charts read from disk,
overlays walked, tools found, and drift traced to a values key. Rendering is answered by a recording
runner (the real helm and kubectl run in the kind tier, tests/kind/test_sources.py)."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetest_infra import sources
from kubetest_infra.errors import CommandError
from kubetest_infra.render import DriftError
from kubetest_infra.runner import CommandResult
from kubetest_infra.sources import Capabilities, SourceError, ToolNotFoundError, Tools
from kubetest_infra.suite import HelmSource, load_suite
from tests.fakes import RecordingRunner

CHART_YAML = "apiVersion: v2\nname: web\nversion: 0.1.0\nappVersion: \"2.0.0\"\n"
VALUES = "image:\n  repository: localhost/app\n  tag: \"0.1.0\"\nservice:\n  nodePort: 30080\n"
RENDERED = """---
# Source: web/templates/service.yaml
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {type: NodePort, selector: {app: web}, ports: [{port: 80, nodePort: 30080}]}
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
      containers: [{name: web, image: "IMAGE"}]
---
# Source: web/templates/web.yaml
apiVersion: v1
kind: ConfigMap
metadata: {name: web-extra}
---
# Source: web/templates/migrate.yaml
apiVersion: batch/v1
kind: Job
metadata:
  name: migrate
  annotations: {"helm.sh/hook": "pre-install,pre-upgrade", "helm.sh/hook-weight": "-5"}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: m, image: "IMAGE"}]
---
# Source: web/templates/tests/smoke.yaml
apiVersion: v1
kind: Pod
metadata:
  name: smoke
  annotations: {"helm.sh/hook": "test"}
spec:
  containers: [{name: t, image: busybox}]
"""
SUITE = """\
name: s
cluster:
  name: kti-s
  node_image: kti-lab/node:v1.33.1-16808a2f4bd8
  ports: [{container_port: 30080, host_port: 38080}]
images:
  app: {context: ./ctx}
services:
  web:
    helm:
      chart: ./chart
      values: [./values.yaml]
      set:
        image.repository: "${image.repository:app}"
        image.tag: "${image.tag:app}"
        replicas: 2
    ready: {http: {port: 38080, path: /}}
"""
REFS = {"app": "localhost/app:s-run1"}


def write(root: Path, files: Mapping[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    write(tmp_path, {"ctx/Dockerfile": "FROM busybox:1.36\n", "chart/Chart.yaml": CHART_YAML,
                     "chart/values.yaml": VALUES, "chart/templates/web.yaml": "# templates\n",
                     "values.yaml": "service:\n  nodePort: 30080\n", "suite.yaml": SUITE})
    return tmp_path


def helm_tools(stdout: str = RENDERED.replace("IMAGE", REFS["app"]), code: int = 0, stderr: str = "") -> Tools:
    """Tools whose helm answers ``helm template`` with recorded output."""
    return Tools(RecordingRunner().on(["/x/helm", "template"], code, stdout, stderr), helm_path="/x/helm")


def test_helm_argv_renders_offline_with_the_clusters_capabilities() -> None:
    spec = HelmSource(Path("/c/web"), "rel")
    argv = sources.helm_argv("helm", spec, "ns", Capabilities("v1.33.1", ("apps/v1", "apps/v1/Deployment", "v1")))
    assert argv == ["helm", "template", "rel", "/c/web", "--namespace", "ns", "--include-crds", "--skip-tests",
                    "--values", "-", "--kube-version", "v1.33.1", "--api-versions", "apps/v1,apps/v1/Deployment,v1"]
    assert "--kube-version" not in sources.helm_argv("helm", spec, "ns", Capabilities())


@pytest.mark.parametrize(("image", "version"), [
    ("kti-lab/node:v1.33.1-16808a2f4bd8", "v1.33.1"), ("kindest/node:v1.31.0@sha256:" + "b" * 64, "v1.31.0"),
    ("registry:5000/kindest/node:v1.29.2", "v1.29.2"), ("node:latest", None), (None, None), ("", None)])
def test_the_kube_version_of_a_node_image(image: str | None, version: str | None) -> None:
    assert Capabilities.of_node_image(image).kube_version == version


def test_helm_output_becomes_objects_with_their_template_file_and_document_index() -> None:
    objs, srcs = sources.split_rendered(RENDERED, lambda p: f"/c/{p}")
    assert [o["kind"] for o in objs] == ["Service", "Deployment", "ConfigMap", "Job", "Pod"]
    assert [str(s) for s in srcs][:3] == ["/c/web/templates/service.yaml (document 1)",
                                          "/c/web/templates/web.yaml (document 1)",
                                          "/c/web/templates/web.yaml (document 2)"]


def test_kustomize_images_give_each_name_the_runs_reference() -> None:
    refs = {"app": "localhost/app:s-run1", "db": "docker.io/library/postgres:16@sha256:" + "c" * 64}
    assert sources.kustomize_images(refs) == [
        {"name": "app", "newName": "localhost/app", "newTag": "s-run1"},
        {"name": "db", "newName": "docker.io/library/postgres", "digest": "sha256:" + "c" * 64}]


def tgz(path: Path, files: Mapping[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for rel, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_chart_is_read_from_a_directory_or_a_package_with_its_subcharts_values(tmp_path: Path) -> None:
    files = {"web/Chart.yaml": CHART_YAML, "web/values.yaml": VALUES,
             "web/charts/db/values.yaml": "image: {tag: \"9\"}\n", "web/templates/x.yaml": "{{ bad"}
    package = sources.read_chart(tgz(tmp_path / "web-0.1.0.tgz", files))
    write(tmp_path / "dir", files)
    directory = sources.read_chart(tmp_path / "dir" / "web")
    for chart in (package, directory):
        assert (chart.name, chart.version, chart.app_version) == ("web", "0.1.0", "2.0.0")
        assert [layer.prefix for layer in chart.layers] == ["", "db"], "the chart's own values first"
        assert chart.layers[1].values == {"image": {"tag": "9"}}
    assert [layer.label for layer in package.layers] == [f"{tmp_path}/web-0.1.0.tgz:values.yaml",
                                                         f"{tmp_path}/web-0.1.0.tgz:charts/db/values.yaml"]
    assert directory.layers[0].label == str(tmp_path / "dir" / "web" / "values.yaml")
    with pytest.raises(sources.ManifestError, match=r"holds no Chart\.yaml"):
        sources.read_chart(tgz(tmp_path / "empty.tgz", {"web/values.yaml": VALUES}))


def test_values_files_then_set_in_order_and_every_problem_named(ws: Path) -> None:
    spec = HelmSource(ws / "chart", "web", (ws / "values.yaml",),
                      {"image.tag": "${image.tag:app}", "list[1]": "x", "flag": True})
    vals = sources.values_document("suite.yaml", "services.web.helm", spec, REFS)
    assert vals.doc == {"service": {"nodePort": 30080}, "image": {"tag": "s-run1"}, "list": [None, "x"],
                        "flag": True}
    assert vals.fed == frozenset({"image.tag"})
    assert vals.problems == ()
    (ws / "values.yaml").write_text("image: {repository: \"${image.repository:nope}\"}\nimage: {}\n")
    (ws / "more.yaml").write_text("sidecar: \"${image.digest:app}\"\n")
    spec = HelmSource(ws / "chart", "web", (ws / "values.yaml", ws / "more.yaml"), {"a..b": "1"})
    problems = sources.values_document("suite.yaml", "services.web.helm", spec, REFS).problems
    assert [p.field for p in problems] == ["services.web.helm.values[0]", "services.web.helm.values[1]",
                                           "services.web.helm.set.a..b"]
    assert "is written twice" in problems[0].message
    assert "sidecar: ${image.digest:app}: localhost/app:s-run1 carries no digest" in problems[1].message


def test_load_renders_the_chart_keeps_run_hooks_and_drops_test_hooks(ws: Path) -> None:
    suite = load_suite(ws / "suite.yaml")
    tools = helm_tools()
    loaded = sources.load(suite, suite.services["web"], REFS, tools=tools)
    assert [o["kind"] for o in loaded.objects] == ["Service", "Deployment", "ConfigMap", "Job"]
    assert [h.events if h else None for h in loaded.hooks] == [None, None, None, ("pre-install", "pre-upgrade")]
    assert any("Pod/smoke: a test hook, which kti never runs" in w for w in loaded.warnings)
    (argv,) = tools.runner.calls  # type: ignore[attr-defined]
    assert argv[:4] == ("/x/helm", "template", "web", str(ws / "chart"))
    assert argv[argv.index("--kube-version") + 1] == "v1.33.1", "the node image's version when no cluster is known"
    assert loaded.release == "web" and loaded.field == "services.web.helm"


class StdinRunner(RecordingRunner):
    """Also keeps what each command got on stdin."""

    def __init__(self) -> None:
        super().__init__()
        self.stdin: list[bytes | None] = []

    def run(self, argv: Sequence[str], *, input: bytes | None = None, **kw: Any) -> CommandResult:
        self.stdin.append(input)
        assert kw.get("verbatim_stdout"), "rendered manifests are data: never redacted"
        return super().run(argv, input=input, **kw)


def test_values_reach_helm_on_stdin_never_in_argv(ws: Path) -> None:
    suite = load_suite(ws / "suite.yaml")
    runner = StdinRunner().on(["/x/helm"], 0, RENDERED.replace("IMAGE", REFS["app"]))
    sources.load(suite, suite.services["web"], REFS, tools=Tools(runner, helm_path="/x/helm"))
    assert not any("s-run1" in a for a in runner.calls[0])
    assert yaml.safe_load(runner.stdin[0] or b"") == {"service": {"nodePort": 30080},
                                                      "image": {"repository": "localhost/app", "tag": "s-run1"},
                                                      "replicas": 2}


def test_a_chart_default_tag_is_traced_to_its_values_key(ws: Path) -> None:
    (ws / "suite.yaml").write_text(SUITE.replace('        image.tag: "${image.tag:app}"\n', ""))
    suite = load_suite(ws / "suite.yaml")
    loaded = sources.load(suite, suite.services["web"], REFS,
                          tools=helm_tools(RENDERED.replace("IMAGE", "localhost/app:0.1.0")))
    with pytest.raises(DriftError) as info:
        loaded.render(REFS)
    text = str(info.value)
    assert "localhost/app:0.1.0 is a local reference this run did not build or load; this run built " \
           "localhost/app:s-run1" in text
    assert f"image.tag = 0.1.0 ({ws / 'chart' / 'values.yaml'})" in text
    assert "image.repository = localhost/app (services.web.helm.set)" in text
    assert 'set: {image.tag: "${image.tag:app}"}' in info.value.hint, "the fed repository is not suggested again"


def test_an_app_version_default_is_named_when_no_values_key_holds_the_tag(ws: Path) -> None:
    suite = load_suite(ws / "suite.yaml")
    loaded = sources.load(suite, suite.services["web"], REFS,
                          tools=helm_tools(RENDERED.replace("IMAGE", "localhost/app:2.0.0")))
    with pytest.raises(DriftError) as info:
        loaded.render(REFS)
    assert "appVersion = 2.0.0 (Chart.yaml, the usual default of an empty tag)" in str(info.value)


def test_a_helm_failure_is_a_problem_on_the_chart_with_helms_message(ws: Path) -> None:
    suite = load_suite(ws / "suite.yaml")
    stderr = 'Error: parse error at (web/templates/web.yaml:3): function "nope" not defined\n'
    with pytest.raises(SourceError) as info:
        sources.load(suite, suite.services["web"], REFS, tools=helm_tools("", 1, stderr))
    (problem,) = info.value.problems
    assert problem.field == "services.web.helm.chart"
    assert 'function "nope" not defined' in problem.message
    assert "fix the chart at the file and line helm names" in problem.hint


def test_tools_come_from_their_variable_or_path_and_are_refused_with_a_hint(tmp_path: Path) -> None:
    tool = tmp_path / "bin" / "helm"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert Tools(env={"PATH": str(tool.parent)}).helm() == str(tool)
    assert Tools(env={"KTI_HELM": str(tool), "PATH": ""}).helm() == str(tool)
    with pytest.raises(ToolNotFoundError) as info:
        Tools(env={"PATH": str(tmp_path)}).helm()
    assert "helm not found on PATH" in str(info.value) and "go install helm.sh/helm/v3/cmd/helm" in info.value.hint
    tool.chmod(0o644)
    with pytest.raises(ToolNotFoundError, match="is not an executable file"):
        Tools(env={"KTI_HELM": str(tool)}).helm()
    with pytest.raises(ToolNotFoundError) as info:
        Tools(env={"PATH": str(tmp_path)}).kubectl()
    assert "KTI_KUBECTL" in info.value.hint


OVERLAY = {
    "base/kustomization.yaml": "resources: [web.yaml]\n",
    "base/web.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n",
    "common/patch.yaml": "- {op: add, path: /metadata/labels, value: {a: b}}\n",
    "overlay/kustomization.yaml": 'resources: [../base, "https://github.com/x/y//z?ref=v1"]\n'
                                  "patches: [{path: ../common/patch.yaml, target: {kind: Deployment}}]\n",
}


def test_an_overlay_is_walked_into_its_bases_and_the_files_it_names(tmp_path: Path) -> None:
    write(tmp_path, OVERLAY)
    svc = load_suite_with(tmp_path, "kustomize: ./overlay")
    assert {str(p.relative_to(tmp_path)) for p in sources.input_files(svc)} == set(OVERLAY)
    assert sources.overlay_problems(tmp_path / "overlay") == [], "a remote base is not checked offline"


def test_a_charts_inputs_are_its_files_and_the_values_files(ws: Path) -> None:
    suite = load_suite(ws / "suite.yaml")
    assert {str(p.relative_to(ws)) for p in sources.input_files(suite.services["web"])} == {
        "chart/Chart.yaml", "chart/values.yaml", "chart/templates/web.yaml", "values.yaml"}


def test_missing_bases_and_plain_directories_are_found_without_kubectl(tmp_path: Path) -> None:
    write(tmp_path, {**OVERLAY, "overlay/kustomization.yaml": "resources: [../nope, ../common]\n"})
    found = sources.overlay_problems(tmp_path / "overlay")
    assert [m.split(": ", 1)[1] for m, _ in found] == [
        f"resources[0] '../nope' does not exist ({tmp_path / 'nope'})",
        "resources[1] '../common' is a directory without a kustomization.yaml"]


def load_suite_with(root: Path, service: str) -> Any:
    (root / "ctx").mkdir(exist_ok=True)
    (root / "ctx" / "Dockerfile").write_text("FROM busybox:1.36\n")
    (root / "suite.yaml").write_text(f"name: s\ncluster: {{name: kti-s}}\nimages: {{app: {{context: ./ctx}}}}\n"
                                     f"services:\n  web: {{{service}}}\n")
    return load_suite(root / "suite.yaml").services["web"]


class KustomizeRunner(RecordingRunner):
    """Answers ``kubectl kustomize DIR`` and keeps the kustomization kti wrote there."""

    def __init__(self, stdout: str) -> None:
        super().__init__()
        self.stdout = stdout
        self.wrapper: dict[str, Any] = {}
        self.dirs: list[str] = []

    def run(self, argv: Sequence[str], **kw: Any) -> CommandResult:
        assert kw.get("verbatim_stdout"), "rendered manifests are data: never redacted"
        self.calls.append(tuple(argv))
        self.dirs.append(argv[-1])
        self.wrapper = yaml.safe_load((Path(argv[-1]) / "kustomization.yaml").read_text())
        if "nope" in self.stdout:
            raise CommandError(tuple(argv), 1, "", "error: accumulating resources from "
                               f"'{self.wrapper['resources'][0]}': {argv[-1]}/x: no such file")
        return CommandResult(tuple(argv), 0, self.stdout, "", 0.0)


def test_an_overlay_gets_the_runs_references_through_kustomizes_images_and_the_temp_dir_goes(tmp_path: Path) -> None:
    write(tmp_path, OVERLAY)
    svc = load_suite_with(tmp_path, "kustomize: ./overlay")
    suite = load_suite(tmp_path / "suite.yaml")
    built = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n"
    runner = KustomizeRunner(built)
    loaded = sources.load(suite, svc, REFS, tools=Tools(runner, kubectl_path="/x/kubectl"))
    assert [o["kind"] for o in loaded.objects] == ["Deployment"]
    assert runner.calls[0][:2] == ("/x/kubectl", "kustomize")
    assert runner.wrapper["images"] == [{"name": "app", "newName": "localhost/app", "newTag": "s-run1"}]
    assert Path(runner.dirs[0], runner.wrapper["resources"][0]).resolve() == tmp_path / "overlay"
    assert not Path(runner.dirs[0]).exists(), "the throw-away kustomization is removed"
    failing = KustomizeRunner("nope")
    with pytest.raises(SourceError) as info:
        sources.load(suite, svc, REFS, tools=Tools(failing, kubectl_path="/x/kubectl"))
    message = info.value.problems[0].message
    assert str(tmp_path / "overlay") in message and failing.dirs[0] not in message, message
    assert not Path(failing.dirs[0]).exists()


def test_the_field_of_an_object_names_the_source() -> None:
    from kubetest_infra.render import Source
    from kubetest_infra.suite import Service

    plain = Service("web", (Path("/m/a.yaml"), Path("/m/dir")))
    assert sources.field_of(plain, Source("/m/dir/x.yaml", 0)) == "services.web.manifests[1]"
    assert sources.field_of(Service("web", (), helm=HelmSource(Path("/c"), "web"))) == "services.web.helm"
    assert sources.field_of(Service("web", (), kustomize=Path("/o")), Source("/o (kustomize)", 0)) == \
        "services.web.kustomize"


def test_cluster_capabilities_list_group_versions_and_kinds_as_helm_does() -> None:
    class Res:
        def __init__(self, gv: str, kind: str) -> None:
            self.group_version, self.kind = gv, kind

    class Discovery:
        def search(self) -> list[Res]:
            return [Res("v1", "Pod"), Res("v1", "PodList"), Res("apps/v1", "Deployment"), Res("apps/v1", "Deployment")]

    class Dynamic:
        resources = Discovery()

    class Version:
        git_version = "v1.33.1+k3s"

    import kubernetes.client

    original = kubernetes.client.VersionApi
    kubernetes.client.VersionApi = lambda api: type("V", (), {"get_code": lambda self, **kw: Version()})()  # type: ignore[assignment,misc]
    try:
        caps = sources.cluster_capabilities(object(), Dynamic())
    finally:
        kubernetes.client.VersionApi = original  # type: ignore[misc]
    assert caps == Capabilities("v1.33.1", ("apps/v1", "apps/v1/Deployment", "v1", "v1/Pod"))


def test_no_temp_dir_or_file_is_left_by_a_failed_chart(ws: Path, tmp_path: Path) -> None:
    before = set(os.listdir(tmp_path))
    suite = load_suite(ws / "suite.yaml")
    with pytest.raises(SourceError):
        sources.load(suite, suite.services["web"], REFS, tools=helm_tools("", 1, "Error: x"))
    assert set(os.listdir(tmp_path)) == before
