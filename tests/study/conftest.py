"""Fixtures for the study runner tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from study_cases import tiny_study


@pytest.fixture
def study_file(tmp_path: Path):
    return lambda **changes: tiny_study(tmp_path, **changes)
