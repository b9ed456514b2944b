"""The suite.yaml schema is the one source of the parser's field sets, the configuration reference
and the JSON Schema: the generated files match it, its example (every field) loads, and the JSON
Schema accepts every suite of the repository and refuses what the parser refuses by type."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from kubetest_infra import cli, schema
from kubetest_infra.suite import SuiteError, load_suite

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "regenerate: kti schema --format markdown > docs/configuration.md; kti schema > docs/suite.schema.json"


def test_configuration_reference_is_generated_from_the_schema() -> None:
    assert (ROOT / "docs" / "configuration.md").read_text() == schema.markdown(), REGENERATE


def test_json_schema_file_is_generated_from_the_schema() -> None:
    assert (ROOT / "docs" / "suite.schema.json").read_text() == schema.json_text(), REGENERATE


def test_json_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(schema.json_schema())


def test_kti_schema_prints_both_forms(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == schema.json_schema()
    assert cli.main(["schema", "--format", "markdown"]) == 0
    assert capsys.readouterr().out == schema.markdown()


def _paths(node: schema.Node, prefix: str) -> Iterator[str]:
    for f in node.fields:
        path = f"{prefix}.{f.name}" if prefix else f.name
        yield path
        child = f.node
        if child.kind == "object":
            yield from _paths(child, path)
        elif child.values is not None and child.values.kind == "object":
            yield from _paths(child.values, path + (".*" if child.kind == "map" else "[]"))


def _present(data: Any, path: str) -> bool:
    head, _, rest = path.partition(".")
    if head == "*":
        return isinstance(data, dict) and any(_present(v, rest) if rest else True for v in data.values())
    if head.endswith("[]"):
        items = data.get(head[:-2]) if isinstance(data, dict) else None
        return isinstance(items, list) and any(_present(i, rest) for i in items)
    if not isinstance(data, dict) or head not in data:
        return False
    return _present(data[head], rest) if rest else True


def _example_workspace(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE} AS final\n")
    (tmp_path / "postgres").mkdir()
    (tmp_path / "postgres" / "Dockerfile").write_text("FROM busybox:1.36\n")
    (tmp_path / "fixtures").mkdir()
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "postgres.yaml").write_text("kind: Pod\n")
    (tmp_path / "manifests" / "shop.yaml").write_text("kind: Pod\n")
    (tmp_path / "charts" / "search" / "templates").mkdir(parents=True)
    (tmp_path / "charts" / "search" / "Chart.yaml").write_text("apiVersion: v2\nname: search\nversion: 0.1.0\n")
    (tmp_path / "search-values.yaml").write_text("image: {repository: localhost/shop}\n")
    (tmp_path / "overlays" / "cache").mkdir(parents=True)
    (tmp_path / "overlays" / "cache" / "kustomization.yaml").write_text("resources: []\n")
    path = tmp_path / "suite.yaml"
    path.write_text(schema.EXAMPLE)
    return path


def test_the_example_uses_every_field() -> None:
    data = yaml.safe_load(schema.EXAMPLE)
    missing = [p for p in _paths(schema.SUITE, "") if not _present(data, p)
               and not p.startswith("external_images.*.build.")]  # the same fields as images.*
    assert missing == []


def test_the_example_loads_and_every_field_reaches_the_suite(tmp_path: Path) -> None:
    suite = load_suite(_example_workspace(tmp_path), env={"PYTHON_IMAGE": "kti-base/python:x"})
    assert (suite.name, suite.namespace) == ("shop", "shop-e2e")
    c = suite.cluster
    assert (c.name, c.node_image, c.workers) == ("kti-shop", None, 1)
    assert [(p.container_port, p.host_port, p.listen_address, p.protocol) for p in c.port_mappings] == [
        (30080, 38080, "127.0.0.1", "TCP"), (30432, 38432, "127.0.0.1", "TCP"), (30053, 38053, "127.0.0.1", "UDP")]
    assert [(Path(m.host_path), m.container_path, m.read_only) for m in c.mounts] == [
        (tmp_path / "fixtures", "/fixtures", True)]
    assert "maxPods: 150" in c.kubeadm_patches[0]
    shop = suite.images["shop"]
    assert (shop.context, shop.dockerfile, shop.target, dict(shop.build_args)) == (
        tmp_path / "src", "Dockerfile", "final", {"BASE_IMAGE": "kti-base/python:x"})
    pg = suite.external_images["postgres"]
    assert (pg.ref, pg.env, pg.build and pg.build.context) == (
        "docker.io/library/postgres:16", "KTI_POSTGRES_IMAGE", tmp_path / "postgres")
    db, web = suite.services["postgres"], suite.services["shop"]
    assert (db.manifests, db.tcp_port, db.timeout) == ((tmp_path / "manifests" / "postgres.yaml",), 38432, 120.0)
    assert web.manifests == (tmp_path / "manifests" / "shop.yaml",)  # relative to the manifests root
    assert (web.depends_on, web.http, web.timeout, web.crash_restarts, web.stable_seconds) == (
        ("postgres",), schema_http(38080, "/readyz", 200), 90.0, 1, 5.0)
    search, cache = suite.services["search"], suite.services["cache"]
    assert search.helm is not None and search.manifests == () and search.depends_on == ("postgres",)
    h = search.helm
    assert (h.chart, h.release, h.values, dict(h.set), h.namespace, h.version) == (
        tmp_path / "charts" / "search", "search", (tmp_path / "search-values.yaml",),
        {"image.tag": "${image.tag:shop}", "replicas": 1}, "shop-e2e", "0.1.0")
    assert (cache.kustomize, cache.helm, cache.manifests) == (tmp_path / "overlays" / "cache", None, ())


def schema_http(port: int, path: str, status: int) -> Any:
    from kubetest_infra.suite import HttpCheck

    return HttpCheck(port, path, status)


def _validator() -> Draft202012Validator:
    return Draft202012Validator(schema.json_schema())


def test_every_suite_of_the_repository_and_the_example_validate() -> None:
    files = sorted(ROOT.glob("suites/*/suite.yaml"))
    assert files
    for path in files:
        errors = [e.message for e in _validator().iter_errors(yaml.safe_load(path.read_text()))]
        assert errors == [], path
    assert [e.message for e in _validator().iter_errors(yaml.safe_load(schema.EXAMPLE))] == []


@pytest.mark.parametrize(("old", "new"), [
    ("images:\n  shop:\n", "images:\n  - name: shop\n"),  # a list instead of a mapping
    ("    dockerfile: Dockerfile", "    dockerfle: Dockerfile"),  # a typo
    ("read_only: true", 'read_only: "false"'),
    ("host_port: 38080}", "host_port: 70000}"),
    ("timeout: 90s", "timeout: 5 minutes"),
    ("timeout: 90s", "timeout: 0"),
    ("ready: {tcp: 38432}", "ready: {tcp: 38432, http: {port: 38080}}"),
    ("path: /readyz", "path: readyz"),
    ("protocol: UDP", "protocol: HTTP"),
    ("name: kti-shop", "name: kti_shop"),
])
def test_the_json_schema_refuses_what_the_parser_refuses(tmp_path: Path, old: str, new: str) -> None:
    assert old in schema.EXAMPLE
    bad = schema.EXAMPLE.replace(old, new, 1)
    assert list(_validator().iter_errors(yaml.safe_load(bad))), new
    path = _example_workspace(tmp_path)
    path.write_text(bad)
    with pytest.raises(SuiteError):
        load_suite(path, env={"PYTHON_IMAGE": "x:1"})


def test_fields_names_an_object_only() -> None:
    assert schema.fields("services.*.ready.http") == ({"port", "path", "status"}, {"port"})
    with pytest.raises(ValueError, match="not an object"):
        schema.fields("services")
