"""The ``stllr`` command line.

Subcommands grow with the project; each user mistake ends in one line on stderr and a
non-zero exit (``StllrError``), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable


def _add(sub: "argparse._SubParsersAction[argparse.ArgumentParser]", name: str, text: str,
         add_arguments: Callable[[argparse.ArgumentParser], None], run: Callable[[argparse.Namespace], int]) -> None:
    p = sub.add_parser(name, help=text)
    add_arguments(p)
    p.set_defaults(run=run)


def _parser() -> argparse.ArgumentParser:
    from bench import data, engine, learning, packs
    from bench import study as bench_study
    from reports import cli as report_cli
    from study import commands

    ap = argparse.ArgumentParser(prog="stllr", description="Study S-TLLR against BPTT on spiking networks.")
    sub = ap.add_subparsers(dest="command", required=True)
    bsub = sub.add_parser("bench", help="benchmarks (speed, memory, learning)").add_subparsers(dest="what", required=True)
    for name, module, text in [
        ("engine", engine, "step time, learning memory and FLOP efficiency of S-TLLR and BPTT"),
        ("data", data, "SHD-format loading: first epoch, cached epoch, vs S-TLLR step time"),
        ("learning", learning, "both rules on the embedded digits and synthetic temporal tasks"),
        ("study", bench_study, "platform overhead of a 12-configuration sweep (2 concurrent ~20 s runs)"),
        ("packs", packs, "configurations per hour: K members packed as one model vs the same K separate"),
    ]:
        _add(bsub, name, text, module.add_arguments, module.execute)
    from study import data_commands

    dsub = sub.add_parser("data", help="datasets the project generates").add_subparsers(dest="what", required=True)
    _add(dsub, "make", "generate a dataset into a folder (spoken_digits: SHD's words by TTS voices)",
         data_commands.add_make_arguments, data_commands.make)
    for name, text, add_arguments, run in [
        ("sweep", "run (or --resume) a study: S-TLLR search + BPTT baselines on Ray Tune + Optuna",
         commands.add_sweep_arguments, commands.sweep),
        ("train", "one run of a study's configuration in-process (no Ray), for debugging",
         commands.add_train_arguments, commands.train),
        ("status", "a study folder: budget and what is left, runs by status, best configuration, frontier size",
         commands.add_status_arguments, commands.status),
        ("export", "write a study's results table as CSV, JSON lines or parquet", commands.add_export_arguments,
         commands.export),
        ("report", "offline HTML report: frontiers against BPTT and the open questions",
         report_cli.add_arguments, report_cli.execute),
    ]:
        _add(sub, name, text, add_arguments, run)
    return ap


def main(argv: list[str] | None = None) -> int:
    try:  # the imports too: a Ctrl-C while torch loads is an interrupt like any other
        from stllr_engine.errors import StllrError

        ap = _parser()
        args = ap.parse_args(argv)
        try:
            return int(args.run(args))
        except StllrError as exc:
            print(f"stllr: error: {exc}", file=sys.stderr)
            return 2
    except KeyboardInterrupt as exc:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # decided: a Ctrl-C still in flight must not kill the exit
        print(f"stllr: {str(exc) or 'interrupted'}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `stllr status DIR | head`: the reader left; nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
