"""Shared by the benchmark scripts: the offline python base image and the JSON output."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def base_image() -> str:
    """The python base image (``$PYTHON_IMAGE``, else built by hack/base-images)."""
    if os.environ.get("PYTHON_IMAGE"):
        return os.environ["PYTHON_IMAGE"]
    out = subprocess.run(["bash", str(ROOT / "hack" / "base-images"), "python"], capture_output=True, text=True,
                         check=True).stdout
    return out.strip().split("=", 1)[1]


def write_results(results: dict[str, Any], out: Path) -> None:
    """Print the results as JSON and write them to ``out``."""
    text = json.dumps(results, indent=2, default=str)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(text)
