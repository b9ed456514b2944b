"""The lab settings file: found from the working directory up (or $KTI_ENV_FILE), read under the
environment (a variable set even to nothing wins), used by suite.yaml's ${env:…} and the kind lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetest_infra import labenv
from kubetest_infra.cluster import KindClusters
from kubetest_infra.engine import Engine
from kubetest_infra.suite import load_suite
from tests.fakes import RecordingRunner


def _lab(root: Path) -> Path:
    (root / ".kti").mkdir(parents=True)
    path = root / ".kti" / "env"
    path.write_text("# written by hack/setup\nPYTHON_IMAGE=kti-base/python:bookworm-1\nexport KTI_KIND='/lab/kind'\n"
                    "KTI_NODE_IMAGE=\"kti-lab/node:v1\"\n\nnot a line\n")
    return path


def test_found_from_a_subdirectory_and_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _lab(tmp_path)
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.delenv("KTI_ENV_FILE")
    monkeypatch.chdir(tmp_path / "a" / "b")
    for name in ("PYTHON_IMAGE", "KTI_KIND", "KTI_NODE_IMAGE"):
        monkeypatch.delenv(name, raising=False)
    found, values = labenv.settings()
    assert found == path
    assert values == {"PYTHON_IMAGE": "kti-base/python:bookworm-1", "KTI_KIND": "/lab/kind",
                      "KTI_NODE_IMAGE": "kti-lab/node:v1"}
    assert KindClusters(Engine("docker", RecordingRunner()), state_dir=tmp_path / "state").kind == "/lab/kind"


def test_the_environment_wins_even_when_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTI_ENV_FILE", str(_lab(tmp_path)))
    monkeypatch.setenv("KTI_KIND", "")
    monkeypatch.setenv("PYTHON_IMAGE", "mine:1")
    monkeypatch.delenv("KTI_NODE_IMAGE", raising=False)
    assert labenv.get("KTI_KIND") == ""
    assert labenv.get("PYTHON_IMAGE") == "mine:1"
    assert labenv.get("KTI_NODE_IMAGE") == "kti-lab/node:v1"
    assert labenv.get("NOT_THERE", "d") == "d"


def test_kti_env_file_set_to_nothing_reads_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _lab(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KTI_ENV_FILE", "")
    assert labenv.settings() == (None, {})


def test_a_missing_or_unreadable_file_gives_nothing(tmp_path: Path) -> None:
    assert labenv.read_file(tmp_path / "absent") == {}


def test_suite_env_placeholders_read_the_lab_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTI_ENV_FILE", str(_lab(tmp_path / "lab")))
    monkeypatch.delenv("PYTHON_IMAGE", raising=False)
    monkeypatch.delenv("KTI_NODE_IMAGE", raising=False)
    (tmp_path / "ctx").mkdir()
    (tmp_path / "m.yaml").write_text("kind: Pod\n")
    (tmp_path / "suite.yaml").write_text(
        "name: s\ncluster: {name: kti-s, node_image: \"${env:KTI_NODE_IMAGE:-}\"}\n"
        "images: {app: {context: ctx, build_args: {BASE_IMAGE: \"${env:PYTHON_IMAGE}\"}}}\n"
        "services: {app: {manifests: [./m.yaml]}}\n")
    suite = load_suite(tmp_path / "suite.yaml")
    assert suite.cluster.node_image == "kti-lab/node:v1"
    assert suite.images["app"].build_args["BASE_IMAGE"] == "kti-base/python:bookworm-1"


def test_doctor_uses_kti_kind_and_kti_kubectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetest_infra.doctor import _tool, lab_settings

    kind = tmp_path / "kind-v9"
    kind.write_text("#!/bin/sh\necho kind v9.9.9\n")
    kind.chmod(0o755)
    monkeypatch.setenv("KTI_KIND", str(kind))
    runner = RecordingRunner()
    runner.on([str(kind), "version"], stdout="kind v9.9.9 go linux/amd64\n")
    check = _tool(runner, "kind", ["version"], variable="KTI_KIND", hint="install kind")
    assert check.ok
    assert check.detail == f"{kind} ($KTI_KIND): kind v9.9.9 go linux/amd64"
    monkeypatch.setenv("KTI_KUBECTL", str(tmp_path / "absent"))
    missing = _tool(runner, "kubectl", ["version"], variable="KTI_KUBECTL", hint="install kubectl")
    assert not missing.ok
    assert missing.detail == f"$KTI_KUBECTL={tmp_path / 'absent'} is not an executable file"
    monkeypatch.setenv("KTI_ENV_FILE", str(_lab(tmp_path / "lab")))
    monkeypatch.delenv("PYTHON_IMAGE", raising=False)
    assert "PYTHON_IMAGE" in lab_settings().detail
    monkeypatch.delenv("KTI_KIND")  # now only in the lab settings file: run_checks' lookup finds it there
    monkeypatch.setenv("KTI_ENV_FILE", str(tmp_path / "lab2" / ".kti" / "env"))
    (tmp_path / "lab2" / ".kti").mkdir(parents=True)
    (tmp_path / "lab2" / ".kti" / "env").write_text(f"KTI_KIND={kind}\n")
    assert _tool(runner, "kind", ["version"], variable="KTI_KIND", hint="", env=labenv.environ()).ok
