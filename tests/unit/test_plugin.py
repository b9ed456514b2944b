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


SUITE_YAML = """
name: fake
cluster: {name: kti-fake}
images: {}
services:
  web: {manifests: [./web.yaml]}
"""

FAKE_CONFTEST = '''
import os, pathlib, time
import pytest
import kubetest_infra.plugin as plugin
import kubetest_infra.session as sess
from kubetest_infra.engine import Engine
from kubetest_infra.state import Environment

LOG = pathlib.Path(os.environ["KTI_TEST_OUT"])


class NoEngine:
    """A runner that refuses every command: the plugin's coordination must not need an engine."""
    def run(self, argv, **kw):
        raise AssertionError(f"no command may run here: {argv}")
    def pipe(self, *a, **kw):
        raise AssertionError("no command may run here")


def fake_up(self, *, run_id=None, **kw):
    rid = run_id or "fakerun1"
    (LOG / f"created-{os.getpid()}").write_text(rid)
    time.sleep(1.0)  # other workers arrive while the environment is being created
    return Environment(self.suite.name, rid, "kti-fake", str(LOG / "kubeconfig"), "fake",
                       {"web": "localhost/web:fake-" + rid}, {}, {"web": "http://127.0.0.1:1"}, False)


def fake_end(self, *, keep=False):
    (LOG / f"down-{os.getpid()}").write_text(str(len(list(LOG.glob("test-*")))) + (" keep" if keep else ""))
    return ["cluster kti-fake"]


sess.Session.up = fake_up
sess.Session.end = fake_end
plugin.get_engine = lambda name=None: Engine("docker", runner=NoEngine())


@pytest.fixture(scope="session")
def kti_engine():
    return Engine("docker", runner=NoEngine())
'''

ENV_TEST = """
import os, pathlib
def test_env(kti_env, kti_images, worker_id, request):
    out = pathlib.Path(os.environ["KTI_TEST_OUT"])
    name = request.node.module.__name__
    (out / f"test-{worker_id}-{os.getpid()}-{name}").write_text(kti_env.run_id + " " + kti_images["web"])
"""


@pytest.mark.parametrize("workers", [2, 4])
def test_kti_env_is_created_once_shared_by_all_workers_and_torn_down_once(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    """The xdist coordination of kti_env (lock, state file, controller tear-down) with a fake orchestrator;
    the real orchestrator is exercised by suites/datastorage under -n 2 in the kind tier."""
    out = pytester.mkdir("out")
    monkeypatch.setenv("KTI_TEST_OUT", str(out))
    monkeypatch.setenv("KTI_STATE_DIR", str(pytester.mkdir("state")))
    monkeypatch.delenv("KTI_RUN_ID", raising=False)
    suite = pytester.mkdir("suite")
    (suite / "suite.yaml").write_text(SUITE_YAML)
    (suite / "web.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\n")
    pytester.makeconftest(FAKE_CONFTEST)
    pytester.makepyfile(**{f"test_e{i}": ENV_TEST for i in range(8)})
    result = pytester.runpytest_subprocess("-n", str(workers), "--kti-suite", str(suite))
    result.assert_outcomes(passed=8)
    created = list(out.glob("created-*"))
    assert len(created) == 1, [p.name for p in created]
    tests = list(out.glob("test-*"))
    assert len({t.name.split("-")[1] for t in tests}) > 1, "the tests ran on several workers"
    assert {t.read_text() for t in tests} == {f"{created[0].read_text()} localhost/web:fake-{created[0].read_text()}"}
    downs = list(out.glob("down-*"))
    assert len(downs) == 1
    assert downs[0].read_text() == "8", "torn down after every test of every worker finished"
    assert downs[0].name.split("-")[1] not in {t.name.split("-")[2] for t in tests}, "the controller tears down"
    assert not list((pytester.path / "state" / "sessions").iterdir()), "the session's shared files are removed"


def test_an_interrupted_bring_up_stops_the_session(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the fault tier: Ctrl-C while ``kti_env`` brought the suite up failed that one test (exit
    1) and the session went on to the next tests; an interrupt stops the session (exit 2, as pytest's own)."""
    out = pytester.mkdir("out")
    monkeypatch.setenv("KTI_TEST_OUT", str(out))
    monkeypatch.setenv("KTI_STATE_DIR", str(pytester.mkdir("state")))
    suite = pytester.mkdir("suite")
    (suite / "suite.yaml").write_text(SUITE_YAML)
    (suite / "web.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\n")
    pytester.makeconftest(FAKE_CONFTEST + '''

from kubetest_infra.graph import GraphError

def interrupted_up(self, **kw):
    raise GraphError({}, {"cluster": "interrupted"}, {}, (), interrupted=True)

sess.Session.up = interrupted_up
''')
    pytester.makepyfile(test_a=ENV_TEST, test_b=ENV_TEST)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "--kti-suite", str(suite))
    assert result.ret == pytest.ExitCode.INTERRUPTED, result.stdout.str()
    assert not list(out.glob("test-*")), "no test ran after the interrupt"
    result.stdout.fnmatch_lines(["*KeyboardInterrupt*"])


REPORT_CONFTEST = FAKE_CONFTEST.replace('''def fake_up(self, *, run_id=None, **kw):
    rid = run_id or "fakerun1"''', '''def fake_up(self, *, run_id=None, on_event=None, **kw):
    rid = run_id or "fakerun1"
    on_event("cluster", "start", 0.0)
    on_event("cluster", "ok", 1.5)''').replace(
    '''{"web": "http://127.0.0.1:1"}, False)''',
    '''{"web": "http://127.0.0.1:1"}, False,
                       timings=(Timing("cluster", "cluster", 0.0, 1.5, "ok"),
                                Timing("deploy:web", "service", 1.5, 2.0, "ok")),
                       critical_path=("cluster", "deploy:web"), seconds=2.0)''').replace(
    "from kubetest_infra.state import Environment", "from kubetest_infra.state import Environment\n"
    "from kubetest_infra.graph import Timing")

REPORT_TESTS = """
import pytest

def test_ok(kti_env, kti_service_url):
    assert kti_service_url("web", "/x") == "http://127.0.0.1:1/x"

def test_fails(kti_env):
    assert False, "CrashLoopBackOff: web exited 1"

@pytest.mark.kti(suite="elsewhere")
def test_marked():
    pass
"""


@pytest.mark.parametrize("workers", [0, 2])
def test_controller_reports_suite_refs_timing_progress_junit_and_github(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    """With or without xdist, the terminal (the controller's) shows the bring-up progress, the summary
    (suite, run id, refs, fate, diagnostics) and the timing table; the JUnit XML report carries the
    run's properties; under GitHub Actions each failure is an ::error and the step summary has the table."""
    out = pytester.mkdir("out")
    monkeypatch.setenv("KTI_TEST_OUT", str(out))
    monkeypatch.setenv("KTI_STATE_DIR", str(pytester.mkdir("state")))
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    step = pytester.path / "step.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    monkeypatch.delenv("KTI_RUN_ID", raising=False)
    suite = pytester.mkdir("suite")
    (suite / "suite.yaml").write_text(SUITE_YAML)
    (suite / "web.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\n")
    pytester.makeconftest(REPORT_CONFTEST)
    pytester.makepyfile(test_report=REPORT_TESTS)
    xml = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess("-n", str(workers), "--kti-suite", str(suite), f"--junitxml={xml}",
                                           "--strict-markers")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "kubetest-infra: suite *suite; engine auto; reuse on; remove what it creates; state *",
        "[[]kti[]] cluster: started",
        "[[]kti[]] cluster: ok in 1.5s",
        "::error file=test_report.py,line=7,title=test_report.py%3A%3Atest_fails::*CrashLoopBackOff*",
        "*kubetest-infra*",
        "suite fake (*suite.yaml), run id fakerun1, cluster kti-fake: torn down",
        "  image web: localhost/web:fake-fakerun1",
        "  diagnostics: *diagnostics",
        "*fake: 2.0s total, critical path 2.0s*",
        "*deploy:web*",
    ])
    text = xml.read_text()
    assert '<property name="kti.run_id" value="fakerun1"' in text
    assert '<property name="kti.image.web" value="localhost/web:fake-fakerun1"' in text
    assert 'name="kti.diagnostics"' in text
    md = step.read_text()
    assert "| deploy:web | 1.5 | 2.0 | 0.5 | * |" in md
    assert "`localhost/web:fake-fakerun1`" in md


def test_plugin_registers_only_its_own_marker(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.kti(suite=PATH): *kubetest_infra plugin*"])
    assert not [line for line in result.stdout.lines if line.startswith(("@pytest.mark.docker", "@pytest.mark.kind"))]


def test_header_needs_no_engine(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(pytester.mkdir("empty-bin")))  # no docker, podman or kind to call
    pytester.makeini("[pytest]\nkti_suite = suites/x\nkti_keep = true\n")
    pytester.makepyfile(test_one="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["kubetest-infra: suite suites/x; engine auto; reuse on; keep; state *"])


def test_a_test_of_another_suite_fails_with_a_hint_not_against_the_wrong_environment(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """One suite per session (several per session: not built yet): the suite of a test is its kti marker,
    else the nearest suite.yaml; a test of another suite than the session's fails at set-up."""
    out = pytester.mkdir("out")
    monkeypatch.setenv("KTI_TEST_OUT", str(out))
    monkeypatch.setenv("KTI_STATE_DIR", str(pytester.mkdir("state")))
    pytester.makeconftest(FAKE_CONFTEST)
    for name in ("alpha", "beta"):
        suite = pytester.mkdir(name)
        (suite / "suite.yaml").write_text(SUITE_YAML.replace("name: fake", f"name: {name}"))
        (suite / "web.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\n")
        (suite / f"test_{name}.py").write_text("def test_env(kti_env):\n    assert kti_env.suite\n")
    (pytester.path / "test_marked.py").write_text(
        "import pytest\n@pytest.mark.kti(suite='beta')\ndef test_m(kti_env):\n    pass\n")
    result = pytester.runpytest_subprocess("--kti-suite", "alpha", "alpha", "beta", "test_marked.py")
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(["*beta/test_beta.py::test_env belongs to suite */beta/suite.yaml, but this session "
                                 "serves */alpha/suite.yaml*"])
    assert "test_marked.py::test_m belongs to suite" in result.stdout.str()
    assert "Hint: one suite per pytest session" in result.stdout.str()
