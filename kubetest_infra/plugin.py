"""pytest plugin (``pytest11`` entry point ``kubetest_infra``; disable with ``-p no:kubetest_infra``).

Options — command line, else environment variable, else ini key, else default:

========================== ======================= =================== =====================================
option                     environment             ini key             meaning
========================== ======================= =================== =====================================
``--kti-suite PATH``       ``KTI_SUITE``           ``kti_suite``       suite directory or suite.yaml
``--kti-engine NAME``      ``KTI_ENGINE``          ``kti_engine``      docker | podman | auto
``--kti-run-id ID``        ``KTI_RUN_ID``          ``kti_run_id``      run id for new image tags
``--kti-no-reuse-cluster`` ``KTI_REUSE=0``         ``kti_reuse``       start from a new environment
``--kti-keep-cluster``     ``KTI_KEEP=1``          ``kti_keep``        keep the environment at the end
``--kti-keep-on-failure``  ``KTI_KEEP_ON_FAILURE`` ``kti_keep_on_fa…`` keep it when set-up or a test fails
``--kti-no-cache``         ``KTI_NO_CACHE=1``      ``kti_no_cache``    never reuse images or the build cache
``--kti-pull``             ``KTI_PULL=1``          ``kti_pull``        pull every base image before digesting
========================== ======================= =================== =====================================

Fixtures (session-scoped unless said): ``kti_run_id`` (one id for every xdist worker), ``kti_engine``,
``kti_env`` (the suite's :class:`~kubetest_infra.state.Environment`), ``kti_images`` (name → exact ref),
``kti_service_url`` (``url(service, path)``), ``kti_namespace_factory`` (namespaces for module/class
fixtures), ``kti_namespace`` (function: a namespace per test, deleted after).

Marker ``kti(suite=PATH)``: the suite a test belongs to (else the nearest suite.yaml, else ``--kti-suite``);
one suite per session — a test of another suite fails at set-up with a hint. Reporting (controller,
also under xdist): header, live bring-up progress, a summary with the timing table, JUnit XML properties,
GitHub Actions annotations and step summary (:mod:`kubetest_infra.plugin_report`; docs/ci.md).

Ownership (see :mod:`kubetest_infra.session`): a session that finds the suite's environment running
(``kti up``, or a kept session) **attaches** to it — it takes its run id, so unchanged images are not
rebuilt, retagged or reloaded and unchanged workloads do not roll out — and leaves it running at the
end. A session that creates the environment removes it at the end (``--kti-keep-cluster`` keeps it).

Under pytest-xdist exactly one worker brings the environment up: the first to take the session's lock
(in the state directory, keyed by xdist's ``testrunuid``) runs it and writes the result; the others
attach to that. The controller process, which outlives the workers, owns the session and tears down
in ``pytest_sessionfinish``. SIGTERM is handled like Ctrl-C: the teardown still runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from kubetest_infra.engine import Engine, get_engine
from kubetest_infra.errors import ConfigError, KtiError
from kubetest_infra.plugin_report import (
    append_step_summary,
    failure_reason,
    github_error,
    junit_properties,
    on_github,
    summary,
    summary_lines,
    timing_markdown,
    timing_text,
)
from kubetest_infra.signals import install_terminate_handler
from kubetest_infra.tags import new_run_id, resolve_run_id

if TYPE_CHECKING:
    from kubetest_infra.session import Session
    from kubetest_infra.state import Environment, Owner
    from kubetest_infra.suite import Suite

STATE = "environment.json"
FAILED = "environment.failed"
_ENV_KEY = pytest.StashKey[Any]()
_SESSION_KEY = pytest.StashKey[str]()
_OWNER_KEY = pytest.StashKey[dict[str, Any]]()
_SUMMARY_KEY = pytest.StashKey[dict[str, Any]]()  # the session summary (see plugin_report.summary)
_FATE_KEY = pytest.StashKey[str]()
_TAIL_KEY = pytest.StashKey[Any]()
PROGRESS = "progress.log"
MARKERS = (
    "kti(suite=PATH): the kubetest-infra suite this test belongs to (registered by the kubetest_infra plugin)",
)
_TRUE = ("1", "true", "yes", "on")

# option dest → (environment variable, ini key, kind)
OPTIONS: dict[str, tuple[str, str, str]] = {
    "kti_suite": ("KTI_SUITE", "kti_suite", "str"),
    "kti_engine": ("KTI_ENGINE", "kti_engine", "str"),
    "kti_run_id": ("KTI_RUN_ID", "kti_run_id", "str"),
    "kti_reuse": ("KTI_REUSE", "kti_reuse", "bool"),
    "kti_keep": ("KTI_KEEP", "kti_keep", "bool"),
    "kti_keep_on_failure": ("KTI_KEEP_ON_FAILURE", "kti_keep_on_failure", "bool"),
    "kti_no_cache": ("KTI_NO_CACHE", "kti_no_cache", "bool"),
    "kti_pull": ("KTI_PULL", "kti_pull", "bool"),
    "kti_kubeconfig": ("KTI_KUBECONFIG", "kti_kubeconfig", "str"),
    "kti_context": ("KTI_CONTEXT", "kti_context", "str"),
    "kti_registry": ("KTI_PUSH_REGISTRY", "kti_registry", "str"),
    "kti_namespace": ("KTI_NAMESPACE", "kti_namespace", "str"),
}
_DEFAULTS: dict[str, Any] = {"kti_reuse": True, "kti_keep": False, "kti_keep_on_failure": False,
                             "kti_no_cache": False, "kti_pull": False}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kubetest-infra")
    group.addoption("--kti-suite", dest="kti_suite", default=None, help="suite directory or suite.yaml ($KTI_SUITE)")
    group.addoption("--kti-engine", dest="kti_engine", default=None,
                    help="container engine: docker | podman | auto ($KTI_ENGINE, default auto)")
    group.addoption("--kti-run-id", dest="kti_run_id", default=None,
                    help="run id for new image tags ($KTI_RUN_ID; default: the running environment's, else new)")
    group.addoption("--kti-reuse-cluster", dest="kti_reuse", action="store_true", default=None,
                    help="attach to a running environment of the suite (default)")
    group.addoption("--kti-no-reuse-cluster", dest="kti_reuse", action="store_false",
                    help="remove a running environment of the suite first and create a new one ($KTI_REUSE=0)")
    group.addoption("--kti-keep-cluster", dest="kti_keep", action="store_true", default=None,
                    help="keep the environment this session creates ($KTI_KEEP=1)")
    group.addoption("--kti-keep-on-failure", dest="kti_keep_on_failure", action="store_true", default=None,
                    help="keep it when set-up or a test fails, for inspection ($KTI_KEEP_ON_FAILURE=1)")
    group.addoption("--kti-no-cache", dest="kti_no_cache", action="store_true", default=None,
                    help="never reuse images or the build cache ($KTI_NO_CACHE=1)")
    group.addoption("--kti-pull", dest="kti_pull", action="store_true", default=None,
                    help="pull every base image before digesting ($KTI_PULL=1)")
    group.addoption("--kti-kubeconfig", dest="kti_kubeconfig", default=None,
                    help="use the cluster of this kubeconfig, never created or deleted ($KTI_KUBECONFIG; "
                    "needs --kti-registry; docs/remote-clusters.md)")
    group.addoption("--kti-context", dest="kti_context", default=None, help="its context ($KTI_CONTEXT)")
    group.addoption("--kti-registry", dest="kti_registry", default=None,
                    help="HOST[:PORT][/PREFIX] to push images to, deployed by digest ($KTI_PUSH_REGISTRY)")
    group.addoption("--kti-namespace", dest="kti_namespace", default=None,
                    help="with --kti-kubeconfig: the run's namespace template ($KTI_NAMESPACE, default "
                    "{suite}-{run_id})")
    for dest, (env, ini, kind) in OPTIONS.items():
        text = f"kubetest-infra: default of --{dest.replace('_', '-')} (${env})"
        if kind == "bool":
            parser.addini(ini, text, type="bool", default=_DEFAULTS.get(dest, False))
        else:
            parser.addini(ini, text, type="string", default="")


def option(config: pytest.Config, dest: str) -> Any:
    """An option's value: command line, else environment, else ini, else default."""
    value = config.getoption(dest)
    if value is not None:
        return value
    env, ini, kind = OPTIONS[dest]
    if os.environ.get(env):
        return os.environ[env].strip().lower() in _TRUE if kind == "bool" else os.environ[env]
    value = config.getini(ini)
    if kind == "bool":
        return bool(value)
    return str(value) or None


def pytest_configure(config: pytest.Config) -> None:
    run_id = option(config, "kti_run_id")
    if run_id:
        try:
            resolve_run_id(run_id)
        except KtiError as exc:
            raise pytest.UsageError(f"--kti-run-id: {exc}") from exc
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    _FAILURES.clear()
    install_terminate_handler()  # a CI cancel (SIGTERM) tears down like Ctrl-C
    if _is_controller(config):
        from kubetest_infra.state import Owner

        key = getattr(config.option, "testrunuid", None) or uuid.uuid4().hex
        if hasattr(config.option, "testrunuid"):
            config.option.testrunuid = key  # xdist hands the same id to every worker
        config.stash[_SESSION_KEY] = key
        config.stash[_OWNER_KEY] = Owner.current("pytest").to_json()
    else:
        winput = config.workerinput  # type: ignore[attr-defined]
        config.stash[_SESSION_KEY] = str(winput.get("testrunuid") or os.environ.get("PYTEST_XDIST_TESTRUNUID", ""))
        config.stash[_OWNER_KEY] = winput.get("kti_owner") or {}


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist (controller): every worker learns who owns the session (the controller process)."""
    node.workerinput["kti_owner"] = node.config.stash[_OWNER_KEY]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist (controller): the worker that brought the environment up sends its summary here."""
    data = getattr(node, "workeroutput", {}).get("kti_summary")
    if data:
        node.config.stash[_SUMMARY_KEY] = data


def pytest_report_header(config: pytest.Config) -> list[str]:
    """What is configured — never an engine or cluster call (the header must cost nothing)."""
    from kubetest_infra.state import default_state_dir

    suite = option(config, "kti_suite") or "none (tests using kti_env need --kti-suite)"
    keep = "keep" if option(config, "kti_keep") else ("keep on failure" if option(config, "kti_keep_on_failure")
                                                      else "remove what it creates")
    return [f"kubetest-infra: suite {suite}; engine {option(config, 'kti_engine') or 'auto'}; "
            f"reuse {'on' if option(config, 'kti_reuse') else 'off'}; {keep}; state {default_state_dir()}"]


def _is_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def _owner(config: pytest.Config) -> Owner:
    from kubetest_infra.state import Owner

    data = config.stash.get(_OWNER_KEY, {})
    return Owner.from_json(data) if data else Owner.current("pytest")


def _session_dir(config: pytest.Config) -> Path:
    """The directory every process of this session shares: ``<state dir>/sessions/<testrunuid>``."""
    from kubetest_infra.state import default_state_dir

    return default_state_dir() / "sessions" / config.stash[_SESSION_KEY][:32]


@pytest.fixture(scope="session")
def kti_run_id(pytestconfig: pytest.Config) -> str:
    """The run id of this test session for new image tags; every xdist worker derives the same one from
    ``$PYTEST_XDIST_TESTRUNUID``. An attached environment keeps its own: use ``kti_env.run_id``."""
    try:
        return resolve_run_id(option(pytestconfig, "kti_run_id"))
    except KtiError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def kti_engine(pytestconfig: pytest.Config) -> Engine:
    """The container engine for this session (fails with a hint when none answers)."""
    return get_engine(option(pytestconfig, "kti_engine"))


_CHOSEN_KEY = pytest.StashKey[Path]()


def _suite_file(path: Path) -> Path:
    """A suite directory or file as the resolved path of its suite.yaml (how suites are compared)."""
    return (path / "suite.yaml" if path.is_dir() else path).resolve()


def item_suite(item: pytest.Item) -> Path | None:
    """The suite a test belongs to: its ``kti(suite=…)`` marker, else the nearest suite.yaml of its
    directory (up to the rootdir), else None (the session's ``--kti-suite``)."""
    marker = item.get_closest_marker("kti")
    root = Path(item.config.rootpath)
    if marker is not None and marker.kwargs.get("suite"):
        path = Path(str(marker.kwargs["suite"]))
        return _suite_file(path if path.is_absolute() else root / path)
    here = Path(str(item.path)).resolve().parent
    for directory in (here, *here.parents):
        if (directory / "suite.yaml").is_file():
            return (directory / "suite.yaml").resolve()
        if directory == root.resolve():
            break
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A session serves one suite (several suites per session are not built yet, issue 13 item 2): a
    test of another suite fails at set-up with a hint instead of running against the wrong environment."""
    if "kti_env" not in getattr(item, "fixturenames", ()):
        return
    config = item.config
    wanted = item_suite(item)
    if wanted is None:
        return
    if _CHOSEN_KEY not in config.stash:
        value = option(config, "kti_suite")
        config.stash[_CHOSEN_KEY] = _suite_file(Path(value) if Path(value).is_absolute()
                                                else Path(config.rootpath) / value) if value else wanted
    chosen = config.stash[_CHOSEN_KEY]
    if wanted != chosen:
        pytest.fail(f"{item.nodeid} belongs to suite {wanted}, but this session serves {chosen}\n"
                    f"Hint: one suite per pytest session for now: run `pytest {wanted.parent}` on its own "
                    "(or pass --kti-suite to match)", pytrace=False)


def _suite_path(config: pytest.Config) -> Path:
    if _CHOSEN_KEY in config.stash:
        return config.stash[_CHOSEN_KEY]
    value = option(config, "kti_suite")
    if not value:
        raise pytest.UsageError("kti_env needs a suite: pass --kti-suite suites/NAME, set $KTI_SUITE, or set "
                                "kti_suite in the ini file")
    path = Path(value)
    return path if path.is_absolute() else Path(config.rootpath) / path


@pytest.fixture(scope="session")
def kti_env(pytestconfig: pytest.Config, kti_engine: Engine) -> Environment:
    """The suite's environment: brought up (or attached to) by exactly one xdist worker, shared by all."""
    from kubetest_infra.preflight import check_suite
    from kubetest_infra.session import session_key
    from kubetest_infra.state import Environment, locked
    from kubetest_infra.suite import load_suite

    shared = _session_dir(pytestconfig)
    state = shared / STATE
    with locked(shared / "session.lock", "this pytest session's environment"):
        if (shared / FAILED).exists():
            pytest.fail(f"the environment failed to come up in another worker:\n{(shared / FAILED).read_text()}",
                        pytrace=False)
        if state.exists():
            data = json.loads(state.read_text())
            if _suite_file(Path(data["suite_path"])) != _suite_file(_suite_path(pytestconfig)):
                pytest.fail(f"kti_env: another worker brought up {data['suite_path']}, this one needs "
                            f"{_suite_path(pytestconfig)}\nHint: one suite per pytest session for now (pass "
                            "--kti-suite)", pytrace=False)
            env = Environment.from_json(data["environment"])
        else:
            suite = load_suite(_suite_path(pytestconfig))
            try:
                check_suite(suite, option(pytestconfig, "kti_run_id"))
            except KtiError as exc:
                (shared / FAILED).write_text(str(exc))
                pytest.fail(f"kti_env: {exc}", pytrace=False)
            key = session_key("pytest", pytestconfig.stash[_SESSION_KEY][:16])
            try:
                session = _session(pytestconfig, suite, kti_engine, key, option(pytestconfig, "kti_run_id"))
            except KtiError as exc:
                (shared / FAILED).write_text(str(exc))
                pytest.fail(f"kti_env: {exc}", pytrace=False)
            try:
                env = session.up(run_id=option(pytestconfig, "kti_run_id"), reuse=option(pytestconfig, "kti_reuse"),
                                 keep_env=option(pytestconfig, "kti_keep"),
                                 keep_on_failure=option(pytestconfig, "kti_keep_on_failure"),
                                 no_cache=option(pytestconfig, "kti_no_cache"), pull=option(pytestconfig, "kti_pull"),
                                 on_event=_progress_writer(pytestconfig, shared / PROGRESS))
            except KtiError as exc:
                (shared / FAILED).write_text(str(exc))
                if getattr(exc, "interrupted", False):  # Ctrl-C/SIGTERM, already undone: stop the session
                    raise KeyboardInterrupt(str(exc)) from exc
                pytest.fail(f"kti_env: {exc}", pytrace=False)
            from kubetest_infra.state import write_json

            write_json(state, {"environment": env.to_json(), "suite_path": str(suite.path), "key": key,
                               "engine": kti_engine.name, "attached": session.attached})
            pytestconfig.stash[_SUMMARY_KEY] = summary(env, attached=session.attached, suite_path=str(suite.path))
    pytestconfig.stash[_ENV_KEY] = env
    return env  # ended by pytest_sessionfinish in the controller (or the single process)


@pytest.fixture(scope="session")
def kti_images(kti_env: Environment) -> dict[str, str]:
    """Image name → the exact reference this run built (or resolved) and deployed."""
    return dict(kti_env.images)


@pytest.fixture(scope="session")
def kti_service_url(kti_env: Environment) -> Callable[..., str]:
    """``kti_service_url("datastorage", "/health")`` → ``http://127.0.0.1:38081/health`` (session-scoped,
    so fixtures of any scope may use it)."""
    return kti_env.service_url


class NamespaceFactory:
    """Creates namespaces labelled with the run (``factory("label") → name``); ``delete(name)`` removes one,
    and every one still present is removed when the factory's session ends."""

    def __init__(self, env: Environment) -> None:
        from kubernetes import client

        self.env = env
        self.core: Any = client.CoreV1Api(env.api_client())
        self.names: list[str] = []

    def __call__(self, label: str = "test") -> str:
        name = f"kti-{new_run_id()[:10]}"
        self.core.create_namespace({"metadata": {"name": name, "labels": {
            "kubetest-infra/run": self.env.run_id, "kubetest-infra/test": _label(label)}}}, _request_timeout=30)
        self.names.append(name)
        return name

    def delete(self, name: str) -> None:
        self.core.delete_namespace(name, _request_timeout=30)
        self.names.remove(name)

    def close(self) -> None:
        for name in list(self.names):
            self.delete(name)


@pytest.fixture(scope="session")
def kti_namespace_factory(kti_env: Environment) -> Iterator[NamespaceFactory]:
    """Namespaces for module- or class-scoped fixtures: ``ns = kti_namespace_factory(request.node.name)``
    in a fixture of that scope, ``kti_namespace_factory.delete(ns)`` after its ``yield``."""
    factory = NamespaceFactory(kti_env)
    yield factory
    factory.close()


@pytest.fixture
def kti_namespace(kti_namespace_factory: NamespaceFactory, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of its own for this test, deleted afterwards."""
    name = kti_namespace_factory(request.node.name)
    yield name
    kti_namespace_factory.delete(name)


def _label(text: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:63].strip("-_.")
    return cleaned or "test"


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The controller ends the session's use of the environment, after every worker finished (first, so
    the JUnit XML report still takes the session's properties)."""
    config = session.config
    if not _is_controller(config):
        if _SUMMARY_KEY in config.stash:  # this worker brought the environment up: tell the controller
            config.workeroutput["kti_summary"] = config.stash[_SUMMARY_KEY]  # type: ignore[attr-defined]
        return
    if _SESSION_KEY not in config.stash:
        return
    _stop_tail(config)
    shared = _session_dir(config)
    if not shared.is_dir():
        return
    try:
        _end(config, shared, failed=session.testsfailed > 0 or exitstatus not in (0, 5))
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    if _SUMMARY_KEY in config.stash:
        _add_junit_properties(config, config.stash[_SUMMARY_KEY])


def _add_junit_properties(config: pytest.Config, data: dict[str, Any]) -> None:
    """The ``--junitxml`` report's ``<testsuite>`` properties (what ``record_testsuite_property`` adds)."""
    for plugin in config.pluginmanager.get_plugins():
        add = getattr(plugin, "add_global_property", None)
        if callable(add):
            for name, value in junit_properties(data):
                add(name, value)


def _end(config: pytest.Config, shared: Path, *, failed: bool) -> None:
    from kubetest_infra.cluster import KindClusters
    from kubetest_infra.session import finish_ledger, session_key
    from kubetest_infra.state import Environment, Ledger, StateError, default_state_dir, read_json
    from kubetest_infra.suite import load_suite

    key = session_key("pytest", config.stash[_SESSION_KEY][:16])
    try:
        data = read_json(shared / STATE, "pytest session state")
        engine = get_engine(data["engine"] if data else option(config, "kti_engine"))
        if data is None:  # set-up failed or was killed: finish whatever the ledger still lists
            ledger_path = default_state_dir() / "runs" / f"{key}.json"
            if ledger_path.is_file():
                done = finish_ledger(Ledger.load(ledger_path), engine, KindClusters(engine))
                _say(config, "removed what the interrupted set-up created", done.lines())
            return
        keep = option(config, "kti_keep") or (failed and option(config, "kti_keep_on_failure"))
        run_id = str(data["environment"]["run_id"])
        lines = _session(config, load_suite(data["suite_path"]), engine, key, run_id).end(keep=keep)
        verb = "kept" if keep else ("left (attached)" if data.get("attached") else "torn down")
        config.stash[_FATE_KEY] = verb
        config.stash.setdefault(_SUMMARY_KEY, summary(Environment.from_json(data["environment"]),
                                                      attached=bool(data.get("attached")),
                                                      suite_path=data["suite_path"]))
        _say(config, f"environment {verb}", lines)
    except (KtiError, StateError) as exc:
        _say(config, "tear-down failed", [str(exc)])


def _session(config: pytest.Config, suite: Suite, engine: Engine, key: str, run_id: str | None) -> Session:
    """The pytest session's :class:`Session`: on the suite's Kind cluster, or on the cluster of
    ``--kti-kubeconfig`` with images pushed to ``--kti-registry`` (docs/remote-clusters.md)."""
    from kubetest_infra.delivery import parse_registry
    from kubetest_infra.remote import RemoteCluster
    from kubetest_infra.session import Session

    kubeconfig, push = option(config, "kti_kubeconfig"), option(config, "kti_registry")
    if kubeconfig and not push:
        raise ConfigError("--kti-kubeconfig needs --kti-registry: a cluster kti did not create has no Kind nodes "
                          "to load into", hint="pass --kti-registry HOST[:PORT][/PREFIX] the cluster pulls from")
    remote = RemoteCluster(Path(kubeconfig).resolve(), option(config, "kti_context")) if kubeconfig else None
    if remote is not None:
        remote.check()
    return Session(suite, engine, key=key, owner=_owner(config), command="pytest", remote=remote,
                   registry=parse_registry(push) if push else None, run_id=run_id if remote else None,
                   namespace=option(config, "kti_namespace"))


def _say(config: pytest.Config, title: str, lines: list[str]) -> None:
    text = f"[kti] {title}" + (": " + ", ".join(lines) if lines else "")
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(text)
    else:
        sys.stderr.write(text + "\n")


def _progress_writer(config: pytest.Config, path: Path) -> Callable[[str, str, float], None]:
    """Bring-up progress: on this process's terminal without xdist; under xdist to the session's progress
    file, which the controller shows on its terminal (a worker's own output is not shown anywhere)."""
    from kubetest_infra.console import event_line

    reporter = config.pluginmanager.get_plugin("terminalreporter") if _is_controller(config) else None
    capture = config.pluginmanager.get_plugin("capturemanager")
    lock = threading.Lock()  # events come from the orchestrator's threads; the main thread waits in up()

    def write(task: str, event: str, seconds: float) -> None:
        line = f"[kti] {event_line(task, event, seconds)}"
        with lock:
            if reporter is not None:
                with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
                    reporter.write_line(line)
            else:
                with open(path, "a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
    return write


def pytest_sessionstart(session: pytest.Session) -> None:
    """The controller of an xdist session shows the workers' bring-up progress as it happens."""
    config = session.config
    xdist = config.pluginmanager.has_plugin("dsession")
    if not _is_controller(config) or _SESSION_KEY not in config.stash or not xdist:
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    path = _session_dir(config) / PROGRESS
    stop = threading.Event()

    def tail() -> None:
        seen = 0
        while True:
            done = stop.wait(0.5)
            try:
                with open(path, encoding="utf-8") as fh:
                    fh.seek(seen)
                    text = fh.read()
            except OSError:
                text = ""
            complete = text[:text.rfind("\n") + 1]
            seen += len(complete.encode())
            for line in complete.splitlines():
                reporter.write_line(line)
            if done:
                return

    thread = threading.Thread(target=tail, name="kti-progress", daemon=True)
    thread.start()
    config.stash[_TAIL_KEY] = (stop, thread)


def _stop_tail(config: pytest.Config) -> None:
    if _TAIL_KEY in config.stash:
        stop, thread = config.stash[_TAIL_KEY]
        stop.set()
        thread.join(timeout=5)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Under GitHub Actions, one ``::error`` annotation per failed set-up or test (shown by the controller)."""
    if not report.failed or not on_github():
        return
    path, line, _ = report.location
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None and str(crash.path).endswith(path):
        line = crash.lineno - 1  # the failing line itself, not the test's first line
    reason = failure_reason(str(report.longrepr))
    what = "set-up of " if report.when == "setup" else ("tear-down of " if report.when == "teardown" else "")
    _FAILURES.append(github_error(f"{what}{report.nodeid}", reason, file=path,
                                  line=(line + 1) if line is not None else None))


_FAILURES: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Suite, run id, exact refs, timing table with the critical path, what became of the environment and
    where the diagnostics are — on the controller's terminal (and the step summary under GitHub Actions)."""
    if not _is_controller(config):
        return
    for line in _FAILURES:
        terminalreporter.write_line(line)
    data = config.stash.get(_SUMMARY_KEY, None)
    if not data:
        return
    terminalreporter.section("kubetest-infra")
    for line in summary_lines(data, config.stash.get(_FATE_KEY, "in use")):
        terminalreporter.write_line(line)
    table = timing_text(data)
    if table:
        terminalreporter.write(table)
    if on_github():
        append_step_summary(timing_markdown(data))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed and "kti_env" in getattr(item, "fixturenames", ()):
        env = item.config.stash.get(_ENV_KEY, None)
        if env is not None:
            report.sections.append(("kubetest-infra", _failure_context(env)))
    return report


def _failure_context(env: Environment) -> str:
    from kubernetes import client

    lines = [f"suite {env.suite}, run {env.run_id}, kubeconfig {env.kubeconfig}, namespace {env.namespace}"]
    try:
        core: Any = client.CoreV1Api(env.api_client())
        events = [e for e in core.list_namespaced_event(env.namespace, _request_timeout=20).items
                  if e.type == "Warning"]
        lines.append("warning events:")
        lines.extend(f"  {e.involved_object.kind}/{e.involved_object.name} {e.reason}: {e.message}"
                     for e in events[-10:])
        for pod in core.list_namespaced_pod(env.namespace, _request_timeout=20).items:
            ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
            if ready or pod.status.phase == "Succeeded":
                continue
            for c in pod.spec.containers:
                try:
                    text = core.read_namespaced_pod_log(pod.metadata.name, env.namespace, container=c.name,
                                                        tail_lines=20, _request_timeout=20)
                except Exception:
                    text = "(no log)"
                lines.append(f"log tail {pod.metadata.name}/{c.name}:\n{text}")
    except Exception as exc:
        lines.append(f"(could not read the cluster: {exc})")
    lines.append(f"diagnostics: {Path(env.kubeconfig).parent / 'diagnostics'}")
    return "\n".join(lines)
