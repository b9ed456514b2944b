"""Faults of the components under a run: the node container killed during the image load; the
control-plane node paused (``docker pause``) for 10 s during the apply and during the wait.

Each ends in recovery (the run comes up) or a typed error with a ``Hint:`` — never a traceback, never a
hang beyond the configured bound — and then nothing of the run is left (after ``kti down`` where the
run kept its environment).
"""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import World
from tests.faults.harness import CLUSTER, SENTINEL, finish, kti, sh, start, wait_for
from tests.faults.test_interrupts import _record

pytestmark = [pytest.mark.faults]
NODE = f"{CLUSTER}-control-plane"
RUN_BOUND = 420.0  # seconds: cluster ~30-60 s + the service timeout (3m) + undo, with margin


def _settle(world: World, case: str, rc: int, output: str, seconds: float) -> str:
    outcome = "recovered" if rc == 0 else "typed error"
    if rc != 0:
        assert rc == 1, f"{case}: exit {rc}\n{output[-3000:]}"
        assert "Hint:" in output and "Traceback" not in output, f"{case}: not a typed error\n{output[-3000:]}"
    left = world.listing().leftovers()
    if left:  # kept (kti up keeps its environment) or recorded: kti down finishes it
        rc_down, out_down = world.kti("down", str(world.suite))
        assert rc_down == 0, out_down
    after = world.listing()
    assert after.leftovers() == {}, f"{case}: left {after.leftovers()}"
    assert SENTINEL in after.images and not after.unreadable
    last = [line for line in output.splitlines() if line.strip()][-1][:240] if output.strip() else ""
    _record(case, {"rc": rc, "outcome": outcome, "run_s": round(seconds, 1), "left_before_down": left,
                   "last_line": last})
    return outcome


@pytest.mark.parametrize("phase", ["applying"])  # the wait: tests/faults/test_faults.py
def test_control_plane_paused(world: World, phase: str) -> None:
    run = start(kti("up", str(world.suite)), world.env, world.root)
    wait_for(run, r"service:web: start", timeout=600)
    if phase == "waiting":
        time.sleep(6)  # applied; the readiness probe starts after 25 s
    sh("docker", "pause", NODE)
    try:
        time.sleep(10)
    finally:
        sh("docker", "unpause", NODE)
    rc = finish(run, RUN_BOUND)
    seconds = time.monotonic() - run.started
    _settle(world, f"control plane paused 10 s while {phase}", rc, run.output(), seconds)
