"""suite.yaml validation: every error names the file and field and carries a hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetest_infra.suite import SuiteError, expand_env, load_suite

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "manifests" / "s").mkdir(parents=True, exist_ok=True)
    (tmp_path / "manifests" / "s" / "a.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
    (tmp_path / "ctx").mkdir(exist_ok=True)
    suite = tmp_path / "suites" / "s" / "suite.yaml"
    suite.parent.mkdir(parents=True, exist_ok=True)
    suite.write_text(body)
    return suite


BASE = """
name: s
cluster: {name: kti-s, ports: [{container_port: 30080, host_port: 38080}]}
images: {app: {context: ../../ctx}}
services:
  a: {manifests: [s/a.yaml]}
  b: {manifests: [s/a.yaml], depends_on: [a], ready: {http: {port: 38080, path: /readyz}}}
"""


def test_the_datastorage_suite_loads() -> None:
    suite = load_suite(ROOT / "suites" / "datastorage", env={})
    assert suite.name == "datastorage"
    assert suite.services["datastorage"].depends_on == ("migrations", "redis")
    assert set(suite.external_images) == {"postgres", "redis"}
    assert suite.cluster.port_mappings[0].host_port == 38081


def test_a_valid_suite(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, BASE), env={})
    assert suite.namespace == "s"
    assert suite.images["app"].context == (tmp_path / "ctx").resolve()
    assert suite.services["b"].http is not None
    assert suite.services["b"].http.path == "/readyz"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (BASE.replace("depends_on: [a]", "depends_on: [zz]"), "services.b.depends_on: unknown service 'zz'"),
        (BASE.replace("  a: {manifests: [s/a.yaml]}", "  a: {manifests: [s/a.yaml], depends_on: [b]}"),
         "dependency cycle"),
        (BASE.replace("s/a.yaml]}\n  b", "s/missing.yaml]}\n  b"), "services.a.manifests[0]"),
        (BASE.replace("name: s\n", "name: S!\n"), "name: invalid consumer"),
        (BASE.replace("cluster: {", "cluster: {bogus: 1, "), "cluster: unknown field(s) bogus"),
        (BASE.replace("context: ../../ctx", "context: ../../nope"), "images.app.context"),
        (BASE.replace("host_port: 38080}", "host_port: '38080'}"), "cluster.ports[0].host_port"),
        (BASE + "extra: 1\n", "unknown field(s) extra"),
        ("name: s\n", "missing field(s) cluster, services"),
        ("a: [unclosed\n", "malformed YAML"),
    ],
)
def test_errors_name_the_field(tmp_path: Path, body: str, fragment: str) -> None:
    with pytest.raises(SuiteError) as info:
        load_suite(write(tmp_path, body), env={})
    assert fragment in str(info.value)
    assert "Hint:" in str(info.value)
    assert "suite.yaml" in str(info.value)


def test_env_expansion() -> None:
    assert expand_env("${env:A}-${env:B:-dflt}", "w", {"A": "x"}) == "x-dflt"
    with pytest.raises(SuiteError, match="C is not set"):
        expand_env("${env:C}", "w", {})


def test_missing_suite_file(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="not found"):
        load_suite(tmp_path / "nope")
