"""SIGKILL during ``kind create`` (the whole process group: the run and kind die at once, as when a CI
runner kills a job): the half-created cluster (a node container, our record in phase ``creating``, a
run ledger) must be recognised and removed, exactly it, by the next ``kti up`` (which then comes up),
by ``kti down`` and by ``kti gc``.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.faults.conftest import World
from tests.faults.harness import SENTINEL, deliver, finish, kti, start, until, wait_for
from tests.faults.test_interrupts import _record

pytestmark = [pytest.mark.faults]


def _kill_during_create(world: World) -> None:
    run = start(kti("up", str(world.suite)), world.env, world.root)
    wait_for(run, r"cluster: start", timeout=600)
    until(lambda: bool(world.listing().containers), 120, "kind's node container")
    time.sleep(3)  # kubeadm is running in the node
    deliver(run, signal.SIGKILL, group=True)
    finish(run, 30)
    half = world.listing()
    assert half.containers, "kind create had not made a node container yet: the fault missed its phase"
    assert any(s.startswith("runs/") for s in half.state), f"no run ledger after SIGKILL: {half.state}"
    assert "clusters/kti-faults/state.json" in half.state or not half.clusters, half.state


@pytest.mark.parametrize("finisher", ["down"])  # gc, and up then down: tests/faults/test_faults.py
def test_sigkill_during_kind_create(world: World, finisher: str) -> None:
    _kill_during_create(world)
    t0 = time.monotonic()
    if finisher == "gc":
        rc, out = world.kti("gc", "--older-than", "3650d")
    elif finisher == "down":
        rc, out = world.kti("down", str(world.suite))
    else:
        rc, out = world.kti("up", str(world.suite))
        assert rc == 0, f"kti up after a killed creation neither recovered nor refused cleanly:\n{out}"
        assert world.listing().clusters, out
        rc, out2 = world.kti("down", str(world.suite))
        out += out2
    seconds = time.monotonic() - t0
    assert rc == 0, out
    after = world.listing()
    assert after.leftovers() == {}, f"kti {finisher} left {after.leftovers()}\n{out}"
    assert SENTINEL in after.images
    assert not after.unreadable
    _record(f"SIGKILL creating + kti {finisher}", {"rc": rc, "finish_s": round(seconds, 1), "left": {}})
