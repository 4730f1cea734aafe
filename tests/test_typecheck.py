"""The type check: ``mypy`` with the project's configuration (``[tool.mypy]`` in pyproject.toml) finds no error in
``lightning_geo/``. The whole package is checked, with no module excluded or set to ``ignore_errors``: every module,
the public API of every part included, must stay clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_finds_no_type_error():
    pytest.importorskip("mypy", reason="the type check needs mypy (pip install -e '.[test]')")
    # the cache (.mypy_cache, ignored by git) makes a re-run take seconds; a cold run about a minute on 2 cores
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"mypy found type errors:\n{done.stdout[-6000:]}{done.stderr[-2000:]}"
    assert done.stdout.startswith("Success: no issues found"), done.stdout
