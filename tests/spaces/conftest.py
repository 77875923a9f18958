"""Fixtures for the study-file tests: a small valid study written to a temporary file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from space_cases import small_study


@pytest.fixture
def write_study(tmp_path: Path) -> Callable[..., Path]:
    """``write_study(d=None, text=None)``: the path of a study file with dict ``d`` (or raw text)."""
    def write(d: dict[str, Any] | None = None, text: str | None = None, name: str = "study.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text if text is not None else yaml.safe_dump(d if d is not None else small_study(),
                                                                     sort_keys=False))
        return path

    return write
