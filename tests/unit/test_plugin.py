"""The plugin under real pytest-xdist sessions (pytester runs them in subprocesses)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

TEST_FILE = """
import os, pathlib
def test_record(kti_run_id, worker_id):
    out = pathlib.Path(os.environ["KTI_TEST_OUT"])
    (out / f"{worker_id}-{os.getpid()}.txt").write_text(kti_run_id)
"""


@pytest.mark.parametrize("workers", [2, 4])
def test_all_xdist_workers_share_one_run_id(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                            workers: int) -> None:
    out = pytester.mkdir("out")
    monkeypatch.setenv("KTI_TEST_OUT", str(out))
    monkeypatch.delenv("KTI_RUN_ID", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_TESTRUNUID", raising=False)
    pytester.makepyfile(**{f"test_r{i}": TEST_FILE for i in range(8)})
    result = pytester.runpytest_subprocess("-n", str(workers))  # the plugin loads from its entry point
    result.assert_outcomes(passed=8)
    files = list(out.iterdir())
    assert len({f.name.split("-")[0] for f in files}) > 1, "the tests ran on several workers"
    ids = {f.read_text() for f in files}
    assert len(ids) == 1, ids
    assert len(ids.pop()) == 12


def test_run_id_option_wins(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    out = pytester.mkdir("out")
    monkeypatch.setenv("KTI_TEST_OUT", str(out))
    pytester.makepyfile(test_one=TEST_FILE)
    result = pytester.runpytest_subprocess("-n", "2", "--kti-run-id", "pinned-1")
    result.assert_outcomes(passed=1)
    assert [f.read_text() for f in out.iterdir()] == ["pinned-1"]


def test_bad_run_id_is_a_usage_error_with_hint(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_one="def test_x(kti_run_id):\n    pass\n")
    result = pytester.runpytest_subprocess("--kti-run-id", "bad id")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--kti-run-id*not a valid run id*", "*Hint:*"])
