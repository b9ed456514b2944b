"""kti init: the files it writes, their validity (suite.yaml loads, preflight passes, the JSON Schema
accepts it), what it reads from the Dockerfile, and that it never overwrites anything."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from kubetest_infra import cli, schema
from kubetest_infra.errors import ConfigError
from kubetest_infra.preflight import check_suite, planned_refs
from kubetest_infra.render import load_manifests, render
from kubetest_infra.scaffold import init, suite_name
from kubetest_infra.suite import load_suite

PYTHON_SERVICE = """\
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}
COPY app.py /app.py
EXPOSE 8000/tcp
CMD ["python3", "/app.py"]
"""


def _service(tmp_path: Path, dockerfile: str = PYTHON_SERVICE, name: str = "hello") -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "Dockerfile").write_text(dockerfile)
    (d / "app.py").write_text("print('hi')\n")
    return d


def test_init_writes_a_valid_suite(tmp_path: Path) -> None:
    d = _service(tmp_path)
    made = init(d)
    assert sorted(p.relative_to(d).as_posix() for p in made.files) == [
        "conftest.py", "manifests/hello.yaml", "suite.yaml", "test_hello.py"]
    assert all(p.is_file() for p in made.files)
    suite = load_suite(d, env={"PYTHON_IMAGE": "kti-base/python:x"})
    assert (suite.name, suite.cluster.name, suite.namespace) == ("hello", "kti-hello", "hello")
    assert [(p.container_port, p.host_port) for p in suite.cluster.port_mappings] == [(30080, 38080)]
    assert dict(suite.images["hello"].build_args) == {"BASE_IMAGE": "kti-base/python:x"}
    assert load_suite(d, env={}).images["hello"].build_args["BASE_IMAGE"] == "python:3.12-slim"
    assert suite.cluster.node_image is None  # ${env:KTI_NODE_IMAGE:-}: kind's default without the lab
    svc = suite.services["hello"]
    assert svc.http is not None
    assert (svc.http.port, svc.http.path, svc.timeout) == (38080, "/", 120.0)
    plan = check_suite(suite, "run1")
    assert plan.references["hello"] == {"hello"}
    assert not list(Draft202012Validator(schema.json_schema()).iter_errors(yaml.safe_load((d / "suite.yaml")
                                                                                          .read_text())))
    objs, srcs = load_manifests(svc.manifests)
    rendered = render(objs, srcs, planned_refs(suite, "run1"), namespace="hello")
    deployment = next(o for o in rendered.objects if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "localhost/hello:hello-run1"
    assert container["ports"] == [{"containerPort": 8000}]  # from EXPOSE
    service = next(o for o in rendered.objects if o["kind"] == "Service")
    assert service["spec"]["ports"] == [{"port": 8000, "targetPort": 8000, "nodePort": 30080}]
    for py in (d / "conftest.py", d / "test_hello.py"):
        ast.parse(py.read_text())
    assert made.notes == ()


def test_options_and_notes(tmp_path: Path) -> None:
    d = _service(tmp_path, "FROM python:3.12-slim\nCMD [\"python3\", \"-m\", \"http.server\"]\n", "My_Web")
    made = init(d, host_port=38555, node_port=30555, cluster="kti-other", path="/healthz")
    assert made.name == suite_name(d) == "my-web"
    assert made.url == "http://127.0.0.1:38555"
    assert made.container_port == 8080
    suite = load_suite(d, env={})
    assert suite.cluster.name == "kti-other"
    assert suite.services["my-web"].http.path == "/healthz"  # type: ignore[union-attr]
    assert "build_args" not in (d / "suite.yaml").read_text()
    assert any("no EXPOSE" in n for n in made.notes)
    assert any("FROM python:3.12-slim is pulled from a registry" in n for n in made.notes)
    assert (d / "test_my_web.py").is_file()


def test_never_overwrites(tmp_path: Path) -> None:
    d = _service(tmp_path)
    (d / "conftest.py").write_text("# mine\n")
    with pytest.raises(ConfigError, match=r"would overwrite .*conftest.py; nothing was written"):
        init(d)
    assert (d / "conftest.py").read_text() == "# mine\n"
    assert sorted(p.name for p in d.iterdir()) == ["Dockerfile", "app.py", "conftest.py"]


def test_an_invalid_result_is_removed_again(tmp_path: Path) -> None:
    d = _service(tmp_path, "FROM ${UNDECLARED}\n")  # preflight: FROM uses an ARG not declared
    with pytest.raises(ConfigError, match="UNDECLARED"):
        init(d)
    assert sorted(p.name for p in d.iterdir()) == ["Dockerfile", "app.py"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"host_port": 80}, "--host-port 80 is out of range"),
    ({"node_port": 8080}, "--node-port 8080 is out of range"),
    ({"name": "Bad_Name"}, "invalid suite name"),
    ({"path": "healthz"}, "is not an HTTP path"),
])
def test_bad_options(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    d = _service(tmp_path)
    with pytest.raises(ConfigError, match=message):
        init(d, **kwargs)
    assert sorted(p.name for p in d.iterdir()) == ["Dockerfile", "app.py"]


def test_a_directory_without_dockerfile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["init", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Dockerfile not found" in err
    assert "Hint:" in err
    assert list(tmp_path.iterdir()) == []


def test_cli_prints_what_it_wrote_and_what_next(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _service(tmp_path)
    assert cli.main(["init", str(d), "--host-port", "38556"]) == 0
    out, err = capsys.readouterr()
    assert f"wrote {d / 'suite.yaml'}" in out
    assert "kti up ." in err
    assert "http://127.0.0.1:38556" in err
