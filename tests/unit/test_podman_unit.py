"""Podman specifics on recorded output: ids, info, ignore-file order, listing races, the provider pairing."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetest_infra.cluster import (
    ClusterConfig,
    EngineMismatchError,
    KindClusters,
    NodeImageMissingError,
    podman_network_problem,
)
from kubetest_infra.dockerignore import ignore_file_for
from kubetest_infra.engine import Engine, image_id
from kubetest_infra.errors import CommandError
from kubetest_infra.load import Loader, LoadError
from kubetest_infra.state import write_json
from tests.fakes import RecordingRunner

HEX = "ab" * 32


def test_podman_bare_ids_get_the_sha256_prefix_docker_ids_stay() -> None:
    assert image_id(HEX) == f"sha256:{HEX}"
    assert image_id(f"sha256:{HEX}\n") == f"sha256:{HEX}"
    assert image_id("") == ""
    runner = RecordingRunner().on(["podman", "image", "inspect"], stdout=f'[{{"Id": "{HEX}", "RepoTags": []}}]')
    assert Engine("podman", runner).inspect_image("x") is not None
    assert Engine("podman", runner).inspect_image("x").id == f"sha256:{HEX}"  # type: ignore[union-attr]


def test_info_reads_storage_driver_and_rootless_per_engine() -> None:
    podman = RecordingRunner().on(["podman", "info"], stdout="4.3.1|/var/lib/containers/storage|overlay|false")
    info = Engine("podman", podman).info()
    assert (info.storage_driver, info.rootless, info.root_dir) == ("overlay", False, "/var/lib/containers/storage")
    docker = RecordingRunner().on(["docker", "info"], stdout="20.10|/d|overlay2|[name=seccomp name=rootless]")
    docker.on(["docker", "buildx"], returncode=1)
    assert Engine("docker", docker).info().rootless is True
    old = RecordingRunner().on(["docker", "info"], stdout="20.10|/d").on(["docker", "buildx"], returncode=1)
    assert Engine("docker", old).info().rootless is None  # said nothing: unknown, not rootful


def test_podman_listing_that_races_a_removal_is_retried_then_fails_loudly() -> None:
    calls = {"n": 0}

    class Racy(RecordingRunner):
        def run(self, argv, **kw):  # type: ignore[no-untyped-def,override]
            calls["n"] += 1
            if calls["n"] == 1:
                return super().run(["fail", *argv], **kw)
            return super().run(argv, **kw)

    runner = Racy().on(["fail"], returncode=125, stderr='Error: reading image "x": image not known')
    runner.on(["podman", "image", "ls"], stdout=f"sha256:{HEX}\n")
    assert Engine("podman", runner).image_ids({"k": None}) == [f"sha256:{HEX}"]
    always = RecordingRunner().on(["podman", "image", "ls"], returncode=125, stderr="image not known")
    with pytest.raises(CommandError):
        Engine("podman", always).image_ids({"k": None})
    assert len(always.calls) == 5
    docker = RecordingRunner().on(["docker", "image", "ls"], returncode=1, stderr="image not known")
    with pytest.raises(CommandError):
        Engine("docker", docker).image_ids({})
    assert len(docker.calls) == 1  # only podman's listing race is retried


@pytest.mark.parametrize(("present", "podman", "docker_buildkit", "docker_classic"), [
    ((".dockerignore", ".containerignore"), ".containerignore", ".dockerignore", ".dockerignore"),
    ((".dockerignore",), ".dockerignore", ".dockerignore", ".dockerignore"),
    ((".containerignore",), ".containerignore", None, None),
    ((".containerignore", "Dockerfile.dockerignore"), "Dockerfile.dockerignore", "Dockerfile.dockerignore", None),
    ((".containerignore", "Dockerfile.containerignore"), "Dockerfile.containerignore", None, None),
    (("Dockerfile.containerignore", "Dockerfile.dockerignore"), "Dockerfile.dockerignore",
     "Dockerfile.dockerignore", None),
])
def test_ignore_file_order_per_engine(tmp_path: Path, present: tuple[str, ...], podman: str | None,
                                      docker_buildkit: str | None, docker_classic: str | None) -> None:
    for name in present:
        (tmp_path / name).write_text("x\n")
    df = tmp_path / "Dockerfile"

    def name(found: Path | None) -> str | None:
        return found.name if found else None

    assert name(ignore_file_for(tmp_path, df, False, "podman")) == podman
    assert name(ignore_file_for(tmp_path, df, True)) == docker_buildkit
    assert name(ignore_file_for(tmp_path, df, False)) == docker_classic


def clusters(engine: str, tmp_path: Path, provider: str | None) -> KindClusters:
    runner = RecordingRunner().on(["kind", "get", "clusters"], stdout="")
    kc = KindClusters(Engine(engine, runner), state_dir=tmp_path, kind_binary="kind")  # type: ignore[arg-type]
    record = {"created_by": "kubetest-infra", "fingerprint": "f", "phase": "ready"}
    write_json(kc.cluster_dir("c") / "state.json", record | ({"provider": provider} if provider else {}))
    return kc


@pytest.mark.parametrize(("engine", "provider"), [("podman", "docker"), ("docker", "podman"), ("podman", None)])
def test_a_cluster_of_the_other_provider_is_refused_never_forgotten(tmp_path: Path, engine: str,
                                                                     provider: str | None) -> None:
    kc = clusters(engine, tmp_path, provider)
    with pytest.raises(EngineMismatchError) as err:
        kc.check_provider("c")
    assert f"--engine {provider or 'docker'}" in (err.value.hint or "")
    with pytest.raises(EngineMismatchError):
        kc.delete("c")
    assert (kc.cluster_dir("c") / "state.json").exists()  # the record of the other engine's cluster stays


def test_same_provider_passes(tmp_path: Path) -> None:
    clusters("podman", tmp_path, "podman").check_provider("c")
    clusters("docker", tmp_path, None).check_provider("c")  # old records: docker


def test_loader_refuses_nodes_of_another_engine() -> None:
    runner = RecordingRunner().on(["podman", "ps"], stdout="other-node\n")
    with pytest.raises(LoadError) as err:
        Loader(Engine("podman", runner), read_store=False)._check_nodes(["kti-control-plane"])
    assert "not containers of the podman engine" in err.value.message and "--engine docker" in (err.value.hint or "")


def test_podman_network_without_dns_is_named(tmp_path: Path) -> None:
    off = RecordingRunner().on(["podman", "info"], stdout="cni").on(["podman", "network"], stdout="false")
    assert "DNS disabled" in (podman_network_problem(Engine("podman", off)) or "")
    on = RecordingRunner().on(["podman", "info"], stdout="netavark").on(["podman", "network"], stdout="true")
    assert podman_network_problem(Engine("podman", on)) is None
    assert podman_network_problem(Engine("docker", RecordingRunner())) is None


def test_an_unqualified_node_image_is_refused_for_the_podman_provider(tmp_path: Path) -> None:
    runner = RecordingRunner().on(["podman", "image", "inspect"],
                                  stdout=f'[{{"Id": "{HEX}", "RepoTags": ["localhost/kti-lab/node:v1"]}}]')
    kc = KindClusters(Engine("podman", runner), state_dir=tmp_path, kind_binary="kind")
    with pytest.raises(NodeImageMissingError) as err:
        kc._check_node_image(ClusterConfig("c", node_image="kti-lab/node:v1"))
    assert "docker.io/kti-lab/node:v1" in err.value.message and "localhost/kti-lab/node:v1" in (err.value.hint or "")
    kc._check_node_image(ClusterConfig("c", node_image="localhost/kti-lab/node:v1"))  # qualified: fine
