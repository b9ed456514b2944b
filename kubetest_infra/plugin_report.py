"""What the pytest plugin reports: the terminal summary, JUnit XML properties, GitHub Actions output.

Pure functions of the session's summary (a JSON-able dict the process that brought the environment up
sends to the controller — via xdist's ``workeroutput`` — or keeps itself without xdist), so the
controller, which never touches the cluster, can report it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubetest_infra.state import Environment


def _env(data: Mapping[str, Any]) -> Environment:
    from kubetest_infra.state import Environment  # lazy: the kubernetes client loads only when reporting

    return Environment.from_json(data["environment"])


def summary(env: Environment, *, attached: bool, suite_path: str) -> dict[str, Any]:
    """The session summary sent to the controller (JSON-able)."""
    return {"environment": env.to_json(), "attached": attached, "suite_path": suite_path,
            "diagnostics": str(Path(env.kubeconfig).parent / "diagnostics")}


def summary_lines(data: Mapping[str, Any], fate: str) -> list[str]:
    """Suite, run id, exact refs, what became of the environment, where diagnostics go."""
    env = _env(data)
    lines = [f"suite {env.suite} ({data.get('suite_path', '')}), run id {env.run_id}, cluster {env.cluster}"
             f"{' (attached)' if data.get('attached') else ''}: {fate}"]
    for name, ref in sorted(env.images.items()):
        reused = " (reused)" if name in env.reused_images else ""
        lines.append(f"  image {name}: {ref}{reused}")
    for name, url in sorted(env.endpoints.items()):
        lines.append(f"  endpoint {name}: {url}")
    lines.append(f"  diagnostics: {data.get('diagnostics', '')}")
    return lines


def timing_text(data: Mapping[str, Any]) -> str:
    """The timing table with the critical path (as ``kti up`` prints it), rendered to plain text."""
    from kubetest_infra.console import timing_table

    env = _env(data)
    if not env.timings:
        return ""
    out = io.StringIO()
    timing_table(env, out)
    return out.getvalue()


def timing_markdown(data: Mapping[str, Any]) -> str:
    """The timing table as GitHub-flavoured Markdown (for ``$GITHUB_STEP_SUMMARY``)."""
    env = _env(data)
    critical = sum(t.seconds for t in env.timings if t.id in env.critical_path)
    rows = [f"### kubetest-infra: {env.suite}, run `{env.run_id}`",
            "",
            f"{env.seconds:.1f} s total, critical path {critical:.1f} s",
            "",
            "| task | start | end | seconds | critical |",
            "|---|---:|---:|---:|:---:|"]
    rows += [f"| {t.id} | {t.start:.1f} | {t.end:.1f} | {t.seconds:.1f} | {'*' if t.id in env.critical_path else ''} |"
             for t in env.timings]
    rows += ["", "| image | reference |", "|---|---|"]
    rows += [f"| {n} | `{r}` |" for n, r in sorted(env.images.items())]
    return "\n".join(rows) + "\n"


def junit_properties(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``<testsuite>`` properties: run id, suite, cluster, every exact ref, the diagnostics path."""
    env = _env(data)
    props = [("kti.suite", env.suite), ("kti.run_id", env.run_id), ("kti.cluster", env.cluster),
             ("kti.diagnostics", str(data.get("diagnostics", "")))]
    props += [(f"kti.image.{n}", r) for n, r in sorted(env.images.items())]
    return props


def _escape(text: str, *, prop: bool = False) -> str:
    """GitHub workflow-command escaping (data; ``prop`` for property values)."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def github_error(title: str, message: str, *, file: str | None = None, line: int | None = None) -> str:
    """One ``::error`` workflow command (an annotation on the run and, with a file, on the line)."""
    where = [f"title={_escape(title, prop=True)}"]
    if file:
        where.insert(0, f"file={_escape(file, prop=True)}")
        if line:
            where.insert(1, f"line={line}")
    return f"::error {','.join(where)}::{_escape(message)}"


def failure_reason(longrepr: str) -> str:
    """The most telling line of a failure: a pod's start reason (``PodStartError``) or the first E line."""
    lines = [text for text in longrepr.splitlines() if text.startswith("E ")] or longrepr.splitlines()
    for marker in ("PodStartError", "CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "OOMKilled",
                   "CreateContainerConfigError", "reason"):
        for text in lines:
            if marker in text:
                return text.strip().removeprefix("E").strip()
    for text in lines:
        if text.startswith("E "):
            return text[1:].strip()
    return (lines[-1].strip() if lines else "failed")[:500]


def on_github() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"


def append_step_summary(text: str) -> bool:
    """Append Markdown to ``$GITHUB_STEP_SUMMARY`` (False when that file is not set)."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return False
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
    return True
