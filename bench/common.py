"""Shared pieces of the benchmarks: timing, GEMM peak, output as a table or JSON lines."""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any, Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(fns: dict[str, Callable[[], Any]], reps: dict[str, int] | int, device: torch.device,
                     warmup: int = 1, rounds: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Median wall time of each function, runs interleaved so that load drift hits all alike;
    ``rounds``, when given, receives every timed repetition of each (in round order)."""
    reps_of = {k: (reps if isinstance(reps, int) else reps.get(k, 3)) for k in fns}
    for name, fn in fns.items():
        for _ in range(warmup if reps_of[name] > 1 else 0):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(max(reps_of.values())):
        for name, fn in fns.items():
            if r >= reps_of[name]:
                continue
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    if rounds is not None:
        rounds.update(times)
    return {k: statistics.median(v) for k, v in times.items()}


def paired_ratio(rounds: dict[str, list[float]], num: str, den: str) -> tuple[float, list[float]]:
    """The median over rounds of ``num``'s time over ``den``'s in the same round, and every
    round's ratio: two steps timed side by side see the same load.

    >>> paired_ratio({"a": [1.0, 2.0, 6.0], "b": [2.0, 2.0, 4.0]}, "a", "b")
    (1.0, [0.5, 1.0, 1.5])
    """
    per_round = [a / b for a, b in zip(rounds[num], rounds[den])]
    return statistics.median(per_round), per_round


def gemm_peak_gflops(device: torch.device, n: int = 4096, reps: int = 5) -> float:
    """Achieved GFLOP/s of a large fp32 GEMM on ``device`` (best of ``reps``)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    c = torch.empty(n, n, device=device)
    torch.mm(a, b, out=c)
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def emit(records: list[dict[str, Any]], targets: list[dict[str, Any]], as_json: bool, columns: list[str],
         note: str | None = None) -> None:
    """Print records and target checks as JSON lines or as an aligned table (``note`` under it)."""
    out = sys.stdout
    if as_json:
        for r in records:
            out.write(json.dumps(r) + "\n")
        for t in targets:
            out.write(json.dumps({**t, "note": note} if note else t) + "\n")
        out.flush()
        return

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "-" if v is None else str(v)

    rows = [[fmt(r.get(c)) for c in columns] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths)) + "\n")
    for row in rows:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths)) + "\n")
    if targets:
        out.write("\ntargets (ratios measured in this run):\n")
        for t in targets:
            mark = "PASS" if t["pass"] else "MISS"
            spread = (f"; rounds {min(t['per_round']):.3g}-{max(t['per_round']):.3g}, median of {len(t['per_round'])}"
                      if t.get("per_round") else "")
            out.write(f"  [{mark}] {t['target']}: {t['value']:.4g} (want {t['op']} {t['threshold']:g}{spread})\n")
    if note:
        out.write(f"note: {note}\n")
    out.flush()


def target(name: str, value: float, op: str, threshold: float, per_round: list[float] | None = None) -> dict[str, Any]:
    """A target check; ``per_round``: the ratio in every round (``value`` their median), printed as a range."""
    ok = value <= threshold if op == "<=" else value >= threshold
    out = {"target": name, "value": value, "op": op, "threshold": threshold, "pass": bool(ok)}
    if per_round is not None:
        out["per_round"] = per_round
    return out


def add_output_arguments(ap: Any) -> None:
    """``--json`` and ``--check``, shared by every benchmark."""
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")


def report(records: list[dict[str, Any]], targets: list[dict[str, Any]], args: Any, columns: list[str],
           note: str | None = None) -> int:
    """Print the results; the exit code is 1 only with ``--check`` and a missed target."""
    emit(records, targets, args.json, columns, note)
    return 1 if args.check and not all(t["pass"] for t in targets) else 0
