"""The ledger, the planner and the searcher without Ray running: real files, real Optuna
journals, real locks held by real (killed) processes. Fast: no training."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from spaces import load_study
from stllr_engine import StllrError
from study.ledger import FolderLock, Ledger, PidFileLock, check_out_folder, repair_journal
from study.plan import Planner, config_id_of
from study.schema import COLUMNS, ENDED, STATUSES, read_results, run_row
from study.searcher import StudySearcher
from study_cases import open_storage

PARAMS = {"width": 16, "alpha_post": 0.5, "learn_steps": 4}


def _spec(study_file, **changes):
    return load_study(str(study_file(**changes)))


def _row(spec, params, seed, status, val=0.5, role="search"):
    planner = Planner(spec, "/nowhere", 1)
    rule = "stllr" if role == "search" else "bptt"
    cid = config_id_of(role, rule, params)
    metrics = [{"epoch": 1, "val_accuracy": val, "test_accuracy": val, "learning_macs_formula_per_sample": 10.0,
                "learning_memory_bytes_formula_per_sample": 2.0}] if status == "complete" else []
    return run_row(spec.name, f"{cid}-s{seed}", cid, planner.arch_id(params), role,
                   spec.experiment(params, rule, seed).to_dict(), status, metrics=metrics, params=params)


# -- the planner ---------------------------------------------------------------------------------


def test_a_configuration_is_trained_only_when_every_seed_ended(study_file):
    spec = _spec(study_file)  # seeds [0, 1]
    planner = Planner(spec, "/nowhere", 1)
    one = _row(spec, PARAMS, 0, "complete")
    rows = {one["trial_id"]: one}
    assert planner.trained(rows) == {}  # one seed of two: not trained
    cfg = planner.configuration("search", PARAMS, rows, "search", 0)
    assert [r.seed for r in cfg.runs] == [1] and [r["seed"] for r in cfg.done] == [0]  # only the missing seed runs
    for status in ("interrupted", "running", "infeasible"):
        other = _row(spec, PARAMS, 1, status)
        assert planner.trained({**rows, other["trial_id"]: other}) == {}, status
    for status in ENDED:
        other = _row(spec, PARAMS, 1, status)
        assert planner.trained({**rows, other["trial_id"]: other}) == {one["config_id"]: PARAMS}, status


def test_outcome_is_the_mean_over_seeds_and_complete_only_with_every_seed(study_file):
    spec = _spec(study_file)
    planner = Planner(spec, "/nowhere", 1)
    a, b = _row(spec, PARAMS, 0, "complete", 0.4), _row(spec, PARAMS, 1, "complete", 0.6)
    out = planner.outcome([a, b], ("val_accuracy", "learning_macs_formula_per_sample"))
    assert out.state == "COMPLETE" and out.values == pytest.approx((0.5, 10.0)) and out.seeds_complete == 2
    assert planner.outcome([a], ("val_accuracy",)).state == "FAIL"
    assert planner.outcome([a, _row(spec, PARAMS, 1, "failed")], ("val_accuracy",)).state == "FAIL"
    assert planner.outcome([a, _row(spec, PARAMS, 1, "pruned")], ("val_accuracy",)).state == "PRUNED"


def test_run_row_fills_every_column_and_only_known_statuses(study_file):
    spec = _spec(study_file)
    row = _row(spec, PARAMS, 0, "complete")
    assert set(COLUMNS) <= set(row)
    assert row["trial_id"].endswith("-s0") and row["width"] == 16 and row["alpha_post"] == 0.5
    assert row["val_accuracy"] == 0.5 and row["epochs_done"] == 1
    assert set(STATUSES) >= set(ENDED) | {"infeasible", "interrupted", "running"}
    with pytest.raises(ValueError):
        _row(spec, PARAMS, 0, "done")


# -- the ledger: creating, resuming, refusing ----------------------------------------------------


def test_create_writes_the_study_and_refuses_a_second_one(study_file, tmp_path):
    spec = _spec(study_file)
    folder = tmp_path / "s"
    with Ledger.create(str(folder), spec, 3) as led:
        assert led.budget == 3 and led.storage is not None
    assert json.loads((folder / "budget.json").read_text()) == {"trials": 3}
    assert load_study(str(folder / "study.yaml")) == spec
    with pytest.raises(StllrError, match="already holds a study"):
        Ledger.create(str(folder), spec, 3)


def test_resume_refuses_an_edited_study_and_names_the_keys(study_file, tmp_path):
    spec = _spec(study_file)
    folder = tmp_path / "s"
    Ledger.create(str(folder), spec, 3).close()
    frozen = folder / "study.yaml"
    frozen.write_text(frozen.read_text().replace("epochs: 1", "epochs: 2"))
    edited = load_study(str(frozen))
    with pytest.raises(StllrError) as err:
        Ledger.open(str(folder), edited)
    msg = str(err.value)
    assert "\n" not in msg and "budget.epochs: 1 -> 2" in msg and "differs from what this folder ran" in msg
    # growing the budget and moving the data are allowed
    grown = load_study(str(frozen), {"budget.epochs": 1, "budget.trials": 9, "dataset.cache_dir": str(tmp_path)})
    with Ledger.open(str(folder), grown, trials=9) as led:
        assert led.budget == 9 and led.budget_given  # the runner writes it once checked against what is trained
        led.set_budget(led.budget)
    assert json.loads((folder / "budget.json").read_text())["trials"] == 9


def test_resume_without_a_budget_file_is_one_line(study_file, tmp_path):
    spec = _spec(study_file)
    folder = tmp_path / "s"
    Ledger.create(str(folder), spec, 3).close()
    (folder / "budget.json").unlink()
    with pytest.raises(StllrError) as err:
        Ledger.open(str(folder), spec)
    assert "budget.json is missing: give the budget again with --trials N" in str(err.value)
    with Ledger.open(str(folder), spec, trials=4) as led:
        assert led.budget == 4


def test_a_folder_in_use_is_refused_and_a_dead_holder_is_not(study_file, tmp_path):
    spec = _spec(study_file)
    folder = tmp_path / "s"
    Ledger.create(str(folder), spec, 3).close()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; fh = open(sys.argv[1], 'a+'); fcntl.flock(fh, fcntl.LOCK_EX); "
        "fh.write('pid held'); fh.flush(); print('locked', flush=True); time.sleep(60)"), str(folder / ".sweep.lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StllrError, match="is in use by a running sweep"):
            Ledger.open(str(folder), spec)
    finally:
        holder.kill()
        holder.wait()
    with Ledger.open(str(folder), spec):  # the kernel released the dead holder's lock
        pass


def test_a_stale_journal_lock_of_a_killed_process_is_removed_by_pid(study_file, tmp_path, capfd):
    spec = _spec(study_file)
    folder = tmp_path / "s"
    Ledger.create(str(folder), spec, 3).close()
    journal = str(folder / "optuna.journal")
    # a real process takes the journal lock and is killed while holding it
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[2]); from study.ledger import PidFileLock; "
        "PidFileLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"),
        journal, str(Path(__file__).resolve().parents[2])], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    pid = child.pid
    assert Path(journal + ".lock").read_text().split()[0] == str(pid)
    t0 = time.monotonic()
    with Ledger.open(str(folder), spec) as led:
        optuna.create_study(study_name="x", storage=led.storage)  # a write takes the lock
    assert time.monotonic() - t0 < 5  # not Optuna's silent 30 s grace period
    err = capfd.readouterr().err
    assert f"removed the stale journal lock {journal}.lock (left by pid {pid}, which is no longer running)" in err
    assert not os.path.exists(journal + ".lock")


def test_a_journal_lock_of_a_live_process_is_waited_for_and_said(tmp_path, capfd):
    journal = str(tmp_path / "optuna.journal")
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[2]); from study.ledger import PidFileLock; "
        "l = PidFileLock(sys.argv[1]); l.acquire(); print('held', flush=True); time.sleep(1.5); l.release()"),
        journal, str(Path(__file__).resolve().parents[2])], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    lock = PidFileLock(journal, wait_note_s=0.5)
    t0 = time.monotonic()
    assert lock.acquire()
    waited = time.monotonic() - t0
    lock.release()
    child.wait()
    assert 0.5 < waited < 10
    assert f"for the journal lock {journal}.lock (held by pid {child.pid}" in capfd.readouterr().err


def test_a_torn_last_journal_line_is_cut_and_the_original_kept(study_file, tmp_path, capfd):
    spec = _spec(study_file)
    folder = tmp_path / "s"
    with Ledger.create(str(folder), spec, 3) as led:
        study = optuna.create_study(study_name="search", storage=led.storage, directions=["maximize"])
        for v in (0.1, 0.2):
            t = study.ask()
            t.suggest_float("x", 0, 1)
            study.tell(t, v)
    journal = folder / "optuna.journal"
    intact = journal.read_bytes()
    with open(journal, "ab") as fh:  # a write killed half-way
        fh.write(b'{"op_code": 4, "worker_id": "w", "study_id": 0, "datetime_start": "2026-')
    with Ledger.open(str(folder), spec) as led:
        study = optuna.load_study(study_name="search", storage=led.storage)
        assert [t.values[0] for t in study.trials] == [0.1, 0.2]
        t = study.ask()  # the next append lands on a clean line
        t.suggest_float("x", 0, 1)
        study.tell(t, 0.3)
    backups = list(folder.glob("optuna.journal.bak-*"))
    assert len(backups) == 1 and backups[0].read_bytes().startswith(intact) and len(backups[0].read_bytes()) > len(intact)
    again = optuna.load_study(study_name="search", storage=open_storage(str(folder)))
    assert [t.values[0] for t in again.trials] == [0.1, 0.2, 0.3]
    assert "had a torn last line" in capfd.readouterr().err
    assert repair_journal(str(journal)) is None  # intact now: nothing to cut


def test_an_unreadable_results_table_is_rebuilt_from_the_row_files(study_file, tmp_path, capfd):
    spec = _spec(study_file)
    folder = tmp_path / "s"
    rows = [_row(spec, PARAMS, 0, "complete", 0.4), _row(spec, PARAMS, 1, "complete", 0.6),
            _row(spec, {**PARAMS, "width": 32}, 0, "infeasible")]
    with Ledger.create(str(folder), spec, 3) as led:
        led.record(rows)
    table = folder / "results.parquet"
    assert len(pd.read_parquet(table)) == 3
    table.write_bytes(table.read_bytes()[:100])  # truncated
    df = read_results(str(folder))  # what status and report read meanwhile
    assert len(df) == 3 and "rebuilt from 3 runs/*/row.json" in df.attrs["rebuilt"]
    with Ledger.open(str(folder), spec) as led:
        assert sorted(led.rows) == sorted(r["trial_id"] for r in rows)
    fixed = pd.read_parquet(table)
    assert sorted(fixed.val_accuracy.dropna()) == [0.4, 0.6]
    assert list(folder.glob("results.parquet.bad-*"))
    assert "could not be read (" in capfd.readouterr().err


def test_resume_marks_running_rows_interrupted_and_closes_running_trials(study_file, tmp_path):
    spec = _spec(study_file)
    folder = tmp_path / "s"
    with Ledger.create(str(folder), spec, 3) as led:
        led.record([_row(spec, PARAMS, 0, "running")])
        study = optuna.create_study(study_name="search", storage=led.storage, directions=["maximize"] * 3)
        t = study.ask()
        for k, v in PARAMS.items():
            t.suggest_categorical(k, [v])
    # a run that ended while no driver listened: its row.json is on disk, the table does not know
    ended = _row(spec, PARAMS, 1, "complete", 0.7)
    (folder / "runs" / ended["trial_id"]).mkdir(parents=True)
    (folder / "runs" / ended["trial_id"] / "row.json").write_text(json.dumps(ended))
    with Ledger.open(str(folder), spec) as led:
        assert led.rows[f"{ended['config_id']}-s0"]["status"] == "interrupted"
        assert led.rows[ended["trial_id"]]["status"] == "complete"
        study = optuna.load_study(study_name="search", storage=led.storage)
        states = [t.state for t in study.trials]
        assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]  # re-enqueued
        assert study.trials[1].params == {} and study.trials[1].system_attrs["fixed_params"] == PARAMS
    # an ended run is never turned back
    with Ledger.open(str(folder), spec) as led:
        led.record([dict(ended, status="running")])
        assert led.rows[ended["trial_id"]]["status"] == "complete"


@pytest.mark.parametrize("out, expect", [
    ("s3://bucket/x", "a study folder must be on a filesystem"),
    ("gs://b/x", "a study folder must be on a filesystem"),
    ("FILE", "that is a file, not a folder"),
])
def test_out_that_is_not_a_folder_is_one_line(tmp_path, out, expect):
    if out == "FILE":
        out = str(tmp_path / "f.txt")
        Path(out).write_text("x")
    with pytest.raises(StllrError, match=expect):
        check_out_folder(out)
    assert not os.path.exists("s3:") and not os.path.exists("gs:")


# -- the searcher: pickles with every sampler a preset names -----------------------------------


@pytest.mark.parametrize("sampler", [{"name": "nsga2", "seed": 0, "population_size": 4},
                                     {"name": "nsga3", "seed": 0, "population_size": 4},
                                     {"name": "tpe", "seed": 0, "n_startup_trials": 2, "multivariate": True},
                                     {"name": "gp", "seed": 0}, {"name": "random", "seed": 0},
                                     {"name": "grid", "seed": 0}])
def test_the_searcher_pickles_with_a_live_sampler(study_file, tmp_path, sampler):
    """Tune pickles its searcher; Optuna 5.1's GA samplers hold a thread lock (DESIGN §6)."""
    search = {"width": {"type": "categorical", "choices": [16, 32]},
              "learn_steps": {"type": "int", "low": 2, "high": 4}}
    spec = _spec(study_file, sampler=sampler, search=search)
    with Ledger.create(str(tmp_path / "s"), spec, 2) as led:
        searcher = StudySearcher(spec, led, Planner(spec, led.folder, 1), 2)
        proposal = searcher.suggest("t1")  # builds the live Optuna study and sampler
        assert proposal["role"] in ("baseline", "search")
        copy = pickle.loads(pickle.dumps(searcher))
        assert copy.in_flight.keys() == searcher.in_flight.keys() and copy.remaining == searcher.remaining
        with pytest.raises(RuntimeError, match="lives on the driver"):
            copy.live.ledger
        assert json.dumps(proposal)  # what a trial receives is plain data


def test_the_search_study_names_its_metrics_and_records_what_each_trial_runs(study_file, tmp_path):
    spec = _spec(study_file)
    with Ledger.create(str(tmp_path / "s"), spec, 2) as led:
        searcher = StudySearcher(spec, led, Planner(spec, led.folder, 1), 1)
        proposals = [searcher.suggest(f"t{i}") for i in range(2)]
        search = next(p for p in proposals if p["role"] == "search")
        tid = next(t for t, c in searcher.in_flight.items() if c.role == "search")
        for seed, epoch, val in ((0, 1, 0.2), (0, 2, 0.4), (1, 1, 0.4), (1, 2, 0.6)):
            searcher.on_trial_result(tid, {"val_accuracy": val, "epoch": epoch, "seed": seed})
        searcher.on_trial_complete(tid, {"config_done": True, "config_status": "complete", "val_accuracy": 0.5,
                                         "learning_macs_formula_per_sample": 10.0,
                                         "learning_memory_bytes_measured_per_sample": 2.0,
                                         "test_accuracy_mean": 0.45})
        assert proposals[1] is None  # the equal tuning waits for the search's choice: Tune asks again
    study = optuna.load_study(study_name="search", storage=open_storage(led.folder))
    assert study.metric_names == ["val_accuracy", "learning_macs_formula_per_sample",
                                  "learning_memory_bytes_measured_per_sample"]
    t = study.trials[search["optuna_number"]]
    assert t.state == optuna.trial.TrialState.COMPLETE and t.values == [0.5, 10.0, 2.0]
    assert t.intermediate_values == {1: pytest.approx(0.3), 2: pytest.approx(0.5)}  # mean over seeds per epoch
    assert t.user_attrs["config_id"] == search["config_id"] and t.user_attrs["arch_id"] == search["arch_id"]
    assert t.user_attrs["rule"] == "stllr" and t.user_attrs["test_accuracy"] == 0.45
    assert t.user_attrs["run_ids"] == [f"{search['config_id']}-s0", f"{search['config_id']}-s1"]


@pytest.mark.parametrize("sampler", [{"name": "random", "seed": 0}, {"name": "tpe", "seed": 0, "n_startup_trials": 99}])
def test_an_outcome_free_sampler_fills_a_pack_past_proposals_of_another_kind(study_file, tmp_path, sampler):
    """Packs (issue #16 item 4): a random (or grid) search is asked on past a proposal of another
    architecture, which waits for the next pack, so that packs fill up; a model-based sampler
    (TPE) stops at the first one, as its later proposals would miss the outcomes of the earlier."""
    search = {"width": {"type": "categorical", "choices": [16, 32]}, "alpha_post": {"type": "float", "low": -1.0,
                                                                                   "high": 1.0}}
    spec = _spec(study_file, sampler=sampler, search=search, resources={"cpu": 1, "gpu": 0, "pack": 8},
                 budget={"trials": 6, "epochs": 1, "seeds": [0, 1]})
    with Ledger.create(str(tmp_path / "s"), spec, 6) as led:
        searcher = StudySearcher(spec, led, Planner(spec, led.folder, 1), 6)
        searcher.suggest("t1")
        first, held = searcher.members["t1"], list(searcher.held)
        assert len({c.arch_id for c in first}) == 1 and all(c.arch_id != first[0].arch_id for c in held)
        if sampler["name"] == "tpe":
            assert len(held) == 1 and searcher.remaining == 6 - len(first) - 1  # stopped at the first other one
            return
        # every proposal asked until the pack holds 4 configurations (8 runs) or the budget is spent
        assert len(first) == 4 or searcher.remaining == 0
        assert len(first) + len(held) + searcher.remaining == 6
        searcher.suggest("t2")  # the held ones start the next pack, of their own architecture (and ask on)
        second = searcher.members["t2"]
        assert len(held) <= 4 and {c.config_id for c in held} <= {c.config_id for c in second}
        assert len({c.arch_id for c in second}) == 1 and all(c.arch_id != second[0].arch_id for c in searcher.held)


def test_an_architectures_tuning_starts_while_another_is_still_searched(study_file, tmp_path):
    """Equal tuning (DESIGN §8) of an architecture is queued as soon as its own search has ended,
    while another architecture's search still trains: its choice is final once the budget is spent."""
    search = {"width": {"type": "categorical", "choices": [16, 32]}}
    spec = _spec(study_file, sampler={"name": "grid", "seed": 0}, search=search,
                 budget={"trials": 2, "epochs": 1, "seeds": [0, 1]}, resources={"cpu": 1, "gpu": 0, "pack": 1})
    with Ledger.create(str(tmp_path / "s"), spec, 2) as led:
        searcher = StudySearcher(spec, led, Planner(spec, led.folder, 1), 2)
        a, b = searcher.suggest("t1"), searcher.suggest("t2")
        assert (a["role"], b["role"], searcher.remaining) == ("search", "search", 0)
        assert a["arch_id"] != b["arch_id"]
        assert searcher.suggest("t3") is None  # neither architecture's search has ended
        led.record([_row(spec, a["params"], seed, "complete", val=0.6) for seed in (0, 1)])
        searcher.on_trial_complete("t1", {"config_done": True, "config_status": "complete", "val_accuracy": 0.6,
                                          "learning_macs_formula_per_sample": 10.0,
                                          "learning_memory_bytes_measured_per_sample": 2.0})
        tuning = [searcher.suggest("t4"), searcher.suggest("t5")]  # b's search still trains (t2)
        assert sorted(p["role"] for p in tuning) == ["baseline", "tuned"]
        assert {p["arch_id"] for p in tuning} == {a["arch_id"]} and not searcher.tuning_queued
        assert tuning[[p["role"] for p in tuning].index("tuned")]["params"]["width"] == a["params"]["width"]
        assert searcher.suggest("t6") is None  # b's tuning waits for b's search
        led.record([_row(spec, b["params"], seed, "complete", val=0.5) for seed in (0, 1)])
        searcher.on_trial_complete("t2", {"config_done": True, "config_status": "complete", "val_accuracy": 0.5,
                                          "learning_macs_formula_per_sample": 10.0,
                                          "learning_memory_bytes_measured_per_sample": 2.0})
        later = [searcher.suggest("t7"), searcher.suggest("t8")]
        assert {p["arch_id"] for p in later} == {b["arch_id"]} and searcher.tuning_queued
        assert searcher.suggest("t9") == StudySearcher.FINISHED


def test_two_hundred_infeasible_proposals_in_a_row_end_in_seconds(study_file, tmp_path):
    # formula memory is 2 traces × width × 4 bytes: only widths up to 37 of [16, 2e9] fit 300 bytes
    search = {"width": {"type": "int", "low": 16, "high": 2_000_000_000},
              "learn_steps": {"type": "int", "low": 2, "high": 4}}
    spec = _spec(study_file, search=search, constraints=["learning_memory_bytes <= 300"],
                 sampler={"name": "random", "seed": 0})
    with Ledger.create(str(tmp_path / "s"), spec, 2) as led:
        searcher = StudySearcher(spec, led, Planner(spec, led.folder, 1), 2, node_bytes=24 * 2**30)
        t0 = time.monotonic()
        with pytest.raises(StllrError, match=r"the constraints \(or the nodes' memory\) rejected 200 proposals in a row"):
            searcher.suggest("t1")
        assert time.monotonic() - t0 < 20
        infeasible = [r for r in led.rows.values() if r["status"] == "infeasible"]
        assert len(infeasible) == 200 * 2  # every proposal recorded, each seed, with the figure that broke it
        assert all("learning_memory_bytes_formula_per_sample=" in r["reason"] for r in infeasible)
    study = optuna.load_study(study_name="search", storage=open_storage(led.folder))
    assert len(study.trials) == 200 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_a_run_bigger_than_the_node_is_infeasible_with_the_figure(study_file, tmp_path):
    search = {"width": {"type": "categorical", "choices": [2_000_000_000]},
              "learn_steps": {"type": "int", "low": 2, "high": 4}}
    spec = _spec(study_file, search=search, sampler={"name": "random", "seed": 0}, constraints=None)
    with Ledger.create(str(tmp_path / "s"), spec, 1) as led:
        searcher = StudySearcher(spec, led, Planner(spec, led.folder, 1), 1, node_bytes=24 * 2**30)
        t0 = time.monotonic()
        with pytest.raises(StllrError, match="rejected 200 proposals"):
            searcher.suggest("t1")
        assert time.monotonic() - t0 < 20
        row = next(iter(led.rows.values()))
        assert row["status"] == "infeasible" and "the node has 24 GiB" in row["reason"]


def test_the_table_on_disk_has_every_column_and_every_row(study_file, tmp_path):
    spec = _spec(study_file)
    rows = [_row(spec, PARAMS, 0, "complete", 0.4), _row(spec, PARAMS, 1, "failed"),
            _row(spec, {**PARAMS, "width": 32}, 0, "infeasible")]
    with Ledger.create(str(tmp_path / "s"), spec, 3) as led:
        led.record(rows)
    df = pd.read_parquet(tmp_path / "s" / "results.parquet")
    assert set(COLUMNS) <= set(df.columns), set(COLUMNS) - set(df.columns)
    assert sorted(df.trial_id) == sorted(r["trial_id"] for r in rows)
    for r in rows:
        got = df[df.trial_id == r["trial_id"]].iloc[0]
        for c in COLUMNS:
            want = r[c]
            assert (pd.isna(got[c]) if want is None else got[c] == want), (c, got[c], want)


def test_optunas_own_lock_left_by_an_old_killed_driver_is_removed_at_open(study_file, tmp_path, capfd):
    """Optuna's lock names no process; while the folder lock is ours no sweep can be writing."""
    spec = _spec(study_file)
    folder = tmp_path / "s"
    Ledger.create(str(folder), spec, 3).close()
    lock = folder / "optuna.journal.lock"
    os.symlink(folder / "optuna.journal", lock)  # JournalFileSymlinkLock's lock
    os.utime(lock, (time.time() - 60, time.time() - 60), follow_symlinks=False)
    t0 = time.monotonic()
    with Ledger.open(str(folder), spec) as led:
        optuna.create_study(study_name="x", storage=led.storage)
    assert time.monotonic() - t0 < 5 and not os.path.lexists(lock)
    assert "removed the stale journal lock" in capfd.readouterr().err


def test_out_paths_that_cannot_be_a_folder_are_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, expect in ((str(afile / "sub"), "is a file, not a folder: give a path under a folder"),
                        ("", "give a folder path"), (str(tmp_path / ("a" * 300)), "longer than 255 bytes")):
        with pytest.raises(StllrError, match=expect):
            check_out_folder(out)


def test_status_of_a_damaged_budget_says_so_instead_of_a_figure(study_file, tmp_path):
    from study.status import study_status

    spec = _spec(study_file)
    folder = tmp_path / "s"
    Ledger.create(str(folder), spec, 3).close()
    for text in ('{"trials": 1e309}', '{"trials": -5}', '{"trials": 3.7}', "garbage"):
        (folder / "budget.json").write_text(text)
        d = study_status(str(folder))
        assert d["budget"] is None and d["configurations_left"] is None and not d["finished"], text
        assert any("budget.json is missing or damaged" in n for n in d["notes"])
        with pytest.raises(StllrError, match="budget.json is damaged"):
            Ledger.open(str(folder), spec)


def test_a_configuration_missing_a_seed_is_proposed_again_whatever_optuna_recorded(study_file, tmp_path):
    """A double fault (an unreadable row.json and results table) loses one seed's row: the resume
    trains that seed, though Optuna has the configuration COMPLETE."""
    spec = _spec(study_file)
    one = _row(spec, PARAMS, 1, "complete", 0.6)
    with Ledger.create(str(tmp_path / "s"), spec, 3) as led:
        led.record([one])
        study = optuna.create_study(study_name="search", storage=led.storage,
                                    directions=["maximize", "minimize", "minimize"])
        study.enqueue_trial(PARAMS)
        t = study.ask()
        assert spec.suggest(t) == PARAMS
        study.tell(t, [0.6, 1.0, 1.0])
        searcher = StudySearcher(spec, led, Planner(spec, led.folder, 1), 3)
        searcher.resume_searches()
        proposals = [searcher.suggest(f"t{i}") for i in range(3)]
    search = [p for p in proposals if p["role"] == "search"]
    assert search[0]["config_id"] == one["config_id"] and [r["seed"] for r in search[0]["runs"]] == [0]
    assert [r["seed"] for r in search[0]["done"]] == [1]


def test_automatic_packs_on_a_cpu_leave_out_runs_whose_step_is_bound_by_arithmetic():
    """``resources.pack: auto`` (issue #16 item 4): on a CPU, the SHD net's runs (~25 G multiply-
    accumulates a step by the formulas, where packs measured slower than the runs alone) train
    alone; on CUDA they pack, and so do small runs on a CPU."""
    from stllr_engine.experiment import DataConfig, ExperimentConfig, RuntimeConfig
    from stllr_engine.network import preset
    from stllr_engine.stllr import STLLRConfig
    from stllr_engine.train import TrainConfig
    from study.trial import AUTO_PACK, CPU_PACK_MAX_MEMBER_MACS, auto_pack_size, step_macs

    def exp(spec, T, batch, device):
        data = DataConfig.from_dict({"dataset": "shd", "batch_size": batch, "options": {"T": T}})
        train = TrainConfig(rule="stllr", device=device, stllr=STLLRConfig(learn_steps=min(90, T)))
        return ExperimentConfig(data, spec, train, RuntimeConfig(), 0)

    shd = exp(preset("shd_rsnn"), 100, 128, "cpu")
    # (T·S forward + S-TLLR's learning, 52_650_000 + 141_345_000 per sample) x 128 samples
    assert step_macs(shd) == 193_995_000 * 128 > CPU_PACK_MAX_MEMBER_MACS
    assert auto_pack_size(shd, 24 << 30) == 1
    assert auto_pack_size(exp(preset("shd_rsnn"), 100, 128, "cuda"), 80 << 30) == AUTO_PACK
    small = exp(preset("shd_rsnn").replace(width=32), 20, 32, "cpu")
    assert step_macs(small) < CPU_PACK_MAX_MEMBER_MACS and auto_pack_size(small, 24 << 30) == AUTO_PACK
