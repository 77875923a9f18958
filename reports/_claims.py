"""Claims a report makes, and the Holm correction over all of them.

Every sentence of a report that says "X is better than Y" or "this factor matters" rests on
one :class:`Claim`: an estimate, a two-sided p-value of "no effect" and an interval. A report
collects the claims of every section (verdict box, Q1, Q2), adjusts their p-values together
with :func:`holm` and only then writes its sentences: a claim whose adjusted p-value is at or
above ``alpha`` is reported as "no difference / inconclusive", never as a direction.

p-values come from bootstrap resamples (:func:`bootstrap_p`): twice the share of resampled
estimates on the other side of zero, floored at ``1 / (n_boot + 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

__all__ = ["Claim", "holm", "bootstrap_p", "ALPHA", "N_BOOT"]

ALPHA = 0.05  # family-wise error rate of a report's claims
N_BOOT = 10_000  # bootstrap resamples behind every interval a report prints


@dataclass
class Claim:
    """One statement a report makes.

    Attributes:
        key: unique within a report, e.g. ``"verdict:digits:accuracy"``,
            ``"q1:synthetic_temporal:lambda_post|alpha_post<0"``.
        text: what the claim says when it holds (plain language, no figures).
        estimate: the effect (same units as ``low``/``high``).
        low, high: its interval (95% percentile bootstrap unless the section says otherwise).
        p: two-sided p-value of "no effect" before correction.
        p_adj: after :func:`holm` over every claim of the report (NaN until then).
        extra: anything a section wants to keep with the claim.
    """

    key: str
    text: str
    estimate: float
    low: float
    high: float
    p: float
    p_adj: float = float("nan")
    extra: dict = field(default_factory=dict)

    def holds(self, alpha: float = ALPHA) -> bool:
        """True when the adjusted p-value is below ``alpha`` (call :func:`holm` first)."""
        return bool(np.isfinite(self.p_adj) and self.p_adj < alpha)


def holm(claims: Iterable[Claim]) -> list[Claim]:
    """Holm's step-down adjustment over ``claims`` (in place; returns them as a list).

    Claims with a NaN p-value make no statement: they stay NaN and do not count.

    >>> cs = [Claim(str(i), "", 0, 0, 0, p) for i, p in enumerate([0.01, 0.04, 0.03, float("nan")])]
    >>> [round(c.p_adj, 2) for c in holm(cs)][:3]
    [0.03, 0.06, 0.06]
    """
    claims = list(claims)
    p = np.array([c.p for c in claims], dtype=float)
    adj = holm_adjust(p)
    for c, a in zip(claims, adj):
        c.p_adj = float(a)
    return claims


def holm_adjust(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values (NaN stays NaN; the family is the finite ones)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def bootstrap_p(boots: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "the effect is zero" from resampled estimates.

    >>> round(bootstrap_p(np.r_[np.full(990, 1.0), np.full(10, -1.0)]), 3)
    0.02
    """
    b = np.asarray(boots, dtype=float)
    b = b[np.isfinite(b)]
    if b.size == 0:
        return float("nan")
    share = min(np.mean(b <= 0), np.mean(b >= 0))
    return float(min(1.0, max(2.0 * share, 1.0 / (b.size + 1))))
