"""The study subcommands of ``stllr``: sweep, train, status, export."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from spaces._yaml import parse_scalar
from stllr_engine.errors import StllrError

__all__ = ["add_sweep_arguments", "add_train_arguments", "sweep", "train", "status", "export", "parse_sets"]


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``["a.b=1e-3", "c=x"]`` → ``{"a.b": 0.001, "c": "x"}`` (values read as the study file's loader reads
    them, within its limits)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise StllrError(f"--set {item!r}: write key=value, e.g. --set dataset.data_dir=/data")
        out[key.strip()] = parse_scalar(value, f"--set {key.strip()}")  # as the study file's loader reads it
    return out


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", help="a study file (spaces/*.yaml), a preset name (quickstart, ...), or with --resume "
                                 "a study folder")
    p.add_argument("--out", help="study folder (default: runs/<name>-<time>)")
    p.add_argument("--trials", type=int, help="S-TLLR configurations to train in all (each with every seed; the "
                                              "matched BPTT baselines come on top); with --resume it may grow")
    p.add_argument("--address", help="join an existing Ray cluster (HOST:PORT or 'auto'); default: a local Ray")
    p.add_argument("--resume", action="store_true", help="continue the study in the folder SPACE")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a study-file key, e.g. "
                                                                     "dataset.data_dir=/data")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--no-report", action="store_true", help="do not build the report at the end")
    p.add_argument("--report", action="store_true", help="build the report even when the sweep is interrupted")


def sweep(args: argparse.Namespace) -> int:
    from study.runner import sweep as run_sweep

    run_sweep(args.space, out=args.out, trials=args.trials, address=args.address, resume=args.resume,
              overrides=parse_sets(args.set) or None, quiet=args.quiet, report=not args.no_report,
              report_when_interrupted=args.report)
    return 0


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", help="a study file or preset name")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a search parameter (e.g. alpha_post=0.5) or a study-file key (dataset.data_dir=/data)")
    p.add_argument("--rule", choices=("stllr", "bptt"), default="stllr")
    p.add_argument("--loss", choices=("per_step", "sum_output", "per_step_all"),
                   help="the objective (BPTT default: the study's first baseline.loss, S-TLLR's per_step over the "
                        "configuration's learn_steps; S-TLLR default per_step, or sum_output: CE(sum_t o[t]))")
    p.add_argument("--seed", type=int, help="default: the study's first seed")
    p.add_argument("--out", help="checkpoint folder (default: none)")


def train(args: argparse.Namespace) -> int:
    from spaces import load_study
    from spaces._load import TOP_KEYS
    from stllr_engine.experiment import run_experiment

    sets = parse_sets(args.set)
    file_keys = {k: v for k, v in sets.items() if k.split(".")[0] in TOP_KEYS}  # e.g. dataset.data_dir
    spec = load_study(args.space, file_keys or None)
    given = {k: v for k, v in sets.items() if k not in file_keys}  # search parameters, e.g. layer1.alpha_post
    seed = args.seed if args.seed is not None else spec.seeds[0]
    params, sampled = spec.params_for_run(given, seed)  # checked against the space; the rest drawn at random
    if args.out is not None:
        from study.ledger import check_out_folder

        check_out_folder(args.out)
    if args.rule == "bptt":
        params = {**params, "loss": args.loss or spec.baseline_losses[0]}  # as the study's matched baseline
    elif args.loss not in (None, "per_step"):
        from stllr_engine.stllr import STLLR_LOSSES

        if args.loss not in STLLR_LOSSES:
            raise StllrError(f"--loss {args.loss} is not an objective S-TLLR learns (per_step_all is per_step with "
                             f"learn_steps = T): use --loss {' or --loss '.join(STLLR_LOSSES)}, or add --rule bptt")
        params = {**params, "loss": args.loss}
    exp = spec.experiment(params, args.rule, seed)
    print(f"params: {json.dumps(params, sort_keys=True)}")
    if sampled:
        print(f"sampled at random (seed {seed}), since --set gave none: {', '.join(sampled)}")
    for m in run_experiment(exp, checkpoint_dir=args.out):
        if "test_aee" in m:  # a flow network: AEE (lower is better) against predicting no motion
            val = m.get("epoch_val_aee", m.get("val_aee"))
            print(f"epoch {m['epoch']}/{exp.training.epochs}: train_loss {m['train_loss']:.4f}"
                  + (f" val_aee {val:.3f}" if val is not None else "")
                  + f" test_aee {m.get('epoch_test_aee', m['test_aee']):.3f} (no motion: {m['test_zero_aee']:.3f})"
                  f" test_outliers {m.get('epoch_test_outliers_pct', m['test_outliers_pct']):.1f}%"
                  f" learning_macs {m.get('learning_macs_formula_per_sample')}"
                  f" memory {m.get('learning_memory_bytes_measured_per_batch')} B/batch {m['wall_time_s']:.2f}s",
                  flush=True)
            if m.get("stopped_by") in ("patience", "max_epochs"):
                print(f"stopped after {m['epochs_trained']} epochs ({m['stopped_by']}); best epoch {m['best_epoch']}, "
                      f"its weights restored: val_aee {m['val_aee']:.3f} test_aee {m['test_aee']:.3f}", flush=True)
            continue
        val = m.get("epoch_val_accuracy", m.get("val_accuracy"))  # this epoch's own weights
        print(f"epoch {m['epoch']}/{exp.training.epochs}: train_acc {m['train_accuracy']:.4f}"
              + (f" val_acc {val:.4f}" if val is not None else "")
              + f" test_acc {m.get('epoch_test_accuracy', m['test_accuracy']):.4f}"
              f" learning_macs {m.get('learning_macs_formula_per_sample')}"
              f" memory {m.get('learning_memory_bytes_measured_per_batch')} B/batch {m['wall_time_s']:.2f}s",
              flush=True)
        if m.get("stopped_by") in ("patience", "max_epochs"):
            why = (f"no better validation result for {exp.training.patience} epochs" if m["stopped_by"] == "patience"
                   else "the most epochs (budget.epochs), possibly still improving")
            print(f"stopped after {m['epochs_trained']} epochs ({why}); best epoch {m['best_epoch']}, its weights "
                  f"restored: val_acc {m['val_accuracy']:.4f} test_acc {m['test_accuracy']:.4f}", flush=True)
    return 0


def add_status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder")
    p.add_argument("--json", action="store_true", help="print the status as one JSON object")


def status(args: argparse.Namespace) -> int:
    from study.status import study_status

    d = study_status(args.folder)
    if args.json:
        print(json.dumps(d, default=str))
        return 0
    print(f"{d['folder']}: {d['state']}")
    if d["budget"] is None:
        print(f"  S-TLLR configurations: {d['configurations_trained']} trained; the budget is unknown (see the note)")
    else:
        print(f"  S-TLLR configurations: {d['configurations_trained']} trained of a budget of {d['budget']} "
              f"({d['configurations_left']} left{', the search space is exhausted' if d['exhausted'] else ''})")
    print(f"  equal tuning trained: S-TLLR {d['tuned_trained']}, BPTT {d['baselines_trained']} configurations")
    print("  runs: " + (", ".join(f"{k} {v}" for k, v in d["runs"].items()) or "none yet"))
    for rule, best in d["best"].items():
        val, test = ("val_aee", "test_aee") if best.get("measure") == "aee" else ("val_accuracy", "test_accuracy")
        print(f"  best {rule}: {val} {best[f'{val}_mean']:.4f} ± {best[f'{val}_std']:.4f} over "
              f"{best['n_seeds']} seeds (test {best[f'{test}_mean']:.4f}), configuration {best['config_id']}"
              + (" (AEE in px, lower is better)" if best.get("measure") == "aee" else ""))
    if d["frontier_size"] is not None:
        print(f"  frontier: {d['frontier_size']} configurations")
    for note in d["notes"]:
        print(f"  note: {note}")
    return 0


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder")
    p.add_argument("--format", choices=("csv", "json", "parquet"), default="csv")
    p.add_argument("--out", help="file to write (default: DIR/results.<format>)")


def export(args: argparse.Namespace) -> int:
    from study.schema import read_results

    if not os.path.exists(os.path.join(args.folder, "study.yaml")):
        raise StllrError(f"{args.folder} is not a study folder (no study.yaml): give the folder a sweep wrote")
    df = read_results(args.folder)
    default = "results-export.parquet" if args.format == "parquet" else f"results.{args.format}"
    out = args.out or os.path.join(args.folder, default)
    if os.path.isdir(out):
        raise StllrError(f"--out {out}: that is a folder: give a file path, e.g. {out}/results.{args.format}")
    if os.path.abspath(out) == os.path.abspath(os.path.join(args.folder, "results.parquet")):
        raise StllrError(f"--out {out}: that is the study's own results table (the sweep writes it): give "
                         "another file name")
    try:
        if args.format == "csv":
            df.to_csv(out, index=False)
        elif args.format == "json":
            df.to_json(out, orient="records", lines=True)
        else:
            df.to_parquet(out, index=False)
    except OSError as exc:
        raise StllrError(f"--out {out}: cannot write it ({exc.strerror or exc})") from None
    print(f"{out}: {len(df)} rows")
    return 0
