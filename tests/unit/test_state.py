"""Ownership records: atomic files, typed errors for corrupt ones, ledgers, owners, teardown decisions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kubetest_infra.state import (
    Environment,
    EnvironmentStore,
    EnvRecord,
    Item,
    Lease,
    Ledger,
    LockTimeoutError,
    Owner,
    StateError,
    atomic_write,
    ledgers,
    locked,
    read_json,
    teardown_decision,
    write_json,
)


def env(run_id: str = "r1") -> Environment:
    return Environment("ds", run_id, "kti-ds", "/k/kubeconfig", "ds", {"ds": f"localhost/ds:ds-{run_id}"},
                       {"ds": "sha256:1"}, {"ds": "http://127.0.0.1:1"}, False, digests={"ds": "sha256:d"})


def dead_owner() -> Owner:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return Owner(proc.pid, "1", Owner.current("x").host, "gone", 0)


def test_atomic_write_leaves_no_temp_file_and_sets_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "d" / "kubeconfig"
    atomic_write(path, "secret", mode=0o600)
    atomic_write(path, "secret2", mode=0o600)
    assert path.read_text() == "secret2"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in path.parent.iterdir()] == ["kubeconfig"]


@pytest.mark.parametrize("text", ['{"suite": "ds", "run_id": ', "", "[1, 2]", "\x00\x01"])
def test_a_truncated_or_foreign_state_file_is_a_typed_error_with_a_hint(tmp_path: Path, text: str) -> None:
    path = tmp_path / "environment.json"
    path.write_text(text)
    with pytest.raises(StateError) as info:
        read_json(path, "environment record")
    assert str(path) in str(info.value)
    assert "Hint:" in str(info.value)
    assert f"rm {path}" in str(info.value)


def test_a_missing_file_is_none_not_an_error(tmp_path: Path) -> None:
    assert read_json(tmp_path / "nothing.json", "x") is None


def test_a_ledger_records_intent_on_disk_before_anything_exists(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, "up-1", "r1", "ds", Owner.current("kti up"))
    ledger.record(Item("cluster", "kti-ds"))
    ledger.record(Item("image", "localhost/ds:ds-r1", "docker"))
    ledger.record(Item("cluster", "kti-ds"))  # once
    on_disk = Ledger.load(ledger.path)
    assert on_disk.items == (Item("cluster", "kti-ds"), Item("image", "localhost/ds:ds-r1", "docker"))
    assert on_disk.owner.pid == os.getpid()
    ledger.forget(Item("cluster", "kti-ds"))
    assert [i.kind for i in Ledger.load(ledger.path).items] == ["image"]
    assert [led.key for led in ledgers(tmp_path)] == ["up-1"]
    ledger.close()
    assert not ledger.path.exists()


def test_owner_liveness_checks_pid_and_start_time() -> None:
    me = Owner.current("pytest")
    assert me.alive()
    assert not dead_owner().alive()
    reused_pid = Owner(os.getpid(), "not-my-start-time", me.host, "other", 0)
    assert not reused_pid.alive(), "a pid reused by another process is not the owner"
    elsewhere = Owner(1, "", "another-host", "ci", 0)
    assert elsewhere.alive(), "another machine's process is never taken for gone"


def test_environment_record_round_trip_and_adopt(tmp_path: Path) -> None:
    store = EnvironmentStore(tmp_path, "kti-ds")
    rec = EnvRecord(env(), owned=(Item("cluster", "kti-ds"),), owner=Owner.current("pytest"), ephemeral=True,
                    runs=("r1",))
    rec = rec.adopt([Item("image", "localhost/ds:ds-r1", "docker"), Item("cluster", "kti-ds")])
    store.write(rec)
    back = store.read()
    assert back == rec
    assert len(back.owned) == 2
    assert json.loads(store.path.read_text())["run_id"] == "r1", "kti status still reads the top-level run id"
    assert back.with_run(env("r2")).runs == ("r1", "r2")


def test_leases_of_dead_sessions_are_dropped(tmp_path: Path) -> None:
    store = EnvironmentStore(tmp_path, "kti-ds")
    store.add_lease("alive", Owner.current("pytest"))
    store.add_lease("dead", dead_owner())
    assert [lease.key for lease in store.live_leases()] == ["alive"]
    assert [lease.key for lease in store.leases()] == ["alive"]
    assert store.live_leases(exclude="alive") == []


ME = Owner.current("pytest")
OTHER = Lease("other", Owner.current("pytest other"))


@pytest.mark.parametrize(("owner", "ephemeral", "others", "keep", "expected"), [
    (ME, True, [], False, "teardown"),           # created it, alone: removes it
    (ME, True, [], True, "keep"),                # --kti-keep-cluster
    (ME, True, [OTHER], False, "handover"),      # others attached: the last one out removes it
    (None, False, [], False, "leave"),           # kept by kti up: never removed by a session
    (None, True, [], False, "teardown"),         # ephemeral, creator gone, last one out
    (None, True, [OTHER], False, "leave"),       # ephemeral, others still attached
    (None, True, [], True, "leave"),             # attached session keeping: not its to remove
])
def test_teardown_decisions(owner: Owner | None, ephemeral: bool, others: list[Lease], keep: bool,
                            expected: str) -> None:
    rec = EnvRecord(env(), owner=owner, ephemeral=ephemeral)
    assert teardown_decision(rec, ME, others, keep) == expected


def test_an_attached_session_never_removes_a_live_creators_environment() -> None:
    creator = Owner.current("pytest creator")
    rec = EnvRecord(env(), owner=creator, ephemeral=True)
    attached = Owner(os.getpid(), "other-start", creator.host, "pytest attached", 0)
    assert teardown_decision(rec, attached, [], keep=False) == "leave"


def test_a_held_lock_times_out_naming_its_holder(tmp_path: Path) -> None:
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with locked(tmp_path / "x.lock", "cluster x"):
            held.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    try:
        with pytest.raises(LockTimeoutError) as info, locked(tmp_path / "x.lock", "cluster x", timeout=0.2):
            pass
        assert "cluster x" in str(info.value)
        assert f"pid {os.getpid()}" in str(info.value)
        assert "Hint:" in str(info.value)
    finally:
        release.set()
        t.join()


def test_write_json_is_readable_back(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"b": 1})
    assert read_json(tmp_path / "a.json", "a") == {"b": 1}
