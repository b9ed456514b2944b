"""The plugin's reporting on a real cluster under pytest-xdist: the controller shows the bring-up progress
as it happens, the summary (suite, run id, exact refs, fate, diagnostics) and the timing table; the JUnit
XML report has the run's properties; under GitHub Actions a failure is an ::error annotation and the step
summary has the timing table. Cluster and port: $KTI_REPORT_CLUSTER / $KTI_REPORT_HOSTPORT."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import lab_kind_binary, lab_node_image
from kubetest_infra.cluster import KindClusters
from kubetest_infra.engine import get_engine
from kubetest_infra.session import Session
from kubetest_infra.suite import load_suite
from tests.kind.stale_window import write_suite

pytest_plugins = ["pytester"]
CLUSTER = os.environ.get("KTI_REPORT_CLUSTER", "kti-report")
PORT = int(os.environ.get("KTI_REPORT_HOSTPORT", "38093"))

TESTS = """
import urllib.request

def test_web_answers(kti_service_url):
    with urllib.request.urlopen(kti_service_url("web", "/index.html"), timeout=5) as r:
        assert r.read().decode().strip() == "v0"

def test_images(kti_images):
    assert kti_images["web"].startswith("localhost/web:stale-")

def test_fails_on_purpose(kti_env):
    assert False, "on purpose"
"""


def test_controller_reports_a_real_bring_up_under_xdist(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    state = tmp_path / "state"
    suite = write_suite(tmp_path / "suite", cluster=CLUSTER, node_image=lab_node_image() or "", port=PORT,
                        base=os.environ.get("BUSYBOX_IMAGE", "busybox:1.36"))
    monkeypatch.setenv("KTI_STATE_DIR", str(state))
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "step.md"))
    monkeypatch.delenv("KTI_RUN_ID", raising=False)
    pytester.makepyfile(test_real=TESTS)
    xml = tmp_path / "junit.xml"
    try:
        result = pytester.runpytest_subprocess("-n", "2", "--kti-suite", str(suite), f"--junitxml={xml}",
                                               "-p", "no:cacheprovider")
    finally:
        clusters = KindClusters(get_engine(), state_dir=state, kind_binary=lab_kind_binary())
        if clusters.exists(CLUSTER):  # the session failed to tear down: remove what it left, by records only
            Session(load_suite(suite), get_engine(), clusters=clusters).down(force=True)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "kubetest-infra: suite *; engine auto; reuse on; remove what it creates; state *",
        "[[]kti[]] cluster: started",
        "*[[]kti[]] service:web: ok in *s",
        "::error file=*test_real.py,line=*,title=*test_real.py%3A%3Atest_fails_on_purpose::AssertionError: on purpose",
        "*kubetest-infra*",
        f"suite stale (*suite.yaml), run id *, cluster {CLUSTER}: torn down",
        "  image web: localhost/web:stale-*",
        f"  endpoint web: http://127.0.0.1:{PORT}",
        "*critical path*",
        "*service:web*[*]*",
    ])
    text = xml.read_text()
    assert f'<property name="kti.cluster" value="{CLUSTER}"' in text
    assert '<property name="kti.image.web" value="localhost/web:stale-' in text
    assert "| service:web |" in (tmp_path / "step.md").read_text()
    assert not KindClusters(get_engine(), state_dir=state, kind_binary=lab_kind_binary()).exists(CLUSTER)
