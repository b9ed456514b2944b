"""The lab settings file: ``NAME=VALUE`` lines that ``hack/setup`` writes to ``.kti/env``.

It says where this machine's kind and kubectl are, which node image to use and which offline base
images exist (``PYTHON_IMAGE=kti-base/python:bookworm-…``). Variables set in the environment win —
even when set to nothing, which is how a test hides one; a variable **absent** from the environment
is read from the first settings file of:

1. ``$KTI_ENV_FILE`` (set to nothing: no file is read);
2. ``.kti/env`` in the working directory or the nearest parent holding one;
3. ``.kti/env`` of the kubetest-infra checkout this package runs from (an editable install, as
   ``hack/setup`` makes), so a suite written anywhere on the machine finds the lab.

Read where the values are used — ``${env:…}`` in suite.yaml (:mod:`kubetest_infra.suite`), the kind
binary (:mod:`kubetest_infra.cluster`), ``kti doctor`` — so ``kti`` and the pytest plugin both see
them without ``source .kti/env``. The process environment itself is never changed. See docs/labs.md.
"""

from __future__ import annotations

import os
import re
from collections import ChainMap
from collections.abc import Mapping
from pathlib import Path

ENV_FILE_ENV = "KTI_ENV_FILE"
RELATIVE = Path(".kti") / "env"
_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def find_file(cwd: Path | None = None, env: Mapping[str, str] | None = None) -> Path | None:
    """The lab settings file in effect, or None."""
    env = os.environ if env is None else env
    if ENV_FILE_ENV in env:
        chosen = env[ENV_FILE_ENV].strip()
        return Path(chosen).expanduser() if chosen else None
    start = (cwd or Path.cwd()).resolve()
    for directory in (start, *start.parents):
        if (directory / RELATIVE).is_file():
            return directory / RELATIVE
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / RELATIVE).is_file():
        return checkout / RELATIVE
    return None


def read_file(path: Path) -> dict[str, str]:
    """``NAME=VALUE`` lines (``export`` allowed, quotes stripped; blank lines and ``#`` comments skipped).
    An unreadable file gives nothing: the settings are a convenience, never a requirement."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    values: dict[str, str] = {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m:
            value = m.group(2).strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[m.group(1)] = value
    return values


def settings(cwd: Path | None = None, env: Mapping[str, str] | None = None) -> tuple[Path | None, dict[str, str]]:
    """(the file, the values it gives for variables absent from ``env``)."""
    env = os.environ if env is None else env
    path = find_file(cwd, env)
    if path is None:
        return None, {}
    return path, {k: v for k, v in read_file(path).items() if k not in env}


def environ(cwd: Path | None = None) -> Mapping[str, str]:
    """The process environment, with the lab settings underneath it."""
    return ChainMap(dict(os.environ), settings(cwd)[1])


def get(name: str, default: str | None = None) -> str | None:
    """One variable: the environment's value (even empty), else the lab settings', else ``default``."""
    if name in os.environ:
        return os.environ[name]
    return settings()[1].get(name, default)
