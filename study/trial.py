"""What one Ray Tune trial runs: one configuration, once per seed of the study.

A trial receives plain data from the searcher (no objects): the runs still to do, each
an :class:`~stllr_engine.experiment.ExperimentConfig` as a dict with its ``trial_id``
(``<config_id>-s<seed>``), and the rows of runs of this configuration that already ended
(after a resume). Every run checkpoints each epoch to ``DIR/runs/<trial_id>/`` and
continues from there when the trial is retried after a crash or the study is resumed.

Each epoch is reported to Tune; when a run ends its results row is written to the run's
``row.json`` (so a result survives a driver killed before it hears of it) and travels in
the report (``run_row``) to the driver's ledger. The last report of a trial carries the
configuration's objective values — means over its seeds — and ``config_status``
(complete or failed). A run that fails with a user-level error (e.g. its loss turned NaN)
is recorded as failed with its reason; the other seeds still run. A checkpoint that
cannot be read (truncated, e.g. by a full disk) is set aside and the run starts again
from scratch, instead of failing the configuration for good.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
from typing import Any

__all__ = ["run_configuration", "node_name"]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def node_name() -> str:
    """``host:node-id`` of the Ray node running this code (host alone outside Ray)."""
    host = socket.gethostname()
    try:
        import ray

        if ray.is_initialized():
            return f"{host}:{ray.get_runtime_context().get_node_id()[:8]}"
    except Exception:
        pass
    return host


def _limit_threads(threads: int) -> None:
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:  # scikit-learn / numpy's OpenMP and BLAS pools as well: two runtimes must not oversubscribe
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:
        pass


def _load_curves(path: str, start_epoch: int) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    try:
        with open(path) as fh:
            curves = json.load(fh)
    except (OSError, ValueError):
        return []
    return [c for c in curves if int(c.get("epoch", 0)) <= start_epoch]


def _attempt(run_dir: str, what: str) -> None:
    """One line per start and end of a run in ``attempts.log`` (when, where, which process)."""
    with open(os.path.join(run_dir, "attempts.log"), "a") as fh:
        fh.write(f"{time.time():.3f} {node_name()} pid {os.getpid()} {what}\n")


def _read_json(path: str) -> Any:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _write_json(path: str, data: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, default=str)
    os.replace(tmp, path)


def _usable_checkpoint(ckpt: str) -> bool:
    """Whether ``ckpt`` can be resumed from; an unreadable one is moved aside (kept for a post-mortem)."""
    from stllr_engine.errors import StllrError
    from stllr_engine.train import load_checkpoint

    if not os.path.exists(ckpt):
        return False
    try:
        load_checkpoint(ckpt)
    except StllrError as exc:
        aside = f"{ckpt}.unreadable-{int(time.time())}"
        os.replace(ckpt, aside)
        print(f"stllr: {exc}; moved to {os.path.basename(aside)}: the run starts again from scratch", flush=True)
        return False
    return True


def run_configuration(cfg: dict[str, Any]) -> None:
    """The Tune function trainable (see the module docstring)."""
    from ray import tune

    from stllr_engine.errors import StllrError
    from stllr_engine.experiment import ExperimentConfig, RuntimeConfig, run_experiment
    from study.schema import ENDED, run_row

    threads = max(1, int(cfg.get("threads", 1)))
    _limit_threads(threads)
    node = node_name()
    objectives: list[str] = list(cfg["objectives"])
    rows: list[dict[str, Any]] = [dict(r) for r in cfg.get("done", [])]
    study_dir = cfg["folder"]
    iteration = 0
    pending = list(cfg["runs"])
    for k, run in enumerate(pending):
        exp_dict = run["config"]
        exp = ExperimentConfig.from_dict(exp_dict)
        exp = exp.replace(runtime=RuntimeConfig.from_dict({**exp.runtime.to_dict(), "threads": threads}))
        run_dir = os.path.join(study_dir, "runs", run["trial_id"])
        os.makedirs(run_dir, exist_ok=True)
        ckpt = os.path.join(run_dir, "checkpoint.pt")
        curves_path = os.path.join(run_dir, "curves.json")
        row_path = os.path.join(run_dir, "row.json")
        ended = _read_json(row_path)
        if isinstance(ended, dict) and ended.get("status") in ENDED:  # ended in an earlier attempt: not run again
            rows.append(ended)
            continue
        with open(os.path.join(run_dir, "worker.pid"), "w") as fh:
            fh.write(f"{os.getpid()}\n")
        _attempt(run_dir, "start")
        resume = _usable_checkpoint(ckpt)
        started = _now()
        t_run = time.perf_counter()
        curves: list[dict[str, Any]] = []
        meta = dict(study=cfg["study"], trial_id=run["trial_id"], config_id=cfg["config_id"],
                    arch_id=cfg["arch_id"], role=cfg["role"], config=exp_dict, node=node, started_at=started,
                    params=cfg["params"])
        try:
            if resume:
                from stllr_engine.train import load_checkpoint

                curves = _load_curves(curves_path, int(load_checkpoint(ckpt)["epoch"]))
            for m in run_experiment(exp, checkpoint_dir=run_dir, resume=resume):
                if m.get("resumed_finished"):
                    if not curves:
                        curves = [m]
                    break
                curves.append(m)
                _write_json(curves_path, [{k2: v for k2, v in c.items() if not isinstance(v, (list, dict))}
                                          for c in curves])
                iteration += 1
                last_epoch = bool(m.get("finished")) or m["epoch"] == exp.training.epochs  # early stopping ends sooner
                report: dict[str, Any] = {k2: v for k2, v in m.items() if isinstance(v, (int, float, str, bool))}
                report.update(run_trial_id=run["trial_id"], seed=run["seed"], config_done=False, iteration=iteration)
                if last_epoch and k == len(pending) - 1:
                    break  # the final report below carries this epoch
                tune.report(report)
            row = run_row(status="complete", metrics=curves, ended_at=_now(), **meta)
        except StllrError as exc:
            if str(exc).startswith("cannot write checkpoint"):  # the disk, not the run: never an ended run
                raise RuntimeError(f"{exc} (the run stays unfinished; free space, then resume)") from None
            row = run_row(status="failed", reason=str(exc), metrics=curves, ended_at=_now(), **meta)
        row["run_time_s"] = time.perf_counter() - t_run  # the whole run: data, training, evaluation
        _write_json(row_path, row)
        _attempt(run_dir, f"end {row['status']}")
        rows.append(row)
        if k < len(pending) - 1:
            tune.report({"run_row": json.dumps(row, default=str), "config_done": False, "iteration": iteration,
                         **{o: row.get(o) for o in objectives if isinstance(row.get(o), (int, float))}})
    complete = [r for r in rows if r["status"] == "complete"]
    final: dict[str, Any] = {"config_done": True, "iteration": iteration + 1,
                             "run_row": json.dumps(rows[-1], default=str) if pending else "",
                             "config_status": "complete" if len(complete) == len(rows) and rows else "failed",
                             "seeds_done": len(complete)}
    for o in objectives:
        values = [float(r[o]) for r in complete if r.get(o) is not None]
        final[o] = sum(values) / len(values) if values else float("nan")
    tests = [float(r["test_accuracy"]) for r in complete if isinstance(r.get("test_accuracy"), (int, float))]
    final["test_accuracy_mean"] = sum(tests) / len(tests) if tests else float("nan")
    if pending:  # the last run's final epoch travels here (so schedulers and intermediate values see it)
        last = json.loads(final["run_row"])
        final.update(run_trial_id=last["trial_id"], seed=last["seed"], epoch=last.get("epochs_done"),
                     val_accuracy_run=last.get("val_accuracy"))
    tune.report(final)
