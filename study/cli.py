"""The ``stllr`` command line.

Subcommands grow with the project; each user mistake ends in one line on stderr and a
non-zero exit (``StllrError``), never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from stllr_engine.errors import StllrError


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="stllr", description="Study S-TLLR against BPTT on spiking networks.")
    sub = ap.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmarks (speed, memory, learning)")
    bsub = bench.add_subparsers(dest="what", required=True)

    from bench import data, engine, learning
    from bench import study as bench_study

    p = bsub.add_parser("engine", help="step time, learning memory and FLOP efficiency of S-TLLR and BPTT")
    engine.add_arguments(p)
    p.set_defaults(run=engine.execute)
    p = bsub.add_parser("data", help="SHD-format loading: first epoch, cached epoch, vs S-TLLR step time")
    data.add_arguments(p)
    p.set_defaults(run=data.execute)
    p = bsub.add_parser("learning", help="both rules on the embedded digits and synthetic temporal tasks")
    learning.add_arguments(p)
    p.set_defaults(run=learning.execute)
    p = bsub.add_parser("study", help="platform overhead of a 12-configuration sweep (2 concurrent ~20 s runs)")
    bench_study.add_arguments(p)
    p.set_defaults(run=bench_study.execute)

    from study import commands

    p = sub.add_parser("sweep", help="run (or --resume) a study: S-TLLR search + BPTT baselines on Ray Tune + Optuna")
    commands.add_sweep_arguments(p)
    p.set_defaults(run=commands.sweep)
    p = sub.add_parser("train", help="one run of a study's configuration in-process (no Ray), for debugging")
    commands.add_train_arguments(p)
    p.set_defaults(run=commands.train)
    p = sub.add_parser("status", help="a study folder: runs by status, best so far, frontier size")
    p.add_argument("folder")
    p.set_defaults(run=commands.status)
    p = sub.add_parser("export", help="write a study's results table as CSV")
    p.add_argument("folder")
    p.add_argument("--out", help="CSV path (default: DIR/results.csv)")
    p.set_defaults(run=commands.export)

    from reports import cli as report_cli

    p = sub.add_parser("report", help="offline HTML report: frontiers against BPTT and the open questions")
    report_cli.add_arguments(p)
    p.set_defaults(run=report_cli.execute)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    try:
        return int(args.run(args))
    except StllrError as exc:
        print(f"stllr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stllr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
