"""Static figures for papers (PNG, SVG, PDF) through kaleido, with the system's Chromium.

kaleido (>= 1.0) drives a Chrome-family browser that it finds on ``PATH`` (``chromium`` from
Debian's package is found as is) or at ``BROWSER_PATH``; it downloads nothing here. It is an
optional dependency: without it (or without a browser) ``--format`` fails with one line.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from typing import TYPE_CHECKING

from stllr_engine.errors import StllrError

if TYPE_CHECKING:
    import plotly.graph_objects as go

#: Static figure formats (``stllr report --format``).
FORMATS = ("png", "svg", "pdf")

_HINT = ("install kaleido (pip install 'kaleido>=1') and a Chromium (apt-get install chromium), "
         "or set BROWSER_PATH to a Chrome/Chromium binary")


def browser_path() -> str | None:
    """The browser kaleido will use: ``BROWSER_PATH`` or the first Chrome/Chromium on ``PATH``."""
    env = os.environ.get("BROWSER_PATH")
    if env:
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def check_available(formats: tuple[str, ...]) -> None:
    """Fail early, before any work, when static export cannot run.

    Raises:
        StllrError: kaleido or a browser is missing.
    """
    if not formats:
        return
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise StllrError(f"report: --format {formats[0]} needs kaleido; {_HINT}") from None
    if browser_path() is None:
        raise StllrError(f"report: --format {formats[0]} needs a Chrome or Chromium browser; {_HINT}")


def export_figures(figures: dict[str, "go.Figure"], folder: Path, formats: tuple[str, ...],
                   *, width: int = 1000, height: int | None = None) -> list[Path]:
    """Write every figure in every format to ``folder/<name>.<format>`` in one browser session.

    Raises:
        StllrError: kaleido or the browser is missing or fails to start.
    """
    check_available(formats)
    folder.mkdir(parents=True, exist_ok=True)
    figs, paths = [], []
    for fmt in formats:
        for name, fig in figures.items():
            figs.append(fig)
            paths.append(folder / f"{name}.{fmt}")
    if not figs:
        return []
    import plotly.io as pio

    try:
        pio.write_images(figs, paths, width=width, height=height)
    except Exception as exc:  # kaleido/choreographer raise their own types when the browser cannot start
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StllrError(f"report: static export failed ({first[:160]}); {_HINT}") from None
    return paths
