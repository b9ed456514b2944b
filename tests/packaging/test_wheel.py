"""The package as users get it: ``python -m build`` makes an sdist and a wheel, ``twine check`` accepts
them, and the wheel installed into a clean virtualenv (dependencies from the package index) gives
``kti --version`` and a pytest whose ``--help`` shows the plugin's ``--kti-*`` options.

Needs the package index (no engine, no cluster); hack/test runs it with the docker tier.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from kubetest_infra import __version__

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str | Path, cwd: Path | None = None, timeout: float = 600) -> str:
    result = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            check=False)
    assert result.returncode == 0, f"{argv}: exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", out, ROOT, timeout=900)
    return out


def test_build_makes_an_sdist_and_a_wheel_that_twine_accepts(dist: Path) -> None:
    names = sorted(p.name for p in dist.iterdir())
    assert names == [f"kubetest_infra-{__version__}-py3-none-any.whl", f"kubetest_infra-{__version__}.tar.gz"]
    assert "PASSED" in run(sys.executable, "-m", "twine", "check", "--strict", *sorted(dist.iterdir()))
    wheel = zipfile.ZipFile(dist / names[0])
    files = wheel.namelist()
    assert "kubetest_infra/py.typed" in files
    assert not [f for f in files if f.startswith(("tests/", "suites/", "docs/", "hack/"))]
    metadata = wheel.read(f"kubetest_infra-{__version__}.dist-info/METADATA").decode()
    assert f"Version: {__version__}" in metadata
    assert "Requires-Python: >=3.11" in metadata
    entry_points = wheel.read(f"kubetest_infra-{__version__}.dist-info/entry_points.txt").decode()
    assert "kti = kubetest_infra.cli:main" in entry_points
    assert "kubetest_infra = kubetest_infra.plugin" in entry_points
    with tarfile.open(dist / names[1]) as sdist:
        assert f"kubetest_infra-{__version__}/pyproject.toml" in sdist.getnames()


def test_the_wheel_works_in_a_clean_virtualenv(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", next(dist.glob("*.whl")), timeout=900)
    assert run(venv / "bin" / "kti", "--version", cwd=tmp_path).strip() == f"kti (kubetest-infra) {__version__}"
    where = run(venv / "bin" / "python", "-c", "import kubetest_infra; print(kubetest_infra.__file__)", cwd=tmp_path)
    assert where.startswith(str(venv)), where  # the installed copy, not this checkout
    help_text = run(venv / "bin" / "pytest", "--help", cwd=tmp_path)
    options = set(re.findall(r"--kti-[a-z-]+", help_text))
    assert {"--kti-suite", "--kti-engine", "--kti-run-id", "--kti-keep-cluster"} <= options, help_text
    without = run(venv / "bin" / "pytest", "-p", "no:kubetest_infra", "--help", cwd=tmp_path)
    assert "--kti-suite" not in without
    schema = run(venv / "bin" / "kti", "schema", cwd=tmp_path)
    assert '"title": "kubetest-infra suite.yaml"' in schema
