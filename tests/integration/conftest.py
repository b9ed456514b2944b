"""Fixtures for the docker tier: the real engine, offline base images, builders that clean up.

A test marked ``each_engine`` runs once per engine (``[docker]``, ``[podman]``): the ``engine`` fixture
is parametrized indirectly, the root conftest marks the podman run with the ``podman`` tier (skipped
loudly, or failed when ``KTI_REQUIRE_TIERS`` names podman). Unmarked tests get the run's engine
(``$KTI_ENGINE`` or auto-detected).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kubetest_infra.build import Builder
from kubetest_infra.cleanup import managed_images, remove_run_images, run_refs
from kubetest_infra.engine import ENGINES, Engine, get_engine
from kubetest_infra.tags import new_run_id

ROOT = Path(__file__).resolve().parents[2]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("each_engine") and "engine" in metafunc.fixturenames:
        metafunc.parametrize("engine", ENGINES, indirect=True, scope="session")


@pytest.fixture(scope="session")
def engine(request: pytest.FixtureRequest) -> Engine:
    name = getattr(request, "param", None)
    return get_engine(name)


def podman_name(ref: str) -> str:
    """The name podman gives a docker image it loads: a short name gets ``localhost/`` (hack/lab/podman)."""
    first, slash, _ = ref.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return ref
    return f"localhost/{ref}"


def _base_image(kind: str, env_name: str, engine: Engine | None = None) -> str:
    ref = _docker_base_image(kind, env_name)
    if engine is None or engine.name != "podman":
        return ref
    name = podman_name(ref)
    if engine.inspect_image(name) is None:
        message = f"base image {name} is not in podman's store (hack/lab/podman setup copies it from docker)"
        if "podman" in os.environ.get("KTI_REQUIRE_TIERS", ""):
            pytest.fail(message, pytrace=False)
        pytest.skip(f"podman tier SKIPPED: {message}")
    return name


def _docker_base_image(kind: str, env_name: str) -> str:
    if os.environ.get(env_name):
        return os.environ[env_name]
    proc = subprocess.run(["bash", str(ROOT / "hack" / "base-images"), kind], capture_output=True, text=True,
                          check=False)
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        if key == env_name and value:
            return value
    message = f"base image {kind!r} unavailable: hack/base-images failed: {proc.stderr.strip()[-500:]}"
    if "docker" in os.environ.get("KTI_REQUIRE_TIERS", ""):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def busybox(engine: Engine) -> str:
    """A local image with a shell (no registry here: built from Debian's busybox-static), in ``engine``."""
    return _base_image("busybox", "BUSYBOX_IMAGE", engine)


BuilderFactory = Callable[..., Builder]


@pytest.fixture
def make_builder(engine: Engine, tmp_path: Path) -> Iterator[BuilderFactory]:
    """Builders with fresh run ids; every tag they create is removed after the test, and checked."""
    run_ids: list[str] = []

    def factory(consumer: str = "itest", **kw: object) -> Builder:
        run_id = str(kw.pop("run_id", None) or new_run_id())
        run_ids.append(run_id)
        return Builder(engine, run_id, consumer, cache_dir=tmp_path / "digest-cache", **kw)  # type: ignore[arg-type]

    yield factory
    leftovers: list[str] = []
    for run_id in run_ids:
        removal = remove_run_images(engine, run_id)
        leftovers.extend(removal.failed)
    images = managed_images(engine)
    for run_id in run_ids:
        leftovers.extend(run_refs(images, run_id))
    assert not leftovers, f"tags left behind: {leftovers}"


def write_context(root: Path, files: dict[str, str], dockerfile: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(dockerfile)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


def image_files(engine: Engine, ref: str, prefix: str = "ctx/") -> set[str]:
    """Paths under /ctx in the image, read from `docker export` of a created (never started) container."""
    cid = subprocess.run([engine.binary, "create", ref, "/none"], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        export = subprocess.run([engine.binary, "export", cid], capture_output=True, check=True)
        listing = subprocess.run(["tar", "-t"], input=export.stdout, capture_output=True, check=True).stdout
    finally:
        removed = subprocess.run([engine.binary, "rm", "-f", cid], capture_output=True, text=True, check=False)
        # podman under parallel load: the image stays "in use by a container" when this fails unseen
        assert removed.returncode == 0, f"{engine.binary} rm -f {cid}: {removed.stderr.strip()}"
    out = set()
    for line in listing.decode().splitlines():
        line = line.rstrip("/")
        if line.startswith(prefix) and line != prefix.rstrip("/"):
            out.add(line[len(prefix):])
    return out


def run_in(engine: Engine, ref: str, *cmd: str) -> str:
    return subprocess.run([engine.binary, "run", "--rm", ref, *cmd], capture_output=True, text=True,
                          check=True).stdout


def container_count(engine: Engine) -> int:
    out = subprocess.run([engine.binary, "ps", "-aq"], capture_output=True, text=True, check=True).stdout
    return len(out.split())
