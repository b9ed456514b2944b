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


def test_the_chart_and_overlay_suites_load_with_their_sources() -> None:
    helm = load_suite(ROOT / "suites" / "datastorage-helm", env={})
    spec = helm.services["datastorage"].helm
    assert spec is not None and helm.services["datastorage"].source == "helm"
    assert spec.chart == ROOT / "examples" / "charts" / "datastorage"
    assert spec.release == "datastorage", "the release defaults to the service name"
    assert spec.values == (ROOT / "suites" / "datastorage-helm" / "values.yaml",)
    assert spec.set == {"image.repository": "${image.repository:datastorage}", "image.tag": "${image.tag:datastorage}"}
    assert helm.services["postgres"].source == "manifests"
    overlay = load_suite(ROOT / "suites" / "datastorage-kustomize", env={})
    assert overlay.services["datastorage"].kustomize == ROOT / "examples" / "kustomize" / "datastorage"
    assert overlay.services["datastorage"].manifests == ()
    names = {load_suite(ROOT / "suites" / n, env={}).cluster.name for n in ("datastorage", "datastorage-helm",
                                                                            "datastorage-kustomize")}
    assert len(names) == 3, "each suite has its own cluster"


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


@pytest.mark.parametrize(("text", "seconds"), [("30", 30.0), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0),
                                               ("1m30s", 90.0), ("500ms", 0.5), ("2.5", 2.5)])
def test_timeouts_take_seconds_or_units(tmp_path: Path, text: str, seconds: float) -> None:
    body = BASE.replace("depends_on: [a],", f"depends_on: [a], timeout: '{text}',")
    suite = load_suite(write(tmp_path, body), env={})
    assert suite.services["b"].timeout == seconds


def test_plain_numbers_and_env_in_timeouts(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, BASE.replace("depends_on: [a],", "depends_on: [a], timeout: 90,")), env={})
    assert suite.services["b"].timeout == 90.0
    body = BASE.replace("depends_on: [a],", "depends_on: [a], timeout: '${env:T:-2m}',")
    assert load_suite(write(tmp_path, body), env={}).services["b"].timeout == 120.0
    assert load_suite(write(tmp_path, body), env={"T": "45s"}).services["b"].timeout == 45.0


def test_port_defaults_protocol_case_and_mounts(tmp_path: Path) -> None:
    body = BASE.replace("host_port: 38080}]", "host_port: 38080}, {container_port: 30053, host_port: 38053, "
                                              "protocol: udp, listen_address: 0.0.0.0}], "
                                              "mounts: [{host_path: ../../ctx, container_path: /data, "
                                              "read_only: true}]")
    suite = load_suite(write(tmp_path, body), env={})
    first, second = suite.cluster.port_mappings
    assert (first.listen_address, first.protocol) == ("127.0.0.1", "TCP")
    assert (second.listen_address, second.protocol) == ("0.0.0.0", "UDP")
    mount = suite.cluster.mounts[0]
    assert mount.host_path == str((tmp_path / "ctx").resolve()), "host paths are relative to the suite file"
    assert mount.read_only is True


def test_an_explicit_namespace_lets_the_name_keep_its_underscore(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, BASE.replace("name: s\n", "name: my_suite\nnamespace: my-suite\n")), env={})
    assert (suite.name, suite.namespace) == ("my_suite", "my-suite")


def test_problems_are_values_naming_file_and_field(tmp_path: Path) -> None:
    body = BASE.replace("path: /readyz", "path: readyz").replace("host_port: 38080}", "host_port: 38080, protocol: x}")
    with pytest.raises(SuiteError) as info:
        load_suite(write(tmp_path, body), env={})
    fields = sorted(p.field for p in info.value.problems)
    assert fields == ["cluster.ports[0].protocol", "services.b.ready.http.path"]
    assert all(p.file.endswith("suite.yaml") and p.hint for p in info.value.problems)
