"""preflight.check beyond the catalogue: what passes, what it plans, everything reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetest_infra.preflight import PreflightError, check, check_suite, local_refs, planned_refs
from kubetest_infra.suite import load_suite
from tests.unit.test_bad_inputs import RUN, Workspace

ROOT = Path(__file__).resolve().parents[2]


def test_the_datastorage_suite_passes_and_plans_its_loads() -> None:
    suite = load_suite(ROOT / "suites" / "datastorage", env={})
    plan = check(suite, planned_refs(suite, RUN), allowed_refs=local_refs(suite, RUN).values(), env={})
    assert plan.references == {"postgres": {"postgres"}, "redis": {"redis"}, "migrations": {"datastorage"},
                                "datastorage": {"datastorage"}}
    assert plan.warnings == ()


def test_planned_and_local_refs() -> None:
    suite = load_suite(ROOT / "suites" / "datastorage", env={})
    assert planned_refs(suite, "r1") == {"datastorage": "localhost/datastorage:datastorage-r1",
                                         "postgres": "docker.io/library/postgres:16",
                                         "redis": "docker.io/library/redis:7"}
    assert local_refs(suite, "r1")["postgres"] == "localhost/postgres:datastorage-r1"


def test_every_problem_at_once(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ws.create()
    ws.suite("context: ../../ctx", "context: ../../ctx\n    dockerfile: Dockerfle")
    ws.edit("manifests/s/db.yaml", "metadata: {name: db}", "metadata: {generateName: db-}")
    ws.edit("manifests/s/web.yaml", "${image:app}", "${image:ap}")
    with pytest.raises(PreflightError) as info:
        ws.preflight()
    fields = sorted(p.field for p in info.value.problems)
    assert fields == ["images.app.dockerfile", "services.db.manifests[0]", "services.web.manifests[0]"]
    assert str(info.value).startswith("3 problems found before starting; nothing was started")


def test_root_may_bind_a_privileged_port_and_nobody_else(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, euid=0)
    ws.create()
    ws.suite("host_port: 38080}", "host_port: 80}")
    ws.suite("port: 38080, path", "port: 80, path")
    ws.preflight()
    ws.euid = 1000
    with pytest.raises(PreflightError, match="privileged"):
        ws.preflight()


def test_unused_build_args_are_a_warning(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ws.create()
    ws.suite("context: ../../ctx", "context: ../../ctx\n    build_args: {NOT_USED: x}")
    dockerfile = tmp_path / "ctx" / "Dockerfile"
    assert ws.preflight().warnings == (
        f"images.app.build_args: NOT_USED not declared by any ARG in {dockerfile} (unused)",)


def test_a_pod_host_port_exposes_the_node_port(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ws.create()
    ws.edit("manifests/s/web.yaml", "nodePort: 30080", "nodePort: 30090")
    ws.edit("manifests/s/web.yaml", "        image: ${image:app}\n",
            "        image: ${image:app}\n        ports: [{containerPort: 8080, hostPort: 30080}]\n")
    ws.preflight()


def test_check_suite_plans_with_the_pinned_run_id_or_a_stand_in(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ws.create()
    ws.edit("manifests/s/web.yaml", "${image:app}", "localhost/app:s-ci-7")  # the exact ref of run ci-7
    suite = ws.load()
    check_suite(suite, "ci-7", env={})
    check_suite(suite, env={"KTI_RUN_ID": "ci-7"})
    with pytest.raises(PreflightError, match="this run built localhost/app:s-preflight"):
        check_suite(suite, env={})
