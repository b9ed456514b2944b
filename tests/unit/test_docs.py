"""The documentation that must not rot: troubleshooting covers every failure reason and error class,
relative links resolve, and the tutorial holds the steps its kind-tier test runs."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import kubetest_infra
from kubetest_infra.errors import KtiError
from kubetest_infra.wait import HINTS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _headings(path: Path) -> set[str]:
    return set(re.findall(r"^### `([^`]+)`", path.read_text(), re.MULTILINE))


def _error_classes() -> set[str]:
    for module in pkgutil.iter_modules(kubetest_infra.__path__):
        if module.name != "plugin":  # a pytest plugin module: importing it is pytest's job
            importlib.import_module(f"kubetest_infra.{module.name}")
    found: set[str] = set()
    todo = [KtiError]
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("kubetest_infra") and cls.__name__ not in found:
            found.add(cls.__name__)
            todo.extend(cls.__subclasses__())
    return found


def test_every_pod_failure_reason_has_a_section() -> None:
    assert set(HINTS) - _headings(DOCS / "troubleshooting.md") == set()


def test_every_error_class_has_a_section() -> None:
    classes = _error_classes()
    assert "PodStartError" in classes  # the walk reaches classes defined outside errors.py
    assert classes - _headings(DOCS / "troubleshooting.md") == set()


def test_relative_links_in_the_docs_resolve() -> None:
    broken = []
    for md in [*DOCS.glob("*.md"), ROOT / "README.md", ROOT / "suites" / "README.md", ROOT / "CHANGELOG.md"]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", md.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (md.parent / target).exists():
                broken.append(f"{md.relative_to(ROOT)} → {target}")
    assert broken == []


def test_the_index_lists_every_page() -> None:
    index = (DOCS / "index.md").read_text()
    missing = [p.name for p in DOCS.glob("*.md") if p.name != "index.md" and f"]({p.name})" not in index]
    assert missing == []
