"""An interrupted run stops its informer; a wait for a first list must end then, not sit out its timeout.

Found by the fault tier: SIGINT while a service task was starting (``kti up`` applying) took 63 s to
undo — the informer had been stopped, and ``ensure()`` then waited the full 60 s for a first list the
stopped reflectors would never deliver. No API server is needed: the reflectors here never list.
"""

from __future__ import annotations

import threading
import time

import pytest

from kubetest_infra import kubewatch
from kubetest_infra.kubewatch import Informer, WatchError


def test_ensure_on_a_stopped_informer_raises_at_once() -> None:
    informer = Informer(object(), "ns")
    informer.stop()
    with pytest.raises(WatchError, match="stopped") as info:
        informer.ensure("Pod", timeout=600)
    assert "took over" not in info.value.message


def test_stop_wakes_an_ensure_waiting_for_its_first_list(monkeypatch: pytest.MonkeyPatch) -> None:
    def never_lists(self: kubewatch._Reflector) -> None:  # an API server that does not answer
        while not self.informer.stopped:
            time.sleep(0.01)

    monkeypatch.setattr(kubewatch._Reflector, "_run", never_lists)
    informer = Informer(object(), "ns")
    outcome: list[BaseException] = []

    def ensure() -> None:
        try:
            informer.ensure("Pod", "Deployment", timeout=600)
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=ensure, daemon=True)
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive(), "ensure waits for the first list"
    informer.stop()
    waiter.join(30)  # a bound to detect the hang, not a timing assertion: the fix returns at once
    assert not waiter.is_alive(), "stop() did not wake ensure(): it would sit out its 600 s timeout"
    assert len(outcome) == 1 and isinstance(outcome[0], WatchError) and "stopped" in str(outcome[0])
