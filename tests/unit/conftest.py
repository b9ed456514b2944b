"""The unit tier reads no lab settings file (``.kti/env``): what a test sees is what it sets."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_lab_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTI_ENV_FILE", "")
