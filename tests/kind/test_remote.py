"""A suite on a cluster the library did not create, by kubeconfig and registry (issue 10).

The cluster comes from ``hack/lab/up --registry`` (its nodes' containerd pulls ``localhost:PORT/…`` from
the lab registry): ``$KTI_REMOTE_KUBECONFIG`` names one made beforehand, else this module makes one
(``$KTI_REMOTE_CLUSTER``, default ``kti-remote-test``) and deletes it at the end. The library itself only
ever gets the kubeconfig and ``--registry``: no ``kind load``, and the nodes hold none of the run's
images before the pods pull them.

Proves: the run's pods run exactly the pushed digests; a pre-generated tag of the run's registry is
refused before anything is applied; two runs at once on one cluster each get their own namespace and
tags and remove only those; the cluster and every other namespace stay.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kubetest_infra.delivery import RegistryClient, parse_registry
from kubetest_infra.engine import get_engine
from kubetest_infra.errors import ConfigError
from kubetest_infra.remote import RemoteCluster
from kubetest_infra.session import Session
from kubetest_infra.state import Environment
from kubetest_infra.suite import load_suite
from kubetest_infra.tags import new_run_id

pytestmark = [pytest.mark.kind, pytest.mark.xdist_group("kind")]

ROOT = Path(__file__).resolve().parents[2]
SUITE = Path(__file__).resolve().parent / "remote_suite"
REGISTRY_HOST = os.environ.get("KTI_LAB_REGISTRY", "localhost:5001")


def _loud_skip(reason: str) -> None:
    msg = f"REMOTE CLUSTER TEST SKIPPED: {reason}"
    print(f"\n{'!' * 80}\n{msg}\n{'!' * 80}", file=sys.stderr)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def kubeconfig() -> Iterator[Path]:
    given = os.environ.get("KTI_REMOTE_KUBECONFIG")
    if given:
        yield Path(given)
        return
    try:
        urllib.request.urlopen(f"http://{REGISTRY_HOST}/v2/", timeout=3)
    except OSError as exc:
        _loud_skip(f"no lab registry at {REGISTRY_HOST} ({exc}): hack/lab/registry start")
    name = os.environ.get("KTI_REMOTE_CLUSTER", "kti-remote-test")
    state = Path(tempfile.mkdtemp(prefix="kti-remote-lab-"))
    env = {**os.environ, "KTI_LAB_STATE": str(state)}
    out = subprocess.run([str(ROOT / "hack/lab/up"), "--name", name, "--registry"], env=env, capture_output=True,
                         text=True, timeout=600)
    try:
        assert out.returncode == 0, out.stderr[-3000:]
        yield Path(out.stdout.strip().splitlines()[-1])
    finally:  # this module made the cluster: it removes it
        subprocess.run([str(ROOT / "hack/lab/down"), "--name", name], env=env, capture_output=True, timeout=300)


def _core(kubeconfig: Path) -> Any:
    return client.CoreV1Api(RemoteCluster(kubeconfig).api())


def _namespaces(kubeconfig: Path) -> set[str]:
    return {n.metadata.name for n in _core(kubeconfig).list_namespace().items
            if n.status.phase != "Terminating"}


def _node_images(kubeconfig: Path) -> set[str]:
    """Every repo tag and repo digest the nodes' containerd holds."""
    out: set[str] = set()
    for node in [n.metadata.name for n in _core(kubeconfig).list_node().items]:
        out.update(subprocess.run(["docker", "exec", node, "ctr", "-n", "k8s.io", "images", "ls", "-q"],
                                  capture_output=True, text=True, check=True).stdout.split())
    return out


def _session(kubeconfig: Path, run_id: str, state: Path, suite_dir: Path = SUITE) -> Session:
    from kubetest_infra.cluster import KindClusters

    engine = get_engine()
    return Session(load_suite(suite_dir), engine, clusters=KindClusters(engine, state_dir=state),
                   remote=RemoteCluster(kubeconfig), registry=parse_registry(f"{REGISTRY_HOST}/kti-remote-test"),
                   run_id=run_id, command="pytest")


def _pod_image_ids(kubeconfig: Path, namespace: str) -> dict[str, str]:
    pods = _core(kubeconfig).list_namespaced_pod(namespace).items
    return {c.name: c.image_id for p in pods for c in (p.status.container_statuses or [])}


def test_two_runs_at_once_by_kubeconfig_and_registry(kubeconfig: Path, tmp_path: Path) -> None:
    before = _namespaces(kubeconfig)
    runs = [new_run_id()[:8], new_run_id()[:8]]
    sessions = [_session(kubeconfig, r, tmp_path / f"state-{r}") for r in runs]
    nodes_before = _node_images(kubeconfig)
    assert nodes_before and not any(f":remote-{r}" in ref for r in runs for ref in nodes_before)
    envs: dict[str, Environment] = {}
    errors: list[BaseException] = []

    def up(s: Session) -> None:
        try:
            envs[s.suite.namespace] = s.up(keep_env=False)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=up, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    try:
        assert not errors, errors
        assert set(envs) == {f"remote-{r}" for r in runs}
        reg = RegistryClient(parse_registry(REGISTRY_HOST))
        during = _namespaces(kubeconfig)
        assert during == before | set(envs)
        for ns, env in envs.items():
            for name, ref in env.images.items():
                repo, digest = ref.split("@")
                assert repo == f"{REGISTRY_HOST}/kti-remote-test/{name}"
                assert reg.resolve(f"{repo}:remote-{env.run_id}") == digest  # the pushed tag names that digest
            ids = _pod_image_ids(kubeconfig, ns)
            assert ids == {name: env.images[name] for name in ("echo", "worker")}, ids  # pods run the digests
        nodes_after = _node_images(kubeconfig)
        assert all(ref in nodes_after for e in envs.values() for ref in e.images.values())  # pulled by digest
        digests = [set(e.images.values()) for e in envs.values()]
        assert not digests[0] & digests[1]  # each run its own images
    finally:
        lines = [line for s in sessions for line in s.end()]
    after = _namespaces(kubeconfig)
    assert after == before, (before, after)
    assert any("namespace remote-" in line for line in lines), lines
    for env in envs.values():
        for name in env.images:
            tags = RegistryClient(parse_registry(REGISTRY_HOST)).tags(f"kti-remote-test/{name}")
            assert f"remote-{env.run_id}" not in tags
    assert RemoteCluster(kubeconfig).connect().name  # the cluster itself is still there and answers


def test_pregenerated_registry_tag_is_refused_before_apply(kubeconfig: Path, tmp_path: Path) -> None:
    suite_dir = tmp_path / "suite"
    subprocess.run(["cp", "-r", str(SUITE), str(suite_dir)], check=True)
    worker = suite_dir / "manifests" / "worker.yaml"
    old = f"{REGISTRY_HOST}/kti-remote-test/worker:remote-old"
    worker.write_text(worker.read_text().replace("${image:worker}", old))
    before = _namespaces(kubeconfig)
    run = new_run_id()[:8]
    session = _session(kubeconfig, run, tmp_path / "state", suite_dir)
    with pytest.raises(ConfigError) as info:
        session.up(keep_env=False)
    assert old in info.value.message
    assert "did not build" in info.value.message
    assert _namespaces(kubeconfig) == before  # refused before its namespace was made, or that removed
    assert not list((tmp_path / "state" / "runs").glob("*.json"))  # nothing left in a ledger
    session.end()


def test_gc_removes_only_namespaces_of_dead_runs(kubeconfig: Path) -> None:
    import socket
    from datetime import datetime, timedelta, timezone

    from kubetest_infra.remote import gc_namespaces, namespace_metadata
    from kubetest_infra.state import Owner

    proc = subprocess.Popen(["true"])
    proc.wait()
    tag = new_run_id()[:6]
    owners = {f"gc-dead-{tag}": Owner(proc.pid, "", socket.gethostname(), "pytest", 0.0),
              f"gc-live-{tag}": Owner.current("pytest"),
              f"gc-elsewhere-{tag}": Owner(1, "", "another-host", "pytest", 0.0)}
    core = _core(kubeconfig)
    before = _namespaces(kubeconfig)
    for name, owner in owners.items():
        core.create_namespace({"metadata": namespace_metadata(name, "gc", tag, owner)})
    try:
        remote = RemoteCluster(kubeconfig)
        young = gc_namespaces(remote, timedelta(hours=1), datetime.now(timezone.utc), dry_run=True)
        assert not set(young) & set(owners)  # too young
        removed = gc_namespaces(remote, timedelta(0), datetime.now(timezone.utc) + timedelta(seconds=5))
        assert set(removed) & set(owners) == {f"gc-dead-{tag}"}  # (and other dead runs' namespaces)
        assert {f"gc-live-{tag}", f"gc-elsewhere-{tag}"} <= _namespaces(kubeconfig)
        assert f"gc-dead-{tag}" not in _namespaces(kubeconfig)
        assert before - set(removed) <= _namespaces(kubeconfig)  # nothing else went
    finally:
        for name in owners:
            with contextlib.suppress(client.exceptions.ApiException):
                core.delete_namespace(name)
