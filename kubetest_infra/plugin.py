"""pytest plugin (``pytest11`` entry point ``kubetest_infra``).

This release provides the run-wide pieces every later fixture builds on: one run id shared by all
pytest-xdist workers of a session, the run's engine, and the ``docker``/``kind`` markers.
"""

from __future__ import annotations

import pytest

from kubetest_infra.engine import Engine, get_engine
from kubetest_infra.tags import resolve_run_id


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kubetest-infra")
    group.addoption("--kti-run-id", dest="kti_run_id", default=None,
                    help="run id for image tags (default: $KTI_RUN_ID, else shared by all xdist workers)")
    group.addoption("--kti-engine", dest="kti_engine", default=None,
                    help="container engine: docker | podman | auto (default: $KTI_ENGINE or auto)")
    parser.addini("kti_engine", "container engine for kubetest-infra", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "docker: needs a real container engine (docker or podman)")
    config.addinivalue_line("markers", "kind: needs a Kind cluster")


@pytest.fixture(scope="session")
def kti_run_id(pytestconfig: pytest.Config) -> str:
    """The run id of this test session; every xdist worker gets the same one."""
    return resolve_run_id(pytestconfig.getoption("kti_run_id"))


@pytest.fixture(scope="session")
def kti_engine(pytestconfig: pytest.Config) -> Engine:
    """The container engine for this session (fails with a hint when none answers)."""
    name = pytestconfig.getoption("kti_engine") or str(pytestconfig.getini("kti_engine")) or None
    return get_engine(name)
