"""docs/tutorial.md, executed: every ``bash`` block in order (unless marked ``<!-- not run: … -->``),
every file shown under ``<!-- file: NAME -->`` written, in a fresh directory, with the real ``kti`` and
``pytest`` of this checkout on a real Kind cluster. The only changes to what the page says: the cluster
name and host port (``KTI_TUTORIAL_CLUSTER``, ``KTI_TUTORIAL_HOSTPORT``) so the run cannot collide with
another session's, passed to ``kti init`` as options and replaced in the ``curl`` URL."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import lab_kind_binary

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "docs" / "tutorial.md"
CLUSTER = os.environ.get("KTI_TUTORIAL_CLUSTER", "kti-tutorial")
HOST_PORT = os.environ.get("KTI_TUTORIAL_HOSTPORT", "38092")
_BLOCK = re.compile(r"(?:<!-- (?P<mark>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)\n```", re.DOTALL)


def steps(text: str) -> list[tuple[str, str, str]]:
    """("file", NAME, CONTENT) and ("run", "", COMMANDS) in page order; unmarked non-bash blocks are prose."""
    out = []
    for m in _BLOCK.finditer(text):
        mark, lang, body = (m.group("mark") or "").strip(), m.group("lang"), m.group("body")
        if mark.startswith("file:"):
            out.append(("file", mark.split(":", 1)[1].strip(), body + "\n"))
        elif lang == "bash" and not mark.startswith("not run"):
            out.append(("run", "", body))
    return out


def script(text: str, cluster: str, host_port: str) -> str:
    lines = ["set -euxo pipefail"]
    for kind, name, body in steps(text):
        if kind == "file":
            lines += [f"cat > {name} <<'KTI_TUTORIAL_EOF'", body.rstrip("\n"), "KTI_TUTORIAL_EOF"]
        else:
            body = re.sub(r"\bkti init\b", f"kti init --cluster {cluster} --host-port {host_port}", body)
            lines.append(body.replace("38080", host_port))
    return "\n".join(lines) + "\n"


def test_the_page_has_the_five_steps() -> None:
    found = steps(TUTORIAL.read_text())
    runs = "\n".join(body for kind, _, body in found if kind == "run")
    for command in ("kti init", "kti up .", "pytest", "kti down ."):
        assert command in runs
    assert {name for kind, name, _ in found if kind == "file"} == {"app.py", "Dockerfile"}


def test_the_tutorial_runs_as_written(tmp_path: Path) -> None:
    text = script(TUTORIAL.read_text(), CLUSTER, HOST_PORT)
    bindir = str(Path(sys.executable).parent)  # this checkout's kti and pytest
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "KTI_STATE_DIR": str(tmp_path / "state"),
           "PYTEST_ADDOPTS": "-p no:cacheprovider"}
    env.pop("KTI_SUITE", None)
    for name in ("KTI_RUN_ID", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_TESTRUNUID"):
        env.pop(name, None)
    kind = lab_kind_binary() or "kind"
    try:
        result = subprocess.run(["bash", "-c", text], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=900, check=False)
        log = f"--- script ---\n{text}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
        assert result.returncode == 0, log
        assert "hello from kubetest-infra" in result.stdout, log
        assert re.search(r"\b2 passed\b", result.stdout), log
        hello = tmp_path / "hello"
        assert sorted(p.name for p in hello.iterdir() if not p.name.startswith((".", "__"))) == [
            "Dockerfile", "app.py", "conftest.py", "manifests", "suite.yaml", "test_hello.py"]
        clusters = subprocess.run([kind, "get", "clusters"], capture_output=True, text=True, check=True).stdout
        assert CLUSTER not in clusters.split(), "kti down left the cluster"
        images = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", "localhost/hello"],
                                capture_output=True, text=True, check=True).stdout.split()
        assert images == [], f"kti down left image tags: {images}"
    finally:
        if (tmp_path / "hello" / "suite.yaml").is_file():  # after a failure: remove what the tutorial created
            subprocess.run([str(Path(sys.executable).parent / "kti"), "down", "--force", "."], cwd=tmp_path / "hello",
                           env=env, capture_output=True, timeout=300, check=False)

