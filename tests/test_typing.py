"""The code base stays mypy-clean (configuration in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_mypy_clean():
    pytest.importorskip("mypy")
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-m", "mypy"], cwd=root, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
