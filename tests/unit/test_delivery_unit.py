"""Pure logic of registry delivery and clusters reached by kubeconfig (no engine, no cluster, no registry)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from kubetest_infra.delivery import Registry, RegistryClient, RegistryDelivery, RegistryError, parse_registry, redact
from kubetest_infra.engine import Engine
from kubetest_infra.errors import ConfigError
from kubetest_infra.remote import RemoteCluster, from_where, run_namespace, where
from kubetest_infra.render import DriftError, Source, cluster_scoped_problems, render
from tests.fakes import RecordingRunner

DIGEST = "sha256:" + "ab" * 32


def test_parse_registry() -> None:
    assert parse_registry("localhost:5001") == Registry("localhost:5001", "")
    assert parse_registry("ghcr.io/org/e2e/") == Registry("ghcr.io", "org/e2e")
    assert parse_registry("https://registry.example.com:443/x") == Registry("registry.example.com:443", "x")
    for bad in ("", "/x", "ghcr.io/Org", "host:port:1", "ghcr.io/a//b"):
        with pytest.raises(ConfigError):
            parse_registry(bad)


def test_registry_target_keeps_the_run_tag() -> None:
    d = RegistryDelivery(Engine("docker", RecordingRunner()), Registry("ghcr.io", "org/e2e"), env={})
    assert d.target("localhost/datastorage:ds-abc123") == "ghcr.io/org/e2e/datastorage:ds-abc123"
    assert d.registries == ("localhost", "ghcr.io")
    with pytest.raises(ConfigError):
        d.target("localhost/datastorage@" + DIGEST)


def test_push_failures_are_typed_and_redacted() -> None:
    runner = RecordingRunner().on(["docker", "image", "inspect"], 1, "", "no such image")
    runner.on(["docker", "push"], 1, "", "unauthorized: authentication required; Authorization: Basic c2VjcmV0")
    runner.on(["docker"], 0, "[]", "")
    recorded: list[tuple[str, str]] = []
    d = RegistryDelivery(Engine("docker", runner), Registry("ghcr.io", "org"), env={},
                         record=lambda k, n: recorded.append((k, n)))
    from kubetest_infra.build import BuiltImage

    image = BuiltImage("ds", "localhost/ds:s-r1", "sha256:" + "cd" * 32, "", False, 0.0, 0.0, "docker", "r1")
    with pytest.raises(RegistryError) as info:
        d.deliver(image, None)  # type: ignore[arg-type]
    assert "refused our credentials" in info.value.message and "docker login ghcr.io" in (info.value.hint or "")
    assert "c2VjcmV0" not in info.value.message
    assert recorded == [("image", "ghcr.io/org/ds:s-r1"), ("tag", "ghcr.io/org/ds:s-r1")]  # before the push
    assert redact("Authorization: Basic c2VjcmV0 and password=hunter2") == \
        "Authorization: Basic <redacted> and password=<redacted>"


def test_push_error_kinds() -> None:
    d = RegistryDelivery(Engine("docker", RecordingRunner()), Registry("r.example"), env={})
    assert "out of space" in d._push_error("t", "blob upload: no space left on device").message
    assert "unreachable" in d._push_error("t", "dial tcp 1.2.3.4:443: connection refused").message
    assert "failed" in d._push_error("t", "something else").message


def test_login_uses_stdin_never_argv() -> None:
    runner = RecordingRunner().on(["docker", "login"], 0, "Login Succeeded", "")
    d = RegistryDelivery(Engine("docker", runner), Registry("r.example"),
                         env={"KTI_REGISTRY_USER": "ci", "KTI_REGISTRY_PASSWORD": "s3cret-pw"})
    d._login()
    assert runner.calls and all("s3cret-pw" not in " ".join(c) for c in runner.calls)
    assert "--password-stdin" in runner.calls[0]


def test_basic_auth_from_env_then_docker_config(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    token = base64.b64encode(b"u:p").decode()
    cfg.write_text(json.dumps({"auths": {"https://r.example": {"auth": token}}}))
    assert RegistryClient(Registry("r.example"), env={}, docker_config=cfg).basic_auth() == token
    assert RegistryClient(Registry("other.example"), env={}, docker_config=cfg).basic_auth() == ""
    env = {"KTI_REGISTRY_USER": "a", "KTI_REGISTRY_PASSWORD": "b"}
    assert RegistryClient(Registry("r.example"), env=env, docker_config=cfg).basic_auth() == \
        base64.b64encode(b"a:b").decode()


def _deploy(image: str) -> dict[str, object]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
            "spec": {"template": {"spec": {"containers": [{"name": "x", "image": image}]}}}}


def test_render_by_digest_and_the_registry_guard() -> None:
    pinned = f"ghcr.io/org/x@{DIGEST}"
    out = render([_deploy("${image:x}")], [Source("f", 0)], {"x": pinned}, local_registries=("localhost", "ghcr.io"),
                 pull_policy="IfNotPresent")
    container = out.objects[0]["spec"]["template"]["spec"]["containers"][0]
    assert container == {"name": "x", "image": pinned, "imagePullPolicy": "IfNotPresent"}
    with pytest.raises(DriftError) as info:  # a tag of the run's registry the run did not push
        render([_deploy("ghcr.io/org/x:old-run")], [Source("f", 0)], {"x": pinned},
               local_registries=("localhost", "ghcr.io"))
    assert "ghcr.io/org/x:old-run is a local reference this run did not build" in info.value.problems[0]
    # another registry stays an external reference
    render([_deploy("quay.io/other/y:1.0")], [Source("f", 0)], {"x": pinned}, local_registries=("localhost", "ghcr.io"))


def test_cluster_scoped_objects_are_named() -> None:
    objs = [{"kind": "ClusterRole", "metadata": {"name": "r"}}, _deploy("a:1"), {"kind": "Namespace",
                                                                               "metadata": {"name": "n"}}]
    problems = cluster_scoped_problems(objs, [Source("f", i) for i in range(3)])
    assert problems == ["f (document 1): ClusterRole/r is cluster-scoped",
                        "f (document 3): Namespace/n is cluster-scoped"]


def test_run_namespace_and_where() -> None:
    assert run_namespace("datastorage", "a1B2") == "datastorage-a1b2"
    assert run_namespace("ds", "r_1.2", "e2e-{suite}-{run_id}") == "e2e-ds-r-1-2"
    with pytest.raises(ConfigError):
        run_namespace("d" * 60, "abcdef")
    assert from_where(where("/k/config", "ctx")) == RemoteCluster(Path("/k/config"), "ctx")
    assert from_where(where("/k/config", None)) == RemoteCluster(Path("/k/config"), None)
    assert from_where("kti-datastorage") is None


def test_remote_check_names_the_problem(tmp_path: Path) -> None:
    kc = tmp_path / "kc"
    with pytest.raises(ConfigError, match="cannot read kubeconfig"):
        RemoteCluster(kc).check()
    kc.write_text("apiVersion: v1\ncontexts: [{name: a, context: {}}]\ncurrent-context: a\n")
    RemoteCluster(kc).check()
    RemoteCluster(kc, "a").check()
    with pytest.raises(ConfigError, match="no context 'b'"):
        RemoteCluster(kc, "b").check()


def test_stale_namespaces_only_of_dead_owners_of_this_machine() -> None:
    import socket
    import subprocess
    from datetime import datetime, timedelta, timezone

    from kubetest_infra.remote import RunNamespace, stale
    from kubetest_infra.state import Owner

    proc = subprocess.Popen(["true"])
    proc.wait()
    dead = Owner(proc.pid, "", socket.gethostname(), "pytest", 0.0)
    live = Owner.current("pytest")
    elsewhere = Owner(1, "", "another-host", "pytest", 0.0)
    now = datetime(2026, 1, 2, tzinfo=timezone.utc)
    old, young = now - timedelta(hours=3), now - timedelta(minutes=5)
    found = [RunNamespace("dead-old", "a", old, dead), RunNamespace("dead-young", "b", young, dead),
             RunNamespace("live-old", "c", old, live), RunNamespace("elsewhere-old", "d", old, elsewhere),
             RunNamespace("ownerless-old", "e", old, None)]
    assert stale(found, timedelta(hours=1), now) == ["dead-old"]
