"""Ctrl-C / SIGTERM during a run: children terminated, tasks not waited for, undo exactly once, shielded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from kubetest_infra.graph import GraphError, Task, Undo, run_graph
from kubetest_infra.runner import SubprocessRunner, terminate_children
from kubetest_infra.signals import deferred, shielded, terminate_interrupts


def test_sigterm_becomes_keyboard_interrupt_inside_the_block() -> None:
    before = signal.getsignal(signal.SIGTERM)

    def cancelled_run() -> None:
        with terminate_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)

    with pytest.raises(KeyboardInterrupt):
        cancelled_run()
    assert signal.getsignal(signal.SIGTERM) is before, "the previous handler is restored"


def test_shielded_reports_and_ignores_further_signals(capsys: pytest.CaptureFixture[str]) -> None:
    done = False
    with shielded("undoing"):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        done = True
    assert done
    err = capsys.readouterr().err
    assert "SIGINT received while undoing" in err
    assert "SIGTERM received while undoing" in err


def test_terminate_children_ends_running_processes() -> None:
    runner = SubprocessRunner()
    result: dict[str, object] = {}

    def run() -> None:
        result["r"] = runner.run([sys.executable, "-c", "import time; time.sleep(60)"], check=False, timeout=120)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 10
    while terminate_children() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    t.join(10)
    assert not t.is_alive()
    assert result["r"].returncode == -signal.SIGTERM  # type: ignore[attr-defined]


def test_an_interrupt_stops_tasks_and_undoes_once_without_waiting_for_them() -> None:
    runner = SubprocessRunner()
    undone: list[str] = []
    undo = Undo()
    undo.add("cluster", lambda: undone.append("cluster"))

    def slow(_: object) -> None:  # a task blocked on a child process, like `kind create`
        runner.run([sys.executable, "-c", "import time; time.sleep(60)"], check=False, timeout=120)

    def on_event(task: str, event: str, _s: float) -> None:
        if task == "slow" and event == "start":
            threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()

    started = time.monotonic()
    with pytest.raises(GraphError) as info:
        run_graph([Task("slow", slow)], on_event=on_event, undo=undo)
    assert info.value.interrupted
    assert undone == ["cluster"], "the undo ran exactly once"
    assert time.monotonic() - started < 20, "the 60 s task was terminated, not waited for"
    assert undo.run() == [] and undone == ["cluster"]


def test_deferred_holds_an_interrupt_until_the_bookkeeping_is_done() -> None:
    steps: list[str] = []

    def bookkeeping() -> None:
        with deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)  # the handler has run by now: it only noted the signal
            steps.append("submitted")
            steps.append("recorded")

    with pytest.raises(KeyboardInterrupt):
        bookkeeping()
    assert steps == ["submitted", "recorded"]


def test_a_child_started_while_interrupts_are_deferred_can_still_be_terminated() -> None:
    with deferred():  # a signal mask would be inherited by the child: it could not be stopped by SIGTERM
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    proc.terminate()
    assert proc.wait(timeout=10) == -signal.SIGTERM


def test_an_interrupted_run_says_so_and_exits_130(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Found by the fault tier: an interrupted ``kti up`` exited 1 with the hint of a failed task ("fix the
    first failure above"); a cancel is reported as one (exit 130, as after Ctrl-C) with what to do next."""
    from kubetest_infra import cli

    interrupted = GraphError({}, {"cluster": "interrupted"}, {}, (), interrupted=True)
    assert "Ctrl-C or SIGTERM" in str(interrupted) and "kti down" in str(interrupted)
    assert "fix the first failure" not in str(interrupted)
    failed = GraphError({"build:web": RuntimeError("boom")}, {}, {}, ())
    for exc, code in ((interrupted, 130), (failed, 1)):
        def raise_it(_args: object, exc: BaseException = exc) -> int:
            raise exc
        monkeypatch.setitem(cli.COMMANDS, "status", raise_it)
        assert cli.main(["status"]) == code
    assert "kti status: error: interrupted (SIGINT or SIGTERM)" in capsys.readouterr().err
