"""The study runner end to end, with real parts: a real local Ray, the real Optuna journal,
real runs on the embedded digits task, the real ``stllr`` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pandas as pd
import pytest

from study.runner import sweep
from study_cases import open_storage
from study_cases import ROOT, env, kill_group, run, start, wait_for

pytestmark = pytest.mark.slow

MAX, MIN = optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE


def _studies(folder):
    storage = open_storage(str(folder))
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage)}


def test_three_objective_sweep_with_constraint_and_baselines(study_file, tmp_path):
    # S-TLLR's formula memory is 2 traces × width × 4 bytes: width 64 (512 B) breaks the constraint
    path = study_file(constraints=["learning_memory_bytes <= 300"], budget={"trials": 4, "epochs": 1, "seeds": [0, 1]},
                      sampler={"name": "random", "seed": 3})
    folder = tmp_path / "study"
    sweep(str(path), out=str(folder), quiet=True, report=False)
    df = pd.read_parquet(folder / "results.parquet")  # pandas alone reads it

    studies = _studies(folder)
    assert list(studies["search"].directions) == [MAX, MIN, MIN]  # a true 3-objective search

    search = df[df.role == "search"]
    trained = search[search.status != "infeasible"]
    assert trained.config_id.nunique() == 4  # the budget counts configurations trained
    assert (trained.groupby("config_id").seed.apply(sorted) == pd.Series([[0, 1]] * 4, index=sorted(
        trained.config_id.unique()))).all()  # every configuration with every seed
    assert set(trained.status) == {"complete"}
    assert (trained.learning_memory_bytes_formula_per_sample <= 300).all()
    infeasible = search[search.status == "infeasible"]
    # seed 3 proposes width 64 (at least once): priced, never trained, and the sampler was told
    assert infeasible.config_id.nunique() >= 1 and len(infeasible) == 2 * infeasible.config_id.nunique()
    assert (infeasible.width == 64).all() and infeasible.epochs_done.eq(0).all()
    assert infeasible.reason.str.contains("learning_memory_bytes_formula_per_sample=512 > 300").all()
    assert (infeasible.learning_memory_bytes_formula_per_sample == 512).all()
    assert not any(os.path.exists(folder / "runs" / t / "checkpoint.pt") for t in infeasible.trial_id)
    told = [t for t in studies["search"].trials if t.user_attrs.get("violations")]
    assert len(told) == infeasible.config_id.nunique()
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in told)

    # every S-TLLR architecture has its matched BPTT baseline, run once, with the same seeds and epochs
    base = df[df.role == "baseline"]
    assert set(base.rule) == {"bptt"}
    assert set(trained.arch_id) == set(base.arch_id)
    assert base.groupby("arch_id").config_id.nunique().eq(1).all()
    assert sorted(base.seed.unique()) == [0, 1] and set(base.epochs) == set(trained.epochs) == {1}

    row = trained.iloc[0]
    for col in ("val_accuracy", "test_accuracy", "learning_macs_formula_per_sample",
                "learning_memory_bytes_measured_per_batch", "peak_step_bytes_measured_per_batch",
                "alpha_post", "learn_steps", "T", "batch", "node", "wall_time_s"):
        assert pd.notna(row[col]), col
    assert 0.0 <= row.val_accuracy <= 1.0 and row["T"] == 16 and row.batch == 128
    assert json.loads(row.config_json)["training"]["stllr"]["alpha_post"] == pytest.approx(row.alpha_post)
    assert len(json.loads(row.curves_json)) == 1
    assert (folder / "study.yaml").exists() and (folder / "optuna.journal").exists()

    out = run("export", str(folder))
    assert out.returncode == 0, out.stderr
    assert len(pd.read_csv(folder / "results.csv")) == len(df)
    st = run("status", str(folder))
    assert st.returncode == 0 and "complete" in st.stdout and "best stllr" in st.stdout


def test_resume_after_sigkill_of_the_driver(study_file, tmp_path):
    path = study_file(budget={"trials": 5, "epochs": 2, "seeds": [0, 1]}, sampler={"name": "random", "seed": 1})
    folder = tmp_path / "study"
    proc = start("sweep", str(path), "--out", str(folder), "--quiet", "--no-report", log=tmp_path / "first.log")

    def some_complete():
        try:
            df = pd.read_parquet(folder / "results.parquet")
        except Exception:
            return False
        return (df.status == "complete").sum() >= 3

    try:
        wait_for(some_complete, 240, "the first completed runs")
    finally:
        kill_group(proc)  # kill -9 of the driver and its process group (Ray with it)
    before = pd.read_parquet(folder / "results.parquet")
    done_before = before[before.status == "complete"].set_index("trial_id")
    running = [t for s in _studies(folder).values() for t in s.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert running, "the kill should leave trials RUNNING in the journal"

    res = run("sweep", "--resume", str(folder), "--quiet", "--no-report", timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    df = pd.read_parquet(folder / "results.parquet")
    for s in _studies(folder).values():  # no trial left RUNNING
        assert not [t for t in s.trials if t.state == optuna.trial.TrialState.RUNNING], s.study_name
    search = df[(df.role == "search") & (df.status != "infeasible")]
    assert search.config_id.nunique() == 5  # exactly the requested budget
    assert set(df.status) == {"complete"}
    assert df.trial_id.is_unique
    assert search.groupby("config_id").seed.nunique().eq(2).all()
    # no completed result lost or recomputed
    after = df.set_index("trial_id").loc[done_before.index]
    assert (after.val_accuracy == done_before.val_accuracy).all()
    assert (after.ended_at == done_before.ended_at).all()
    # each run trained its epochs once: curves hold epochs 1..2 exactly
    for curves in df.curves_json:
        assert [c["epoch"] for c in json.loads(curves)] == [1, 2]


def test_a_folder_in_use_is_refused(study_file, tmp_path):
    from stllr_engine import StllrError
    from study.ledger import FolderLock as study_lock

    folder = tmp_path / "busy"
    folder.mkdir()
    (folder / "study.yaml").write_text(study_file().read_text())
    with study_lock(str(folder)):
        res = run("sweep", "--resume", str(folder), "--quiet")
        assert res.returncode == 2
        assert "is in use by a running sweep" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    with pytest.raises(StllrError, match="already holds a study"):
        sweep(str(study_file()), out=str(folder), quiet=True)


def test_unreachable_address_is_one_line_and_leaves_no_study(study_file, tmp_path):
    res = run("sweep", str(study_file()), "--out", str(tmp_path / "s"), "--address", "127.0.0.1:1", timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip() == ("stllr: error: --address 127.0.0.1:1: no Ray cluster answers there: start one "
                                  "with 'ray start --head' or give the head's address as HOST:PORT")
    assert not (tmp_path / "s").exists()  # the same command works once a cluster answers


def test_the_main_command_runs_the_quickstart_to_a_report(tmp_path):
    """The README's main command (the quickstart preset, its nsga2 sampler, 3 objectives, baselines)."""
    from study.schema import COLUMNS

    folder = tmp_path / "qs"
    res = run("sweep", "spaces/quickstart.yaml", "--out", str(folder), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-2:] == [f"report: {folder}/report/report.html",
                                                    f"results: {folder}/results.parquet"]
    progress = [ln for ln in res.stdout.splitlines() if ln.startswith("[")]
    assert "S-TLLR configurations 10/10 · tuning: S-TLLR " in progress[-1], progress[-3:]  # counts follow the rows
    df = pd.read_parquet(folder / "results.parquet")
    assert set(COLUMNS) <= set(df.columns), set(COLUMNS) - set(df.columns)  # no column dropped on write
    trained = df[(df.role == "search") & (df.status != "infeasible")]
    assert trained.config_id.nunique() == 10 and set(df.status) <= {"complete", "infeasible"}
    assert df[df.status == "complete"].groupby("config_id").seed.nunique().eq(2).all()
    # equal tuning (DESIGN §8): every architecture searched gets S-TLLR at its chosen factors and BPTT on
    # S-TLLR's objective, each with the same learning rates and seeds
    assert set(df[df.role == "baseline"].arch_id) == set(df[df.role == "tuned"].arch_id) == set(trained.arch_id)
    for aid, g in df[df.role != "search"].groupby("arch_id"):
        tuned, base = g[g.role == "tuned"], g[g.role == "baseline"]
        assert sorted(tuned.lr.unique()) == sorted(base.lr.unique()) and len(tuned.lr.unique()) == 2
        assert set(base.loss_kind) == {"per_step"} and set(base.loss_steps) == set(tuned.learn_steps)
        assert tuned.config_json.map(lambda j: json.loads(j)["training"]["stllr"]["alpha_post"]).nunique() == 1
        # memory as the rule needs it: S-TLLR measured below BPTT in every matched architecture
        assert tuned.learning_memory_bytes_measured_per_sample.max() < base.learning_memory_bytes_measured_per_sample.min()
    assert df[df.status == "complete"][["val_accuracy", "learning_macs_formula_per_sample",
                                        "learning_memory_bytes_measured_per_batch"]].notna().all().all()
    # trained to convergence (#15 item 3): at least 90% of the matched runs stop by patience
    m = pd.read_csv(folder / "report" / "matched.csv")
    stopped = m[["stllr_stopped_patience", "bptt_stopped_patience"]].to_numpy().sum()
    assert stopped >= 0.9 * (m["stllr_seeds"].sum() + m["bptt_seeds"].sum()), m.filter(like="stopped")
    frontier = pd.read_csv(folder / "report" / "frontier.csv")
    assert len(frontier) >= 1 and set(frontier.config_id) <= set(df.config_id)
    page = (folder / "report" / "report.html").read_text()
    assert "S-TLLR vs BPTT on embedded digits" in page  # the study's description
    st = run("status", str(folder), "--json")
    status = json.loads(st.stdout)
    assert status["finished"] and status["configurations_trained"] == 10 and status["frontier_size"] == len(
        frontier.drop_duplicates("config_id"))
    for fmt in ("csv", "json", "parquet"):
        out = run("export", str(folder), "--format", fmt)
        assert out.returncode == 0, out.stderr
        path = folder / ("results-export.parquet" if fmt == "parquet" else f"results.{fmt}")
        back = {"csv": pd.read_csv, "parquet": pd.read_parquet,
                "json": lambda p: pd.read_json(p, lines=True)}[fmt](path)
        assert len(back) == len(df) and list(back.trial_id) == list(df.trial_id)
    own = run("export", str(folder), "--format", "csv", "--out", str(folder / "results.parquet"))
    assert own.returncode == 2 and "the study's own results table" in own.stderr
    # the budget: never below what is trained; --set budget.trials on a resume is --trials
    smaller = run("sweep", "--resume", str(folder), "--trials", "3", "--quiet", "--no-report")
    assert smaller.returncode == 2 and "10 configurations are trained already; give at least 10" in smaller.stderr
    grown = run("sweep", "--resume", str(folder), "--set", "budget.trials=11", "--quiet", "--no-report", timeout=300)
    assert grown.returncode == 0, grown.stderr[-2000:]
    assert json.loads((folder / "budget.json").read_text())["trials"] == 11
    assert json.loads(run("status", str(folder), "--json").stdout)["configurations_trained"] == 11
    piped = subprocess.run(f"{sys.executable} -m study.cli status {folder} | head -1", shell=True, cwd=ROOT, env=env(),
                           capture_output=True, text=True)
    assert piped.stderr == "" and piped.stdout.startswith(str(folder))  # a reader that leaves: no traceback


@pytest.mark.parametrize("sampler", [{"name": "tpe", "seed": 0, "n_startup_trials": 1, "multivariate": True},
                                     {"name": "grid", "seed": 0}, {"name": "random", "seed": 0},
                                     {"name": "nsga2", "seed": 0, "population_size": 2}])
def test_every_sampler_a_preset_names_runs_a_sweep(study_file, tmp_path, sampler):
    from spaces import PRESET_NAMES, load_study

    named = {load_study(p, check_data=False).sampler.name for p in PRESET_NAMES}
    assert named <= {"tpe", "grid", "random", "nsga2"}  # this test covers each of them
    path = study_file(search={"width": {"type": "categorical", "choices": [16, 32]},
                              "learn_steps": {"type": "categorical", "choices": [4]}},
                      budget={"trials": 2, "epochs": 1, "seeds": [0]}, sampler=sampler,
                      baseline={"search": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
                                "trials": 1})
    folder = tmp_path / "study"
    sweep(str(path), out=str(folder), quiet=True, report=False)
    df = pd.read_parquet(folder / "results.parquet")
    assert sorted(df[df.role == "search"].width) == [16, 32] and set(df.status) == {"complete"}
    assert (df.role == "baseline").sum() == 2


def test_train_refuses_values_outside_the_space_and_says_what_it_sampled(study_file):
    bad = run("train", "quickstart", "--set", "alpha_post=2", timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "alpha_post" in bad.stderr and "-1" in bad.stderr and "epoch" not in bad.stdout
    ok = run("train", str(study_file()), "--set", "width=16", timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    lines = ok.stdout.splitlines()
    params = json.loads(lines[0].removeprefix("params: "))
    assert params["width"] == 16 and -1 <= params["alpha_post"] <= 1 and 2 <= params["learn_steps"] <= 16
    assert lines[1] == "sampled at random (seed 0), since --set gave none: alpha_post, learn_steps"
    assert lines[2].startswith("epoch 1/1: train_acc ")


def test_train_bptt_learns_the_matched_baseline_objective_and_stops_by_patience(study_file):
    path = study_file(budget={"trials": 2, "epochs": 40, "seeds": [0], "patience": 1})
    ok = run("train", str(path), "--rule", "bptt", "--set", "width=16", "--set", "learn_steps=4",
             timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    params = json.loads(ok.stdout.splitlines()[0].removeprefix("params: "))
    assert params["loss"] == "per_step" and params["learn_steps"] == 4  # as the study's matched baseline
    last = ok.stdout.strip().splitlines()[-1]
    assert last.startswith("stopped after ") and "no better validation result for 1 epochs" in last, last
    bad = run("train", str(path), "--loss", "per_step_all", timeout=120)
    assert bad.returncode == 2 and "not an objective S-TLLR learns" in bad.stderr and "add --rule bptt" in bad.stderr


def test_a_sweep_runs_the_2x2_of_rule_and_objective_to_its_report_section(study_file, tmp_path):
    """baseline.loss and baseline.stllr_loss both [per_step, sum_output]: every architecture the
    search trained gets the four cells, with the same learning rates and seeds; the report's
    2x2 section and effects come from them."""
    path = study_file(search={"alpha_post": {"type": "float", "low": -1.0, "high": 1.0}},
                      model={"kind": "mlp", "fixed": {"width": 16}},
                      fixed={"training": {"lr": 3e-3}, "stllr": {"lambda_pre": 1.0, "learn_steps": 8},
                             "data": {"batch_size": 128, "val_fraction": 0.2}},
                      baseline={"search": {"lr": [0.003, 0.01]}, "trials": 1,
                                "loss": ["per_step", "sum_output"], "stllr_loss": ["per_step", "sum_output"]},
                      budget={"trials": 2, "epochs": 1, "seeds": [0, 1]})
    folder = tmp_path / "2x2"
    res = run("sweep", str(path), "--out", str(folder), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    df = pd.read_parquet(folder / "results.parquet")
    tuning = df[df["role"].isin(["tuned", "baseline"])]
    cells = tuning.groupby(["rule", "loss_kind"])
    assert set(cells.groups) == {("stllr", "per_step"), ("stllr", "sum_output"), ("bptt", "per_step"),
                                 ("bptt", "sum_output")}
    assert all(set(g["seed"]) == {0, 1} and g["status"].eq("complete").all() for _, g in cells)
    assert tuning["lr"].nunique() == 1  # the same tuning setting in all four cells
    seq = tuning[(tuning["rule"] == "stllr") & (tuning["loss_kind"] == "sum_output")]
    own = tuning[(tuning["rule"] == "stllr") & (tuning["loss_kind"] == "per_step")]
    assert seq["alpha_post"].iloc[0] == own["alpha_post"].iloc[0]  # at the factors the search chose
    # its window is held to the sequence's end: 2·N values per window step in the formula
    assert (seq["learning_memory_values_formula_per_sample"].iloc[0]
            == 8 * own["learning_memory_values_formula_per_sample"].iloc[0])
    report = folder / "report"
    t = pd.read_csv(report / "rule_objective.csv")
    assert len(t) == 1 and t["n_pairs"].iloc[0] == 2
    assert set(pd.read_csv(report / "objective_effects.csv")["effect"]) == {"stllr", "bptt", "interaction", "paper"}
    assert "Rule × objective (2×2)" in (report / "report.html").read_text()


def test_a_packed_sweep_gives_every_run_its_unpacked_result(study_file, tmp_path):
    """``resources.pack``: without a scheduler, configurations of one architecture and the seeds
    of each train as packs, each run still its own (folder, checkpoint, row), with the result it
    has alone (float64: to 1e-9), and each configuration told to its own Optuna trial."""
    common = dict(budget={"trials": 4, "epochs": 3, "seeds": [0, 1]}, sampler={"name": "random", "seed": 1},
                  model={"kind": "mlp", "fixed": {"gamma": 0.9, "theta": 0.5, "surrogate": "sigmoid",
                                                  "gamma_o": 0.95, "width": 32}},
                  search={"alpha_post": {"type": "float", "low": -1.0, "high": 1.0},
                          "learn_steps": {"type": "int", "low": 2, "high": 16}},
                  baseline={"search": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}, "trials": 2},
                  fixed={"training": {"lr": 3e-3}, "stllr": {"lambda_pre": 1.0}, "runtime": {"dtype": "float64"},
                         "data": {"batch_size": 128, "val_fraction": 0.2}})
    tables, values = {}, {}
    for pack in ("auto", 1):
        path = study_file(name=f"pack{pack}", resources={"cpu": 1, "gpu": 0, "pack": pack}, **common)
        folder = tmp_path / f"pack{pack}"
        sweep(str(path), out=str(folder), quiet=True, report=False)
        tables[pack] = pd.read_parquet(folder / "results.parquet").set_index("trial_id").sort_index()
        values[pack] = {(name, t.user_attrs.get("config_id")): (t.state, t.values)
                        for name, st in _studies(folder).items() for t in st.trials if t.user_attrs.get("config_id")}
    packed, alone = tables["auto"], tables[1]
    assert list(packed.index) == list(alone.index) and set(packed.status) == {"complete"}
    assert alone.pack_size.isna().all()
    # the search's 4 configurations x 2 seeds trained as packs spanning configurations, and so did the tuning
    search = packed[packed.role == "search"]
    assert search.pack_size.max() > 2 and search.groupby("pack_id").config_id.nunique().max() > 1
    assert packed[packed.role == "baseline"].pack_size.max() == 4  # 2 lr settings x 2 seeds
    for col in ("val_accuracy", "test_accuracy", "train_loss", "val_loss", "epochs_done",
                "learning_memory_bytes_measured_per_batch", "learning_macs_measured_per_sample"):
        assert (packed[col] - alone[col]).abs().max() <= 1e-9, col
    for tid in packed.index:  # each member kept its own run folder and checkpoint
        assert os.path.exists(tmp_path / "packauto" / "runs" / tid / "checkpoint.pt")
    # every configuration's Optuna trial was told its own outcome, the one it has unpacked
    assert values["auto"].keys() == values[1].keys() and len(values[1]) >= 4 + 2 * 2
    for key, (state, vals) in values["auto"].items():
        state1, vals1 = values[1][key]
        assert state == state1 == optuna.trial.TrialState.COMPLETE, key
        assert vals == pytest.approx(vals1, rel=1e-9, abs=1e-9), key


def test_a_packed_conv_sweep_with_standardised_weights_gives_every_run_its_unpacked_result(study_file, tmp_path):
    """``resources.pack: n`` packs VGG runs with weight standardisation too (issue #16 item 1):
    the rows equal the unpacked sweep's (float64: to 1e-9). (``auto`` trains VGG alone on a
    CPU, where packs of convolutions measured slower: ``study.trial.auto_pack_size``.)"""
    common = dict(dataset={"name": "digits", "options": {"T": 8, "image": True}},
                  budget={"trials": 2, "epochs": 2, "seeds": [0, 1]}, sampler={"name": "random", "seed": 1},
                  model={"kind": "vgg", "fixed": {"gamma": 0.9, "theta": 0.5, "surrogate": "sigmoid", "gamma_o": 0.95,
                                                  "width": 2, "depth": 1, "weight_standardization": True,
                                                  "ws_gain": True}},
                  search={"alpha_post": {"type": "float", "low": -1.0, "high": 1.0}},
                  baseline={"search": {"lr": [0.003, 0.01]}, "trials": 1},
                  fixed={"training": {"lr": 3e-3}, "stllr": {"lambda_pre": 1.0, "learn_steps": 8},
                         "runtime": {"dtype": "float64"}, "data": {"batch_size": 256, "val_fraction": 0.2}})
    tables = {}
    for pack in (4, 1):
        path = study_file(name=f"vgg{pack}", resources={"cpu": 1, "gpu": 0, "pack": pack}, **common)
        folder = tmp_path / f"vgg{pack}"
        sweep(str(path), out=str(folder), quiet=True, report=False)
        tables[pack] = pd.read_parquet(folder / "results.parquet").set_index("trial_id").sort_index()
    packed, alone = tables[4], tables[1]
    assert list(packed.index) == list(alone.index) and set(packed.status) == {"complete"}
    assert packed.pack_size.max() >= 2 and alone.pack_size.isna().all()
    for col in ("val_accuracy", "test_accuracy", "train_loss", "val_loss",
                "learning_memory_bytes_measured_per_batch", "learning_macs_measured_per_sample"):
        assert (packed[col] - alone[col]).abs().max() <= 1e-9, col


def test_train_prints_the_aee_of_each_epoch_of_the_flow_preset():
    ok = run("train", "flow_synthetic", "--set", "budget.epochs=2", "--set", "lr=0.0035", "--set", "alpha_post=0.2",
             "--set", "lambda_pre=0.77", "--set", "lambda_post=0.72", timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    epochs = [line for line in ok.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"]
    for line in epochs:  # AEE on validation and test, next to predicting no motion
        assert " val_aee " in line and " test_aee " in line and "(no motion: 1.681)" in line, line


def test_a_flow_sweep_ranks_by_aee_and_reports_lower_as_better(tmp_path):
    folder = tmp_path / "flow"
    ok = run("sweep", "flow_synthetic", "--out", str(folder), "--set", "budget.trials=2", "--set", "budget.epochs=2",
             "--set", "baseline.trials=1", "--set", "budget.seeds=[0]", "--set", "model.fixed.width=4",
             "--set", "dataset.options.n_train=128",
             "--set", "dataset.options.n_test=64", timeout=600)
    assert ok.returncode == 0, ok.stderr[-2000:]
    df = pd.read_parquet(folder / "results.parquet")
    assert set(df.status) == {"complete"} and set(df.measure) == {"aee"}
    assert sorted(df.role) == ["baseline", "search", "search", "tuned"] and df.val_accuracy.isna().all()
    assert (df.val_aee > 0).all() and df.test_zero_aee.nunique() == 1 and 1.5 < df.test_zero_aee.iloc[0] < 2.0
    search = df[df.role == "search"]
    # the configuration tuned is the search's lowest mean validation AEE (one seed: its run's)
    tuned = json.loads(df[df.role == "tuned"].params_json.iloc[0])
    best = json.loads(search.loc[search.val_aee.idxmin()].params_json)
    assert {k: best[k] for k in ("alpha_post", "lambda_pre", "lambda_post")} == \
        {k: tuned[k] for k in ("alpha_post", "lambda_pre", "lambda_post")}
    summary = (folder / "report" / "summary.md").read_text()
    assert "test AEE, S-TLLR − BPTT [px], lower is better" in summary and "accuracy" not in summary
    status = run("status", str(folder), timeout=120)
    assert status.returncode == 0 and "best stllr: val_aee " in status.stdout and "lower is better" in status.stdout


def _mvsec_files(root):
    """MVSEC's layout: outdoor_day2 (12 frames) and indoor_flying1-3 (5 frames), events in the centre crop."""
    import h5py
    import numpy as np

    folder = root / "mvsec"
    folder.mkdir(parents=True)
    H, W = 260, 346
    for i, seq in enumerate(["outdoor_day2", "indoor_flying1", "indoor_flying2", "indoor_flying3"]):
        rng = np.random.default_rng(i)
        n = 12 if i == 0 else 5
        ts = 0.05 + 0.03 * np.arange(n)
        events, inds = [], [-1]
        for k in range(1, n):
            t = np.sort(rng.uniform(ts[k - 1], ts[k], 200))
            events.append(np.stack([rng.integers(165, 181, 200), rng.integers(122, 138, 200), t,
                                    rng.choice([-1.0, 1.0], 200)], 1))
            inds.append(inds[-1] + 200)
        ys, xs = np.mgrid[0:H, 0:W]
        gt_ts = np.arange(0.0, ts[-1] + 0.1, 0.05)
        flow = np.zeros((len(gt_ts), 2, H, W), np.float32)
        flow[:, 0], flow[:, 1] = 1.0, 0.5
        with h5py.File(folder / f"{seq}_data.hdf5", "w") as f:
            f["davis/left/events"] = np.concatenate(events)
            f["davis/left/image_raw"] = np.stack([((xs + 2 * k) * 7 + ys * 3) % 256 for k in range(n)]).astype(np.uint8)
            f["davis/left/image_raw_ts"] = ts
            f["davis/left/image_raw_event_inds"] = np.array(inds)
        with h5py.File(folder / f"{seq}_gt.hdf5", "w") as f:
            f["davis/left/flow_dist"] = flow
            f["davis/left/flow_dist_ts"] = gt_ts


@pytest.mark.parametrize("rule", ["stllr", "bptt"])
def test_the_mvsec_preset_trains_on_files_in_mvsec_layout(tmp_path, rule):
    _mvsec_files(tmp_path)
    ok = run("train", "mvsec_flow", "--rule", rule, "--set", f"dataset.data_dir={tmp_path}",
             "--set", "dataset.options.crop=16", "--set", "model.fixed.width=2", "--set", "model.fixed.depth=2",
             "--set", "budget.epochs=2", "--set", "fixed.data.val_fraction=0.2", "--set", "resources.gpu=0",
             "--set", "fixed.data.val_split=random",  # 11 pairs: one block of 100
             "--set", "alpha_post=0.5", "--set", "lambda_pre=0.9", "--set", "lambda_post=0.5", timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    epochs = [line for line in ok.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2
    # no motion: the gt (1, 0.5) px per 50 ms, scaled to the 30 ms between two frames: |(0.6, 0.3)|
    assert all("(no motion: 0.671)" in line for line in epochs), epochs
    # S-TLLR learns at 1 of T = 10 steps: formula learning MACs of one step against BPTT's 2·T·S
    macs = int(epochs[0].split("learning_macs ")[1].split()[0])
    assert macs == (84096 if rule == "stllr" else 622080)
