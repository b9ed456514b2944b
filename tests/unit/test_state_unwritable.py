"""A state directory that cannot take a file is one typed StateError with a hint — found by the fault tier
(the state directory on a full tmpfs): ``kti up`` started its tasks, each failed on the ledger, and the
report listed three failures; and a failing ``mkdir`` of the state directory escaped as a raw OSError."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetest_infra.state import Ledger, Owner, StateError, write_json


def test_a_state_dir_that_cannot_be_made_is_a_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    with pytest.raises(StateError) as info:
        write_json(blocker / "runs" / "r.json", {"a": 1})
    assert "cannot write" in info.value.message and "free space and permissions" in (info.value.hint or "")


def test_a_ledger_is_written_before_the_run_starts(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "state", "kti-1", "r1", "web", Owner.current("kti up"))
    ledger.open()
    assert ledger.path.is_file() and not ledger.items
    ledger.close()
    assert not ledger.path.exists()
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    with pytest.raises(StateError):
        Ledger(blocked, "kti-2", "r2", "web", Owner.current("kti up")).open()
