"""pytest plugin (``pytest11`` entry point ``kubetest_infra``).

Options (also ini keys ``kti_suite``, ``kti_engine``): ``--kti-suite PATH``, ``--kti-reuse-cluster``/
``--kti-no-reuse-cluster``, ``--kti-keep-cluster``, ``--kti-no-cache``, ``--kti-run-id``, ``--kti-engine``.

Fixtures: ``kti_run_id`` (one id for every xdist worker), ``kti_engine``, ``kti_env`` (the suite's
:class:`~kubetest_infra.orchestrate.Environment`, built once per run), ``kti_images`` (name → exact ref),
``kti_namespace`` (a namespace per test, deleted after), ``kti_service_url`` (``url(service, path)``).

Under pytest-xdist exactly one worker creates the environment: the first to take a file lock in the
directory all workers share (``getbasetemp().parent``) brings the suite up and writes a state file;
the others wait on the lock and attach to it. Tear-down belongs to the controller process, in
``pytest_sessionfinish``, which runs after every worker has finished; without xdist the single process
tears down. ``--kti-keep-cluster`` keeps it; in CI (``$CI``) a failed session keeps it for inspection.
A failing test's report gets a ``kubetest-infra`` section with the namespace's warning events and the
log tail of pods that are not ready.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from kubetest_infra.engine import Engine, get_engine
from kubetest_infra.errors import KtiError
from kubetest_infra.tags import new_run_id, resolve_run_id

SHARED = "kti-shared"
STATE = "environment.json"
FAILED = "environment.failed"
_ENV_KEY = pytest.StashKey[Any]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kubetest-infra")
    group.addoption("--kti-run-id", dest="kti_run_id", default=None,
                    help="run id for image tags (default: $KTI_RUN_ID, else shared by all xdist workers)")
    group.addoption("--kti-engine", dest="kti_engine", default=None,
                    help="container engine: docker | podman | auto (default: $KTI_ENGINE or auto)")
    group.addoption("--kti-suite", dest="kti_suite", default=None, help="suite directory or suite.yaml")
    group.addoption("--kti-reuse-cluster", dest="kti_reuse", action="store_true", default=True,
                    help="reuse a cluster with the same name and config (default)")
    group.addoption("--kti-no-reuse-cluster", dest="kti_reuse", action="store_false",
                    help="always create a fresh cluster")
    group.addoption("--kti-keep-cluster", dest="kti_keep", action="store_true", default=False,
                    help="do not tear the environment down at the end")
    group.addoption("--kti-no-cache", dest="kti_no_cache", action="store_true", default=False,
                    help="never reuse images or the build cache")
    parser.addini("kti_engine", "container engine for kubetest-infra", default="")
    parser.addini("kti_suite", "suite directory or suite.yaml used by kti_env", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "docker: needs a real container engine (docker or podman)")
    config.addinivalue_line("markers", "kind: needs a Kind cluster")
    run_id = config.getoption("kti_run_id")
    if run_id:
        try:
            resolve_run_id(run_id)
        except KtiError as exc:
            raise pytest.UsageError(f"--kti-run-id: {exc}") from exc


def _is_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def _shared_dir(config: pytest.Config) -> Path:
    base = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    root = base if _is_controller(config) else base.parent
    path = Path(root) / SHARED
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def kti_run_id(pytestconfig: pytest.Config) -> str:
    """The run id of this test session; every xdist worker derives the same one from
    ``$PYTEST_XDIST_TESTRUNUID`` (see :func:`kubetest_infra.tags.resolve_run_id`)."""
    try:
        return resolve_run_id(pytestconfig.getoption("kti_run_id"))
    except KtiError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def kti_engine(pytestconfig: pytest.Config) -> Engine:
    """The container engine for this session (fails with a hint when none answers)."""
    name = pytestconfig.getoption("kti_engine") or str(pytestconfig.getini("kti_engine")) or None
    return get_engine(name)


def _suite_path(config: pytest.Config) -> Path:
    value = config.getoption("kti_suite") or str(config.getini("kti_suite"))
    if not value:
        raise pytest.UsageError("kti_env needs a suite: pass --kti-suite suites/NAME or set kti_suite in the ini file")
    path = Path(value)
    return path if path.is_absolute() else Path(config.rootpath) / path


@pytest.fixture(scope="session")
def kti_env(pytestconfig: pytest.Config, kti_engine: Engine, kti_run_id: str) -> Any:
    """The suite's environment: created by exactly one xdist worker, shared by all."""
    from kubetest_infra.orchestrate import Environment, Orchestrator
    from kubetest_infra.suite import load_suite

    suite = load_suite(_suite_path(pytestconfig))
    shared = _shared_dir(pytestconfig)
    state = shared / STATE
    with FileLock(str(shared / "environment.lock")):
        if (shared / FAILED).exists():
            pytest.fail(f"the environment failed to come up in another worker:\n{(shared / FAILED).read_text()}",
                        pytrace=False)
        if state.exists():
            env = Environment.from_json(json.loads(state.read_text()))
        else:
            orch = Orchestrator(suite, kti_engine, kti_run_id, reuse=pytestconfig.getoption("kti_reuse"),
                                keep=pytestconfig.getoption("kti_keep"),
                                no_cache=pytestconfig.getoption("kti_no_cache"),
                                on_event=lambda task, ev, s: print(f"[kti] {task}: {ev} {s:.1f}s", file=sys.stderr))
            try:
                env = orch.up()
            except KtiError as exc:
                (shared / FAILED).write_text(str(exc))
                pytest.fail(f"kti_env: {exc}", pytrace=False)
            state.write_text(json.dumps({**env.to_json(), "suite_path": str(suite.path)}))
    pytestconfig.stash[_ENV_KEY] = env
    return env  # torn down by pytest_sessionfinish in the controller (or the single process)


@pytest.fixture(scope="session")
def kti_images(kti_env: Any) -> dict[str, str]:
    """Image name → the exact reference this run built (or resolved) and deployed."""
    return dict(kti_env.images)


@pytest.fixture
def kti_service_url(kti_env: Any) -> Callable[..., str]:
    """``kti_service_url("datastorage", "/health")`` → ``http://127.0.0.1:38081/health``."""
    return kti_env.service_url  # type: ignore[no-any-return]


@pytest.fixture
def kti_namespace(kti_env: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of its own for this test, deleted afterwards."""
    from kubernetes import client

    core: Any = client.CoreV1Api(kti_env.api_client())
    name = f"kti-{new_run_id()[:10]}"
    core.create_namespace({"metadata": {"name": name, "labels": {
        "kubetest-infra/run": kti_env.run_id, "kubetest-infra/test": _label(request.node.name)}}})
    yield name
    core.delete_namespace(name)


def _label(text: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:63].strip("-_.")
    return cleaned or "test"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The controller tears down, after every worker finished (or the single process does)."""
    config = session.config
    if not _is_controller(config):
        return
    try:
        shared = _shared_dir(config)
    except Exception:
        return
    state = shared / STATE
    if not state.exists():
        return
    data = json.loads(state.read_text())
    keep = config.getoption("kti_keep") or (os.environ.get("CI") and session.testsfailed > 0)
    if keep:
        sys.stderr.write(f"\n[kti] keeping the environment of suite {data['suite']}: kubeconfig {data['kubeconfig']}\n")
        return
    from kubetest_infra.cluster import KindClusters
    from kubetest_infra.orchestrate import down
    from kubetest_infra.suite import load_suite

    try:
        engine = get_engine(config.getoption("kti_engine") or None)
        removed = down(load_suite(data["suite_path"]), engine, KindClusters(engine))
        sys.stderr.write(f"\n[kti] torn down: {', '.join(removed) or 'nothing'}\n")
    except KtiError as exc:
        sys.stderr.write(f"\n[kti] tear-down failed: {exc}\n")
    state.unlink(missing_ok=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed and "kti_env" in getattr(item, "fixturenames", ()):
        env = item.config.stash.get(_ENV_KEY, None)
        if env is not None:
            report.sections.append(("kubetest-infra", _failure_context(env)))
    return report


def _failure_context(env: Any) -> str:
    from kubernetes import client

    lines = [f"suite {env.suite}, run {env.run_id}, kubeconfig {env.kubeconfig}, namespace {env.namespace}"]
    try:
        core: Any = client.CoreV1Api(env.api_client())
        events = [e for e in core.list_namespaced_event(env.namespace).items if e.type == "Warning"]
        lines.append("warning events:")
        lines.extend(f"  {e.involved_object.kind}/{e.involved_object.name} {e.reason}: {e.message}"
                     for e in events[-10:])
        for pod in core.list_namespaced_pod(env.namespace).items:
            ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
            if ready or pod.status.phase == "Succeeded":
                continue
            for c in pod.spec.containers:
                try:
                    text = core.read_namespaced_pod_log(pod.metadata.name, env.namespace, container=c.name,
                                                        tail_lines=20)
                except Exception:
                    text = "(no log)"
                lines.append(f"log tail {pod.metadata.name}/{c.name}:\n{text}")
    except Exception as exc:
        lines.append(f"(could not read the cluster: {exc})")
    lines.append(f"diagnostics: {Path(env.kubeconfig).parent / 'diagnostics'}")
    return "\n".join(lines)
