"""The study subcommands of ``stllr``: sweep, train, status, export."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import yaml

from stllr_engine.errors import StllrError

__all__ = ["add_sweep_arguments", "add_train_arguments", "sweep", "train", "status", "export", "parse_sets"]


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` → ``{"a.b": 1, "c": "x"}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise StllrError(f"--set {item!r}: write key=value, e.g. --set dataset.data_dir=/data")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", help="a study file (spaces/*.yaml), a preset name (quickstart, ...), or with --resume "
                                 "a study folder")
    p.add_argument("--out", help="study folder (default: runs/<name>-<time>)")
    p.add_argument("--trials", type=int, help="S-TLLR configurations to train (each with every seed; the "
                                              "matched BPTT baselines come on top)")
    p.add_argument("--address", help="join an existing Ray cluster (HOST:PORT or 'auto'); default: a local Ray")
    p.add_argument("--resume", action="store_true", help="continue the study in the folder SPACE")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a study-file key, e.g. "
                                                                     "dataset.data_dir=/data")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--no-report", action="store_true", help="do not build the report at the end")


def sweep(args: argparse.Namespace) -> int:
    from study.runner import sweep as run_sweep

    run_sweep(args.space, out=args.out, trials=args.trials, address=args.address, resume=args.resume,
              overrides=parse_sets(args.set) or None, quiet=args.quiet, report=not args.no_report)
    return 0


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", help="a study file or preset name")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a search parameter (e.g. alpha_post=0.5) or a study-file key (dataset.data_dir=/data)")
    p.add_argument("--rule", choices=("stllr", "bptt"), default="stllr")
    p.add_argument("--seed", type=int, help="default: the study's first seed")
    p.add_argument("--out", help="checkpoint folder (default: none)")


def train(args: argparse.Namespace) -> int:
    import optuna

    from spaces import load_study
    from spaces._load import TOP_KEYS
    from stllr_engine.experiment import run_experiment

    sets = parse_sets(args.set)
    file_keys = {k: v for k, v in sets.items() if k.split(".")[0] in TOP_KEYS}  # e.g. dataset.data_dir
    spec = load_study(args.space, file_keys or None)
    fixed = {k: v for k, v in sets.items() if k not in file_keys}  # search parameters, e.g. layer1.alpha_post
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=[o.direction for o in spec.objectives],  # type: ignore[misc]
                                sampler=optuna.samplers.RandomSampler(seed=0))
    if fixed:
        study.enqueue_trial(fixed, skip_if_exists=False)
    trial = study.ask()
    params = spec.suggest(trial)  # for --rule bptt the S-TLLR factors among them are unused
    unknown = sorted(set(fixed) - set(params))
    if unknown:
        raise StllrError(f"--set {unknown[0]}: not a search parameter of {spec.source} (they are: "
                         f"{', '.join(sorted(params))}); study-file keys start with a section, e.g. "
                         "dataset.data_dir")
    seed = args.seed if args.seed is not None else spec.seeds[0]
    exp = spec.experiment(params, args.rule, seed)
    print(f"params: {json.dumps(params, sort_keys=True)}")
    for m in run_experiment(exp, checkpoint_dir=args.out):
        val = m.get("val_accuracy")
        print(f"epoch {m['epoch']}/{exp.training.epochs}: train_acc {m['train_accuracy']:.4f}"
              + (f" val_acc {val:.4f}" if val is not None else "")
              + f" test_acc {m['test_accuracy']:.4f} learning_macs {m.get('learning_macs_formula_per_sample')}"
              f" memory {m.get('learning_memory_bytes_measured_per_batch')} B/batch {m['wall_time_s']:.2f}s",
              flush=True)
    return 0


def status(args: argparse.Namespace) -> int:
    from study.runner import status as study_status

    d = study_status(args.folder)
    df = d["df"]
    print(f"{args.folder}: {d['runs']} runs · " + ", ".join(f"{k} {v}" for k, v in sorted(d["counts"].items())))
    complete = df[df["status"] == "complete"] if len(df) else df
    if len(complete):
        for rule in ("stllr", "bptt"):
            sub = complete[complete["rule"] == rule]
            if len(sub):
                best = sub.loc[sub["val_accuracy"].idxmax()]
                print(f"  best {rule}: val_accuracy {best['val_accuracy']:.4f} (test {best['test_accuracy']:.4f}) "
                      f"run {best['trial_id']}")
        try:
            from reports import frontier  # type: ignore[attr-defined]

            print(f"  frontier: {len(frontier(complete))} configurations")
        except Exception:
            pass
    return 0


def export(args: argparse.Namespace) -> int:
    from study.results import read_results

    if not os.path.exists(os.path.join(args.folder, "study.yaml")):
        raise StllrError(f"{args.folder} is not a study folder (no study.yaml): give the folder a sweep wrote")
    df = read_results(args.folder)
    out = args.out or os.path.join(args.folder, "results.csv")
    df.to_csv(out, index=False)
    print(f"{out}: {len(df)} rows")
    return 0
