"""Engine logic on recorded CLI output (the real engine is exercised in tests/integration)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetest_infra.engine import BuildRequest, Engine, get_engine
from kubetest_infra.errors import EngineUnavailableError, UnknownEngineError
from tests.fakes import RecordingRunner


def docker(buildkit: bool) -> tuple[Engine, RecordingRunner]:
    runner = RecordingRunner().on(["docker", "info"], stdout="20.10.24|/var/lib/docker")
    runner.on(["docker", "buildx", "version"], returncode=0 if buildkit else 1)
    return Engine("docker", runner), runner


REQ = BuildRequest(context="/ctx", dockerfile="/ctx/Dockerfile", tags=("localhost/a:s-r",),
                   build_args={"B": "2", "A": "1"}, labels={"k": "v"}, target="t", no_cache=True,
                   iidfile="/tmp/iid")


def test_classic_builder_argv() -> None:
    engine, _ = docker(buildkit=False)
    assert engine.build_argv(REQ) == [
        "build", "-f", "/ctx/Dockerfile", "-t", "localhost/a:s-r", "--build-arg", "A=1", "--build-arg", "B=2",
        "--label", "k=v", "--target", "t", "--no-cache", "--iidfile", "/tmp/iid", "--force-rm", "/ctx",
    ]
    assert engine.build_env() == {"DOCKER_BUILDKIT": "0"}


def test_buildkit_argv_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_BUILDKIT", raising=False)
    engine, _ = docker(buildkit=True)
    assert "--force-rm" not in engine.build_argv(REQ)
    assert engine.build_env() == {"DOCKER_BUILDKIT": "1"}


def test_podman_argv() -> None:
    runner = RecordingRunner().on(["podman", "info"], stdout="5.0.0|/var/lib/containers/storage")
    argv = Engine("podman", runner).build_argv(REQ)
    assert argv[0] == "build" and "--layers" in argv and "--force-rm" not in argv


def test_daemon_down_becomes_engine_unavailable() -> None:
    runner = RecordingRunner().on(
        ["docker", "info"], returncode=1,
        stderr="Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?")
    with pytest.raises(EngineUnavailableError, match="Hint: start the engine"):
        Engine("docker", runner).info()


def test_unknown_engine() -> None:
    with pytest.raises(UnknownEngineError, match="unknown container engine 'rkt'") as info:
        get_engine("rkt", RecordingRunner())
    assert "Hint:" in str(info.value)


def test_autodetect_reports_every_problem() -> None:
    runner = RecordingRunner().on(["docker", "info"], returncode=1, stderr="Cannot connect to the Docker daemon")
    runner.on(["podman", "info"], returncode=125, stderr="Cannot connect to Podman")
    with pytest.raises(EngineUnavailableError, match=r"docker: .*podman: "):
        get_engine("auto", runner)


def test_inspect_parses_labels_and_keeps_found_images_when_one_is_missing() -> None:
    raw = [{"Id": "sha256:abc", "RepoTags": ["localhost/a:t"], "Config": {"Labels": {"x": "1"}},
            "Created": "2026-01-01T00:00:00.123456789Z", "Size": 10,
            "Metadata": {"LastTagTime": "2026-01-02T00:00:00Z"}}]
    runner = RecordingRunner()
    # recorded from docker 20.10: found images on stdout, exit 1, the missing one on stderr
    runner.on(["docker", "image", "inspect", "localhost/a:t", "missing:1"], returncode=1, stdout=json.dumps(raw),
              stderr="Error response from daemon: no such image: missing:1: No such image: missing:1")
    runner.on(["docker", "image", "inspect", "localhost/a:t"], stdout=json.dumps(raw))
    runner.on(["docker", "image", "inspect", "missing:1"], returncode=1, stderr="Error: No such image: missing:1")
    infos = Engine("docker", runner).inspect_images(["localhost/a:t", "missing:1"])
    assert len(infos) == 1
    assert infos[0].labels == {"x": "1"} and infos[0].last_tag_time.startswith("2026-01-02")


def test_inspect_podman_style_failure_falls_back_per_ref() -> None:
    raw = [{"Id": "sha256:abc", "RepoTags": ["localhost/a:t"], "Labels": {"y": "2"}}]
    runner = RecordingRunner()
    runner.on(["podman", "image", "inspect", "localhost/a:t", "missing:1"], returncode=125,
              stderr="Error: missing:1: image not known")
    runner.on(["podman", "image", "inspect", "localhost/a:t"], stdout=json.dumps(raw))
    runner.on(["podman", "image", "inspect", "missing:1"], returncode=125, stderr="Error: missing:1: image not known")
    infos = Engine("podman", runner).inspect_images(["localhost/a:t", "missing:1"])
    assert [i.labels for i in infos] == [{"y": "2"}]


def test_secret_build_args_travel_in_the_environment_not_argv() -> None:
    engine, _ = docker(buildkit=False)
    req = BuildRequest(context="/c", dockerfile="/c/D", tags=("a:b",), build_args={"DB_PASSWORD": "hunter2", "X": "1"})
    argv = engine.build_argv(req)
    assert "DB_PASSWORD" in argv and "X=1" in argv
    assert not any("hunter2" in a for a in argv)
    assert engine.build_env(req)["DB_PASSWORD"] == "hunter2"


def test_doctor_warns_about_low_inotify_limits(tmp_path: Path) -> None:
    from kubetest_infra.doctor import inotify

    (tmp_path / "max_user_instances").write_text("128\n")
    (tmp_path / "max_user_watches").write_text("524288\n")
    check = inotify(tmp_path)
    assert not check.ok
    assert not check.required
    assert "max_user_instances = 128 (want 512)" in check.detail
    assert "sysctl -w fs.inotify.max_user_instances=512" in check.hint
    (tmp_path / "max_user_instances").write_text("1024\n")
    assert inotify(tmp_path).ok


def test_doctor_reports_the_tools_the_library_would_use(tmp_path: Path) -> None:
    """$KTI_KIND/$KTI_KUBECTL/$KTI_HELM win over PATH, each with its version; a missing one has its hint."""
    from kubetest_infra.doctor import _tool

    helm = tmp_path / "helm-v3.16.3"
    helm.write_text("#!/bin/sh\n")
    helm.chmod(0o755)
    runner = RecordingRunner().on([str(helm), "version", "--short"], stdout="v3.16.3+g\n")
    check = _tool(runner, "helm", ["version", "--short"], variable="KTI_HELM", hint="install helm",
                  env={"KTI_HELM": str(helm), "PATH": ""})
    assert check.ok and check.detail == f"{helm} ($KTI_HELM): v3.16.3+g"
    missing = _tool(runner, "helm", ["version"], variable="KTI_HELM", hint="install helm", env={"PATH": str(tmp_path)})
    assert not missing.ok
    assert missing.detail == "not found on PATH ($KTI_HELM not set)" and missing.hint == "install helm"
    helm.chmod(0o644)
    broken = _tool(runner, "helm", ["version"], variable="KTI_HELM", hint="h", env={"KTI_HELM": str(helm)})
    assert not broken.ok and "is not an executable file" in broken.detail
