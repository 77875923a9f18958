"""Page assembly: sections of text, tables and figures, rendered once to HTML and to markdown.

Every table on the page is a view of a CSV written beside it (its name is printed under the
table), and every figure names the CSV its numbers come from, so any number can be traced
to the runs. All text from user files (study names, datasets, ids) is escaped here;
plotly.js is embedded once, in the first figure, so the page opens offline.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np
import pandas as pd
import plotly.graph_objects as go

Formatter = Callable[[object], str]


@dataclass
class Table:
    """A view of ``df`` (the CSV ``csv``): ``columns`` maps a header to a column name or a formatter of a row."""

    df: pd.DataFrame
    csv: str
    columns: dict[str, Union[str, Callable[[pd.Series], str]]] | None = None
    caption: str = ""
    summary: bool = False  # also in summary.md
    tags: dict[str, Callable[[pd.Series], str]] | None = None  # header -> CSS class of its cells (HTML only)
    count: bool = True  # print the CSV's row count under the table (off when the view reshapes the CSV)


@dataclass
class Figure:
    fig: go.Figure
    name: str  # file stem for static exports
    csv: str


@dataclass
class Text:
    text: str
    summary: bool = False
    css: str = ""  # a CSS class of the paragraph (HTML only), e.g. "note" or "lead"


@dataclass
class Bullets:
    items: list[str]
    summary: bool = False


Block = Union[Table, Figure, Text, Bullets]


@dataclass
class Section:
    """A heading and its blocks. ``box``: drawn as the boxed verdict at the top of the page.
    ``collapsed``: a one-line summary shown instead of the blocks (which stay one click away
    in the page and are left out of the markdown summary)."""

    title: str
    blocks: list[Block] = field(default_factory=list)
    level: int = 2
    box: bool = False
    collapsed: str | None = None


def fmt(x: object) -> str:
    """Numbers as on the page: 4 significant digits, large or tiny ones in e-notation, NaN as '–'.

    >>> fmt(0.7379123), fmt(6594560.0), fmt(float("nan")), fmt(3), fmt(512.0)
    ('0.7379', '6.59e+06', '–', '3', '512')
    """
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            return "–"
        if x == int(x) and abs(x) < 1e6:
            return str(int(x))
        return f"{x:.3g}" if (abs(x) >= 1e5 or abs(x) < 1e-3) else f"{x:.4g}"
    try:
        f = float(x)  # type: ignore[arg-type]  # numpy scalars; anything else falls through
        return fmt(int(f) if f == int(f) and abs(f) < 1e6 and "int" in type(x).__name__ else f)
    except (TypeError, ValueError, OverflowError):
        return str(x)


def pct(x: object, signed: bool = False) -> str:
    """An accuracy (a fraction) in percent with one decimal; ``signed`` for differences in points.

    >>> pct(0.87777), pct(-0.0312, signed=True), pct(-0.0002, signed=True), pct(float("nan"))
    ('87.8', '-3.1', '0.0', '–')
    """
    try:
        v = 100.0 * float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(v):
        return "–"
    if round(v, 1) == 0:
        return "0.0"  # neither "-0.0" nor "+0.0"
    return f"{v:+.1f}" if signed else f"{v:.1f}"


def byte_unit(values: object) -> tuple[float, str]:
    """The divisor and name that print byte counts as a person reads them (B, KiB, MiB, GiB).

    >>> byte_unit([512.0, 34408.5]), byte_unit([3e6]), byte_unit([float("nan")])
    ((1024, 'KiB'), (1048576, 'MiB'), (1, 'B'))
    """
    m = _largest(values)
    for div, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if m >= div:
            return div, name
    return 1, "B"


def mac_unit(values: object) -> tuple[float, str]:
    """The divisor and name for MAC counts: k, M or G MACs (M from 10⁵ up, so 0.2 M rather than 200 k; G from 10⁹).

    >>> mac_unit([827392.0]), mac_unit([6.06e9]), mac_unit([5e3])
    ((1000000.0, 'M MACs'), (1000000000.0, 'G MACs'), (1000.0, 'k MACs'))
    """
    m = _largest(values)
    if m >= 1e9:
        return 1e9, "G MACs"
    if m >= 1e5:
        return 1e6, "M MACs"
    return (1e3, "k MACs") if m >= 1e3 else (1.0, "MACs")


def _largest(values: object) -> float:
    v = pd.to_numeric(pd.Series(np.ravel(np.asarray(values, dtype=object))), errors="coerce").to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    return float(np.abs(v).max()) if v.size else float("nan")


def scaled(col: str, div: float) -> Callable[[pd.Series], str]:
    """A table column formatter: ``row[col] / div`` with :func:`fmt`."""
    return lambda r: fmt(float(r[col]) / div) if r.get(col) is not None else "–"


def pm(row: pd.Series, col: str) -> str:
    """``mean ± std`` of ``col`` from a configuration row (std omitted with one seed)."""
    m, s = row.get(f"{col}_mean"), row.get(f"{col}_std")
    return fmt(m) if s is None or not math.isfinite(float(s)) else f"{fmt(m)} ± {fmt(s)}"


def _cells(t: Table) -> tuple[list[str], list[list[str]]]:
    cols = t.columns or {c: c for c in t.df.columns}
    rows = []
    for _, r in t.df.iterrows():
        rows.append([v(r) if callable(v) else fmt(r.get(v)) for v in cols.values()])
    return list(cols), rows


_SHORT = 16  # characters: a cell this short is kept on one line


def _classes(t: Table) -> list[list[str]]:
    head = list(t.columns or {c: c for c in t.df.columns})
    tags = t.tags or {}
    return [[tags[h](r) if h in tags else "" for h in head] for _, r in t.df.iterrows()]


def _html_table(t: Table) -> str:
    head, rows = _cells(t)
    classes = _classes(t)
    out = ['<div class="tbl"><table>']
    if t.caption:
        out.append(f"<caption>{html.escape(t.caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>")
    for r, cl in zip(rows, classes):
        # short cells (numbers, names) never break; long text may wrap, so a table fits the page
        out.append("<tr>" + "".join(
            f'<td class="{html.escape(" ".join(x for x in (k, "n" if len(c) <= _SHORT else "") if x))}">'
            f"{html.escape(c)}</td>" if (k or len(c) <= _SHORT) else f"<td>{html.escape(c)}</td>"
            for c, k in zip(r, cl)) + "</tr>")
    out.append("</tbody></table>")
    out.append(f'<p class="src">numbers: <a href="{html.escape(t.csv)}">{html.escape(t.csv)}</a>'
               f"{' (' + str(len(t.df)) + ' rows)' if len(t.df) and t.count else ''}</p></div>")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#222}
h1{font-size:1.6rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}h3{margin-top:1.6rem}
table{border-collapse:collapse;font-size:.82rem;margin:.4rem 0}td,th{border:1px solid #ddd;padding:.2rem .45rem;text-align:right}td.n{white-space:nowrap}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}caption{text-align:left;font-weight:600;padding:.3rem 0}
.tbl{overflow-x:auto}.src{color:#666;font-size:.78rem;margin:.1rem 0 1rem}.fig{margin:1rem 0 .2rem}
li{margin:.25rem 0}.note{color:#555;font-size:.9rem}
.verdict{border:2px solid #333;border-radius:6px;padding:.3rem 1rem .6rem;margin:1.2rem 0;background:#fcfcfc}
.verdict h2{margin-top:.6rem;border:none}.verdict h3{margin:.8rem 0 .2rem;font-size:1.05rem}
.verdict td,.verdict th{font-size:.9rem}.verdict th:last-child{text-align:left}
.verdict table{min-width:58rem}p.lead{font-weight:600;font-size:1.1rem;margin:1rem 0 .1rem}
p.sub{margin:.1rem 0 .3rem}
td.fav-stllr{background:#dbe9f6;color:#0b3d6e;font-weight:600;text-align:left}
td.fav-bptt{background:#f8dcdc;color:#7a1212;font-weight:600;text-align:left}
td.fav-none{background:#eee;color:#444;text-align:left}
details.collapsed>summary{cursor:pointer;margin:1.4rem 0 .3rem}details.collapsed>summary>*{display:inline}
details.collapsed>summary h2,details.collapsed>summary h3{font-size:1.1rem;border:none}
details.collapsed>summary span{color:#555;margin-left:.6rem}
"""


def _block_html(b: Block, first: bool) -> tuple[str, bool]:
    """One block as HTML; ``first`` is True until plotly.js has been inlined."""
    if isinstance(b, Text):
        css = f' class="{html.escape(b.css)}"' if b.css else ""
        return f"<p{css}>{html.escape(b.text)}</p>", first
    if isinstance(b, Bullets):
        return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in b.items) + "</ul>", first
    if isinstance(b, Table):
        return _html_table(b), first
    div = b.fig.to_html(full_html=False, include_plotlyjs=True if first else False,
                        config={"displaylogo": False, "toImageButtonOptions": {"filename": b.name}})
    return (f'<div class="fig">{div}</div><p class="src">numbers: '
            f'<a href="{html.escape(b.csv)}">{html.escape(b.csv)}</a></p>'), False


def render_html(title: str, intro: list[str], sections: list[Section]) -> str:
    """The whole page; plotly.js is inlined with the first figure only (no network needed)."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    parts += [f'<p class="note">{html.escape(p)}</p>' for p in intro]
    first = True
    for s in sections:
        head = f"<h{s.level}>{html.escape(s.title)}</h{s.level}>"
        if s.collapsed is not None:  # one line; the blocks one click away
            parts.append(f'<details class="collapsed"><summary>{head}<span>{html.escape(s.collapsed)}</span></summary>')
        elif s.box:
            parts.append(f'<div class="verdict" id="verdict">{head}')
        else:
            parts.append(head)
        for b in s.blocks:
            text, first = _block_html(b, first)
            parts.append(text)
        if s.collapsed is not None:
            parts.append("</details>")
        elif s.box:
            parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, intro: list[str], sections: list[Section]) -> str:
    """The summary: the blocks marked ``summary`` (tables, answers), readable without the page."""
    out = [f"# {_md(title)}", ""] + [f"{_md(p)}  " for p in intro] + [""]
    for s in sections:
        if s.collapsed is not None:
            out += ["#" * s.level + " " + _md(s.title), "", _md(s.collapsed), ""]
            continue
        blocks = [b for b in s.blocks if getattr(b, "summary", False)]
        if not blocks:
            continue
        out += ["#" * s.level + " " + _md(s.title), ""]
        for b in blocks:
            if isinstance(b, Text):
                out += [_md(b.text), ""]
            elif isinstance(b, Bullets):
                out += [f"- {_md(i)}" for i in b.items] + [""]
            elif isinstance(b, Table):
                head, rows = _cells(b)
                if b.caption:
                    out += [f"**{_md(b.caption)}**", ""]
                out += ["| " + " | ".join(_md(h) for h in head) + " |", "|" + "---|" * len(head)]
                out += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
                out += ["", f"(numbers: `{b.csv}`)", ""]
    return "\n".join(out)
