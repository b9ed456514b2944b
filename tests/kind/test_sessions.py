"""Sessions on a real cluster: ownership (attach, leave, last one out, busy), warm re-runs that serve only
new code, crashes at first sight, no tag growth. A small busybox suite keeps each round to seconds.

Every test lists clusters, our images and state files before and after: what a session did not create
must still be there, what it created must be gone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import lab_kind_binary, lab_node_image
from kubetest_infra.cluster import KindClusters, NotOwnedError
from kubetest_infra.engine import Engine, get_engine
from kubetest_infra.graph import GraphError
from kubetest_infra.session import EnvironmentBusyError, Session
from kubetest_infra.state import Owner
from kubetest_infra.suite import load_suite
from kubetest_infra.tags import new_run_id
from kubetest_infra.wait import PodStartError
from tests.kind.stale_window import rounds, write_suite

pytestmark = [pytest.mark.kind]
pytest_plugins = ["pytester"]
CLUSTER = os.environ.get("KTI_SESSIONS_CLUSTER", "kti-sessions")
PORT = int(os.environ.get("KTI_SESSIONS_HOSTPORT", "38096"))
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return get_engine()


@pytest.fixture
def world(tmp_path: Path, engine: Engine) -> Iterator[tuple[Path, KindClusters]]:
    state = tmp_path / "state"
    clusters = KindClusters(engine, state_dir=state, kind_binary=lab_kind_binary())
    suite = write_suite(tmp_path / "suite", cluster=CLUSTER, node_image=lab_node_image() or "", port=PORT,
                        base=os.environ.get("BUSYBOX_IMAGE", "busybox:1.36"))
    yield suite, clusters
    if clusters.exists(CLUSTER):  # a failed test: remove what it left, by ownership records only
        Session(load_suite(suite), engine, clusters=clusters).down(force=True)


def snapshot(engine: Engine, clusters: KindClusters) -> dict[str, object]:
    """What exists: Kind clusters, our images of the suite (ref → id), our state files."""
    images = {}
    for image_id in engine.image_ids({"io.kubetest-infra.consumer": "stale"}):
        info = engine.inspect_image(image_id)
        if info is not None:
            images.update({ref: info.id for ref in info.repo_tags} or {f"<untagged {info.id[:19]}>": info.id})
    state = sorted(str(p.relative_to(clusters.state_dir)) for p in clusters.state_dir.rglob("*")
                   if p.is_file() and "diagnostics" not in p.parts and p.suffix != ".lock" and
                   not p.name.endswith(".holder")) if clusters.state_dir.exists() else []
    return {"clusters": sorted(clusters._kind("get", "clusters").split()), "images": images, "state": state}


def other_process() -> subprocess.Popen[bytes]:
    """A live process standing for another session's owner (a second pytest, say)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


def owner_of(proc: subprocess.Popen[bytes], command: str) -> Owner:
    return Owner.current(command, pid=proc.pid)


def test_a_session_attached_to_a_kept_environment_leaves_it_exactly_as_found(
        world: tuple[Path, KindClusters], engine: Engine) -> None:
    suite_file, clusters = world
    suite = load_suite(suite_file)
    before = snapshot(engine, clusters)
    kept = Session(suite, engine, clusters=clusters, command="kti up").up(keep_env=True)
    after_up = snapshot(engine, clusters)
    assert CLUSTER in after_up["clusters"]  # type: ignore[operator]

    peer = other_process()
    try:
        session = Session(suite, engine, clusters=clusters, owner=owner_of(peer, "pytest"), command="pytest")
        env = session.up(keep_env=False)
        assert session.attached
        assert env.run_id == kept.run_id, "an attached session takes the environment's run id"
        assert set(env.reused_images) == {"web"}, "unchanged images are neither rebuilt nor retagged"
        assert env.image_ids == kept.image_ids
        assert session.end() == [], "an attached session removes nothing"
    finally:
        peer.kill()
    assert snapshot(engine, clusters) == after_up, "the kept environment is exactly as it was"

    # kti down removes everything the environment owns, and only that
    lines = Session(suite, engine, clusters=clusters, command="kti down").down()
    assert any(line.startswith("cluster ") for line in lines)
    assert snapshot(engine, clusters) == before


def test_two_sessions_share_one_environment_and_the_last_one_out_removes_it(
        world: tuple[Path, KindClusters], engine: Engine) -> None:
    suite_file, clusters = world
    suite = load_suite(suite_file)
    before = snapshot(engine, clusters)
    first_owner, second_owner = other_process(), other_process()
    try:
        first = Session(suite, engine, clusters=clusters, key="pytest-a", owner=owner_of(first_owner, "pytest A"))
        second = Session(suite, engine, clusters=clusters, key="pytest-b", owner=owner_of(second_owner, "pytest B"))
        env_a = first.up(keep_env=False)
        env_b = second.up(keep_env=False)
        assert second.attached
        assert env_b.run_id == env_a.run_id
        assert not first.attached
        (suite_file.parent / "web" / "index.html").write_text("changed\n")
        third = Session(load_suite(suite_file), engine, clusters=clusters, owner=Owner.current("pytest C"))
        with pytest.raises(EnvironmentBusyError) as busy:  # a third session with other code: refused at once
            third.up()
        assert "pytest A" in str(busy.value)
        assert "Hint:" in str(busy.value)
        (suite_file.parent / "web" / "index.html").write_text("v0\n")

        during = snapshot(engine, clusters)
        lines_a = first.end()
        assert any("left for the sessions still attached" in line for line in lines_a), lines_a
        assert snapshot(engine, clusters)["clusters"] == during["clusters"], "B still uses the cluster"
        with pytest.raises(EnvironmentBusyError):
            Session(suite, engine, clusters=clusters, command="kti down").down()
        lines = second.end()
        assert any(line.startswith("cluster ") for line in lines), lines
    finally:
        first_owner.kill()
        second_owner.kill()
    assert snapshot(engine, clusters) == before, "the last session out removed everything, and only that"


def test_a_cluster_without_our_record_is_never_deleted(world: tuple[Path, KindClusters], engine: Engine) -> None:
    suite_file, clusters = world
    suite = load_suite(suite_file)
    Session(suite, engine, clusters=clusters).up(keep_env=True)
    record = clusters.cluster_dir(CLUSTER) / "state.json"
    saved = record.read_bytes()
    record.unlink()  # as if someone else had made this cluster
    try:
        with pytest.raises(NotOwnedError) as info:
            clusters.delete(CLUSTER)
        assert "Hint:" in str(info.value)
        assert "--force" in str(info.value)
        assert CLUSTER in clusters._kind("get", "clusters").split()
    finally:
        record.write_bytes(saved)
    Session(suite, engine, clusters=clusters).down()
    assert not clusters.exists(CLUSTER)


def test_warm_re_runs_serve_only_new_code_and_leave_no_tags_behind(world: tuple[Path, KindClusters],
                                                                     engine: Engine) -> None:
    """Issue 9: 0 stale answers in 20 back-to-back warm re-runs; no tag growth across them."""
    suite_file, clusters = world
    first = rounds(suite_file, engine, clusters, 1)
    tags_after_first = len(snapshot(engine, clusters)["images"])  # type: ignore[arg-type]
    results = rounds(suite_file, engine, clusters, 20, probe_seconds=1.0)
    stale = [(r.version, r.stale, r.answers) for r in results if r.stale]
    assert not stale, f"stale answers after hand-over: {stale}"
    assert all(r.answers > 0 for r in results)
    assert first[0].answers > 0
    images = snapshot(engine, clusters)["images"]
    assert len(images) == tags_after_first == 1, f"tags pile up: {images}"  # type: ignore[arg-type]
    Session(load_suite(suite_file), engine, clusters=clusters).down()



def node_refs(engine: Engine, clusters: KindClusters) -> dict[str, set[str]]:
    """Per node: the suite's references in its containerd and, of those, the ones pinned against GC."""
    out: dict[str, set[str]] = {}
    for node in clusters.nodes(CLUSTER):
        lines = engine.run("exec", node, "ctr", "-n", "k8s.io", "images", "ls").stdout.splitlines()[1:]
        ours = [line for line in lines if ":stale-" in line.split()[0]]
        out[node] = {line.split()[0] for line in ours}
        out[f"{node} pinned"] = {line.split()[0] for line in ours if "io.cri-containerd.pinned=pinned" in line}
    return out


def test_a_new_run_id_removes_the_superseded_images_from_the_engine_and_every_node(
        world: tuple[Path, KindClusters], engine: Engine) -> None:
    """Issue 14 item 5 with issue 9's "nothing piles up": loaded images are pinned while the environment
    runs them; superseded ones are unpinned and removed from the nodes, not only from the engine."""
    suite_file, clusters = world
    suite = load_suite(suite_file)
    before = snapshot(engine, clusters)
    first = Session(suite, engine, clusters=clusters, command="kti up").up(run_id=new_run_id(), keep_env=True)
    ref_a = first.images["web"]
    node = clusters.nodes(CLUSTER)[0]
    assert node_refs(engine, clusters) == {node: {ref_a}, f"{node} pinned": {ref_a}}
    second = Session(suite, engine, clusters=clusters, command="kti up").up(run_id=new_run_id(), keep_env=True)
    ref_b = second.images["web"]
    assert ref_b != ref_a
    assert node_refs(engine, clusters) == {node: {ref_b}, f"{node} pinned": {ref_b}}, "the old run's image stays"
    assert set(snapshot(engine, clusters)["images"]) == {ref_b}  # type: ignore[arg-type]
    Session(suite, engine, clusters=clusters, command="kti down").down()
    assert snapshot(engine, clusters) == before


CRASHER = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: crasher}
spec:
  replicas: 1
  selector: {matchLabels: {app: crasher}}
  template:
    metadata: {labels: {app: crasher}}
    spec:
      containers:
      - name: crasher
        image: ${image:web}
        command: ["sh", "-c", "echo crash-marker-ROUND; exit 1"]
"""


def test_a_container_that_exits_at_start_fails_every_time_within_seconds(
        world: tuple[Path, KindClusters], engine: Engine) -> None:
    """Issue 9: no probe, exits 1 at start → never 'ok'; 10 of 10, reported in ≤ 5 s with its log line."""
    suite_file, clusters = world
    Session(load_suite(suite_file), engine, clusters=clusters).up()
    text = suite_file.read_text() + textwrap.dedent("""
      crasher:
        manifests: [./crasher.yaml]
    """).replace("\n", "\n  ")
    suite_file.write_text(text)
    seconds = []
    for i in range(10):  # a new template each round: the old round's crashing pod must not be what is judged
        (suite_file.parent / "crasher.yaml").write_text(CRASHER.replace("ROUND", str(i)))
        with pytest.raises(GraphError) as info:
            Session(load_suite(suite_file), engine, clusters=clusters).up()
        err = info.value.failures.get("service:crasher")
        assert isinstance(err, PodStartError), info.value
        assert err.problem.reason in ("ContainerCrashed", "CrashLoopBackOff")
        assert f"crash-marker-{i}" in err.logs, err.logs
        seconds.append(err.seconds)
    assert max(seconds) <= 5.0, f"crash reported after {seconds}"
    Session(load_suite(suite_file), engine, clusters=clusters).down()


SESSION_TEST = """
import json, os, pathlib
def test_record(kti_env):
    out = pathlib.Path(os.environ["KTI_TEST_OUT"])
    n = len(list(out.glob("session-*.json")))
    (out / f"session-{n}.json").write_text(json.dumps(kti_env.to_json()))
"""


def test_warm_pytest_sessions_rebuild_and_roll_out_only_what_changed(
        world: tuple[Path, KindClusters], engine: Engine, pytester: pytest.Pytester,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 9: a pytest session on a kept environment attaches; one changed service is the only one rebuilt,
    reloaded and rolled out; five more sessions with nothing changed leave tags and rollouts alone."""
    import json

    from kubernetes import client

    from kubetest_infra.kube import api_client

    suite_file, clusters = world
    root = suite_file.parent
    write_suite(root, cluster=CLUSTER, node_image=lab_node_image() or "", port=PORT,
                base=os.environ.get("BUSYBOX_IMAGE", "busybox:1.36"), others=("other",))
    kept = Session(load_suite(suite_file), engine, clusters=clusters, command="kti up").up(keep_env=True)
    apps = client.AppsV1Api(api_client(kept.kubeconfig))

    def generations() -> dict[str, int]:
        return {d: apps.read_namespaced_deployment(d, "stale").metadata.generation for d in ("web", "other")}

    out = pytester.mkdir("out")
    monkeypatch.setenv("KTI_TEST_OUT", str(out))
    monkeypatch.setenv("KTI_STATE_DIR", str(clusters.state_dir))
    monkeypatch.delenv("KTI_RUN_ID", raising=False)
    pytester.makepyfile(test_record=SESSION_TEST)
    before = generations()
    (root / "web" / "index.html").write_text("edited\n")
    pytester.runpytest_subprocess("--kti-suite", str(suite_file), "-p", "no:cacheprovider").assert_outcomes(passed=1)
    first = json.loads((out / "session-0.json").read_text())
    assert first["run_id"] == kept.run_id, "the session attached to the kept environment"
    assert first["reused_images"] == ["other"], "only the changed image was rebuilt"
    assert first["image_ids"]["other"] == kept.image_ids["other"]
    assert first["image_ids"]["web"] != kept.image_ids["web"]
    after = generations()
    assert after["other"] == before["other"], "the unchanged workload did not roll out"
    assert after["web"] == before["web"] + 1, "the changed one did"
    tags = snapshot(engine, clusters)["images"]

    for _ in range(5):
        pytester.runpytest_subprocess("--kti-suite", str(suite_file), "-p", "no:cacheprovider").assert_outcomes(
            passed=1)
    assert generations() == after, "nothing rolled out in five unchanged sessions"
    assert snapshot(engine, clusters)["images"] == tags, "no tag growth across five warm sessions"
    sessions = [json.loads(p.read_text()) for p in sorted(out.glob("session-*.json"))]
    assert len(sessions) == 6
    assert all(s["reused_images"] == ["other", "web"] for s in sessions[1:])
    assert CLUSTER in clusters._kind("get", "clusters").split(), "attached sessions leave the kept environment"
    Session(load_suite(suite_file), engine, clusters=clusters).down()
