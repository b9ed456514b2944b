"""Injected faults against the real engine and the lab (issue 8, item 7): each ends in recovery or a
typed error with a hint, and a before/after listing (Kind clusters, node containers, our images,
state files) proves that nothing the run created is left and nothing it found was touched.

Opt-in (each case creates and removes a cluster): ``KTI_FAULTS=1``; ``hack/test`` sets it and requires
the tier. The table of faults and outcomes: docs/reliability.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import lab_kind_binary, lab_node_image
from kubetest_infra.cluster import KindClusters
from kubetest_infra.engine import Engine, get_engine
from tests.kind.stale_window import write_suite

pytestmark = [pytest.mark.faults]
CLUSTER = os.environ.get("KTI_FAULTS_CLUSTER", "kti-fault-tier")
PORT = int(os.environ.get("KTI_FAULTS_HOSTPORT", "38097"))
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return get_engine()


class World:
    """A busybox suite, a private state directory, and ``kti`` run as a child process."""

    def __init__(self, tmp: Path, engine: Engine) -> None:
        self.engine = engine
        self.state = tmp / "state"
        self.suite = write_suite(tmp / "suite", cluster=CLUSTER, node_image=lab_node_image() or "", port=PORT,
                                 base=os.environ.get("BUSYBOX_IMAGE", "busybox:1.36"))
        self.clusters = KindClusters(engine, state_dir=self.state, kind_binary=lab_kind_binary())

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "KTI_STATE_DIR": str(self.state), "KTI_KIND": self.clusters.kind,
                "PYTHONUNBUFFERED": "1", **extra}

    def kti(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kubetest_infra.cli", *args], capture_output=True, text=True,
                              env=self.env(**extra), timeout=600, check=False)

    def start_up(self, **extra: str) -> subprocess.Popen[str]:
        """``kti up SUITE`` in a process group of its own (a CI runner cancels the whole group)."""
        return subprocess.Popen([sys.executable, "-m", "kubetest_infra.cli", "up", str(self.suite)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env(**extra),
                                start_new_session=True, preexec_fn=_default_signals)  # noqa: PLW1509 (signal.signal only)

    def snapshot(self) -> dict[str, object]:
        """Kind clusters, node containers of the suite's cluster, our images of the suite, state files."""
        images = sorted(ref for image_id in self.engine.image_ids({"io.kubetest-infra.consumer": "stale"})
                        for ref in (self.engine.inspect_image(image_id) or _NoImage()).repo_tags)
        nodes = self.engine.run("ps", "-a", "--filter", f"label=io.x-k8s.kind.cluster={CLUSTER}",
                                "--format", "{{.Names}}").stdout.split()
        state = sorted(str(p.relative_to(self.state)) for p in self.state.rglob("*")
                       if p.is_file() and p.suffix != ".lock" and not p.name.endswith(".holder")
                       and "diagnostics" not in p.parts) if self.state.exists() else []
        # only this tier's cluster name: other Kind clusters on the machine (CI runs other tiers beside
        # this one) are not this run's, and are never touched by it
        ours = [c for c in self.clusters._kind("get", "clusters").split() if c == CLUSTER]
        return {"clusters": ours, "nodes": sorted(nodes),
                "images": images, "state": state}


def _default_signals() -> None:
    """As a terminal starts a program: a pytest run as a background job of a non-interactive shell
    (hack/test runs two at once) inherits SIGINT ignored, and so would the ``kti up`` it starts."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _NoImage:
    repo_tags: tuple[str, ...] = ()


@pytest.fixture
def world(tmp_path: Path, engine: Engine) -> Iterator[World]:
    w = World(tmp_path, engine)
    yield w
    if w.clusters.exists(CLUSTER):  # a failed case: remove what it left, by the ownership records only
        w.kti("down", str(w.suite), "--force")


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 300) -> list[str]:
    """Read ``proc``'s output until a line holds ``needle``; the lines read."""
    assert proc.stdout is not None
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if needle in line:
                done.set()
                return
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(timeout), f"no line with {needle!r} within {timeout} s: {''.join(lines)[-2000:]}"
    assert any(needle in line for line in lines), f"exited before {needle!r}: {''.join(lines)[-2000:]}"
    return lines


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


# -- SIGINT / SIGTERM at each phase of kti up ----------------------------------------------------
PHASES = {"build": "build:web: started", "cluster": "cluster: started", "load": "load:web: started",
          "service": "service:web: started"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("phase", list(PHASES))
def test_a_signal_at_each_phase_of_kti_up_removes_what_the_run_made(world: World, phase: str,
                                                                   sig: signal.Signals) -> None:
    before = world.snapshot()
    proc = world.start_up()
    try:
        wait_for_line(proc, PHASES[phase])
        deadline = time.monotonic() + 120
        while phase == "cluster" and not world.snapshot()["nodes"]:  # kind is half-way: a node container
            assert time.monotonic() < deadline, "kind never made a node container"
            time.sleep(0.5)
        if phase == "load":
            time.sleep(0.3)  # inside the transfer, not before it
        os.killpg(proc.pid, sig)  # as a terminal's Ctrl-C or a CI cancel: the whole group
        code, out = finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code != 0, out
    assert "Traceback" not in out, out
    assert world.snapshot() == before, f"left behind after {sig.name} at {phase}:\n{out[-3000:]}"


# -- SIGKILL during kind create: the next kti up / kti gc finish the half-created cluster --------
def kill_during_create(world: World) -> None:
    proc = world.start_up()
    try:
        wait_for_line(proc, "cluster: started")
        deadline = time.monotonic() + 120
        while not world.snapshot()["nodes"]:  # the node container exists: kind is half-way
            assert time.monotonic() < deadline, "kind never made a node container"
            time.sleep(0.5)
        time.sleep(2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def test_sigkill_during_kind_create_then_kti_gc_removes_exactly_the_half_created_cluster(world: World) -> None:
    before = world.snapshot()
    kill_during_create(world)
    left = world.snapshot()
    assert left["nodes"], "the kill left nothing to recover: the case proves nothing"
    gc = world.kti("gc")
    assert gc.returncode == 0, gc.stderr
    assert "creation was interrupted" in gc.stdout or "left by" in gc.stdout, gc.stdout
    assert world.snapshot() == before, gc.stdout + gc.stderr


def test_sigkill_during_kind_create_then_kti_up_recovers_and_kti_down_cleans(world: World) -> None:
    before = world.snapshot()
    kill_during_create(world)
    up = world.kti("up", str(world.suite))
    assert up.returncode == 0, up.stdout + up.stderr
    assert "is up" in up.stdout
    down = world.kti("down", str(world.suite))
    assert down.returncode == 0, down.stdout + down.stderr
    assert world.snapshot() == before


# -- the engine and the cluster misbehave ------------------------------------------------------------
def test_a_node_killed_during_the_load_is_a_typed_error_and_nothing_is_left(world: World) -> None:
    before = world.snapshot()
    proc = world.start_up()
    try:
        wait_for_line(proc, "load:web: started")
        world.engine.run("kill", f"{CLUSTER}-control-plane", check=False)
        code, out = finish(proc, timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if code == 0:  # the load finished before the kill landed: the cluster must then be usable or removed
        world.kti("down", str(world.suite))
    else:
        assert "Hint:" in out, out
        assert "Traceback" not in out, out
    assert world.snapshot() == before, out[-3000:]


@pytest.mark.parametrize("after", [0.0, 1.5], ids=["at-service-start", "while-waiting"])
def test_the_control_plane_paused_10_s_during_a_service_recovers(world: World, after: float) -> None:
    """Paused at the service's start (its images' read-back, the apply) or a moment later (the wait)."""
    before = world.snapshot()
    proc = world.start_up()
    node = f"{CLUSTER}-control-plane"
    try:
        wait_for_line(proc, "service:web: started")
        time.sleep(after)
        world.engine.run("pause", node)
        time.sleep(10)
        unpaused = world.engine.run("unpause", node, check=False)
        code, out = finish(proc, timeout=400)
        assert unpaused.returncode == 0, f"the node was gone before the pause ended:\n{out[-3000:]}"
    finally:
        world.engine.run("unpause", node, check=False)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, out  # the API comes back: the watch re-lists and the wait goes on
    assert "is up" in out
    down = world.kti("down", str(world.suite))
    assert down.returncode == 0, down.stdout + down.stderr
    assert world.snapshot() == before


# -- the state directory cannot be written ---------------------------------------------------------------
@pytest.fixture
def full_state_dir(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "full"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        filled = subprocess.run(["dd", "if=/dev/zero", f"of={mount / 'filler'}", "bs=4k"], capture_output=True,
                                text=True, check=False)
        assert "No space left" in filled.stderr, filled.stderr  # the filesystem is full
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_state_directory_is_a_typed_error_before_anything_is_created(world: World,
                                                                           full_state_dir: Path) -> None:
    before = world.snapshot()
    up = world.kti("up", str(world.suite), KTI_STATE_DIR=str(full_state_dir))
    assert up.returncode != 0
    assert "Hint:" in up.stderr, up.stderr
    assert "Traceback" not in up.stderr, up.stderr
    assert "No space left" in up.stderr or "no space" in up.stderr.lower(), up.stderr
    assert world.snapshot() == before
