"""Static figures for papers through kaleido and the system Chromium."""

from __future__ import annotations

import builtins
import importlib.util

import pytest
from report_cases import synthetic_runs

from reports import DEFAULT_OBJECTIVES, config_table, frontier, frontier_figure
from reports._static import browser_path, export_figures
from stllr_engine.errors import StllrError


def _figure():
    runs = synthetic_runs(widths=(64, 128), stllr_configs=3)
    configs = config_table(runs[runs["status"] == "complete"])
    return frontier_figure(frontier(configs, DEFAULT_OBJECTIVES), DEFAULT_OBJECTIVES, configs, title="shd")


@pytest.mark.skipif(importlib.util.find_spec("kaleido") is None, reason="kaleido not installed (pip install 'kaleido>=1')")
@pytest.mark.skipif(browser_path() is None, reason="no Chrome/Chromium for kaleido (apt-get install chromium or BROWSER_PATH)")
def test_png_export(tmp_path):
    try:
        (path,) = export_figures({"frontier_shd": _figure()}, tmp_path / "figures", ("png",))
    except StllrError as exc:
        pytest.skip(f"kaleido cannot start its browser here: {exc}")
    data = path.read_bytes()
    assert path.name == "frontier_shd.png" and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    print(f"\n{path.name}: {len(data)} bytes via {browser_path()}")


def test_missing_kaleido_is_one_line(tmp_path, monkeypatch):
    real = builtins.__import__

    def no_kaleido(name, *args, **kwargs):
        if name == "kaleido":
            raise ImportError("No module named 'kaleido'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_kaleido)
    with pytest.raises(StllrError, match=r"--format png needs kaleido"):
        export_figures({"f": _figure()}, tmp_path, ("png",))
