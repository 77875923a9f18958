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


@dataclass
class Figure:
    fig: go.Figure
    name: str  # file stem for static exports
    csv: str


@dataclass
class Text:
    text: str
    summary: bool = False


@dataclass
class Bullets:
    items: list[str]
    summary: bool = False


Block = Union[Table, Figure, Text, Bullets]


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    level: int = 2


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


def _html_table(t: Table) -> str:
    head, rows = _cells(t)
    out = ['<div class="tbl"><table>']
    if t.caption:
        out.append(f"<caption>{html.escape(t.caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>")
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
    out.append("</tbody></table>")
    out.append(f'<p class="src">numbers: <a href="{html.escape(t.csv)}">{html.escape(t.csv)}</a>'
               f"{' (' + str(len(t.df)) + ' rows)' if len(t.df) else ''}</p></div>")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#222}
h1{font-size:1.6rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}h3{margin-top:1.6rem}
table{border-collapse:collapse;font-size:.82rem;margin:.4rem 0}td,th{border:1px solid #ddd;padding:.2rem .45rem;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}caption{text-align:left;font-weight:600;padding:.3rem 0}
.tbl{overflow-x:auto}.src{color:#666;font-size:.78rem;margin:.1rem 0 1rem}.fig{margin:1rem 0 .2rem}
li{margin:.25rem 0}.note{color:#555;font-size:.9rem}
"""


def render_html(title: str, intro: list[str], sections: list[Section]) -> str:
    """The whole page; plotly.js is inlined with the first figure only (no network needed)."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    parts += [f'<p class="note">{html.escape(p)}</p>' for p in intro]
    first = True
    for s in sections:
        parts.append(f"<h{s.level}>{html.escape(s.title)}</h{s.level}>")
        for b in s.blocks:
            if isinstance(b, Text):
                parts.append(f"<p>{html.escape(b.text)}</p>")
            elif isinstance(b, Bullets):
                parts.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in b.items) + "</ul>")
            elif isinstance(b, Table):
                parts.append(_html_table(b))
            else:
                div = b.fig.to_html(full_html=False, include_plotlyjs=True if first else False,
                                    config={"displaylogo": False, "toImageButtonOptions": {"filename": b.name}})
                first = False
                parts.append(f'<div class="fig">{div}</div><p class="src">numbers: '
                             f'<a href="{html.escape(b.csv)}">{html.escape(b.csv)}</a></p>')
    parts.append("</body></html>")
    return "\n".join(parts)


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, intro: list[str], sections: list[Section]) -> str:
    """The summary: the blocks marked ``summary`` (tables, answers), readable without the page."""
    out = [f"# {_md(title)}", ""] + [f"{_md(p)}  " for p in intro] + [""]
    for s in sections:
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
