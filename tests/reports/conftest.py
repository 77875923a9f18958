"""Fixtures of the report tests (the synthetic study builder lives in report_cases.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_cases import synthetic_runs, write_study


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    return write_study(tmp_path / "study_shd", synthetic_runs(alpha_effect=0.03))
