"""``stllr report DIR [DIR ...] [--out FOLDER] [--format png|svg|pdf]``."""

from __future__ import annotations

import argparse

from reports._static import FORMATS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+", metavar="DIR", help="study folder(s) with results.parquet and study.yaml")
    p.add_argument("--out", metavar="FOLDER", default=None,
                   help="where report.html, summary.md and the CSV tables go (default: the first DIR/report)")
    p.add_argument("--format", action="append", choices=FORMATS, default=None, dest="formats",
                   help="also write static figures in this format under FOLDER/figures (repeatable; needs kaleido "
                        "and a Chromium)")
    p.add_argument("--family", action="store_true",
                   help="each DIR is one instance of a task family (e.g. `scripts/family.sh`): tabulate every "
                        "study's verdict and claims side by side, with how often each holds and keeps its sign "
                        "(family.md, family*.csv in FOLDER; default: the first DIR's parent/family)")


def execute(args: argparse.Namespace) -> int:
    from reports._report import build_report  # plotly, optuna: only when a report is built

    if args.family:
        from pathlib import Path

        from stllr_engine.errors import StllrError

        if args.formats:
            raise StllrError("--family writes tables (family.md, family*.csv), no figures: drop --format")

        from reports.family import write_family

        out = args.out or str(Path(args.dirs[0]).resolve().parent / "family")
        md = write_family(args.dirs, out)
        print(md)
        return 0
    path = build_report(args.dirs, out=args.out, formats=tuple(args.formats or ()))
    print(path)
    print(path.parent / "summary.md")
    return 0
