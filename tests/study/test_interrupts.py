"""Interrupts and resumes of a real driver: Ctrl-C (SIGINT to the whole process group, as a
terminal sends it), SIGTERM to the driver, kill -9 of a resume and a resume again, and a
truncated checkpoint. Each run of a configuration must train every epoch exactly once in
the record and never run twice at the same time."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from study_cases import kill_group, open_storage, run, start, wait_for

pytestmark = pytest.mark.slow


def _runs_started(folder: Path, n: int, epoch: int = 1):
    def check() -> bool:
        runs = folder / "runs"
        started = 0
        for d in runs.iterdir() if runs.exists() else []:
            try:
                curves = json.loads((d / "curves.json").read_text())
            except (OSError, ValueError):
                continue
            started += bool(curves) and max(c["epoch"] for c in curves) >= epoch
        return started >= n

    return check


def _attempts(folder: Path) -> dict[str, list[tuple[float, int, str]]]:
    out: dict[str, list[tuple[float, int, str]]] = {}
    for log in (folder / "runs").glob("*/attempts.log"):
        for line in log.read_text().splitlines():
            t, _node, _pid, pid, *what = line.split()
            out.setdefault(log.parent.name, []).append((float(t), int(pid), " ".join(what)))
    return out


def _never_twice_at_once(folder: Path) -> None:
    """Every run's attempts are one after another: a start never comes while another attempt of
    the same run, alive, has not ended (a killed attempt's process is gone before the next)."""
    for run_id, events in _attempts(folder).items():
        live: set[int] = set()
        for _t, pid, what in sorted(events):
            if what == "start":
                others = {p for p in live if p != pid and _alive(p)}
                assert not others, f"{run_id} started while attempt {others} still ran"
                live.add(pid)
            else:
                live.discard(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _check_finished(folder: Path, budget: int, epochs: int, seeds: int) -> pd.DataFrame:
    df = pd.read_parquet(folder / "results.parquet")
    trained = df[(df.role == "search") & (df.status != "infeasible")]
    assert trained.config_id.nunique() == budget
    assert set(df[df.status != "infeasible"].status) == {"complete"}, df.status.value_counts()
    assert df.trial_id.is_unique
    assert df[df.status == "complete"].groupby("config_id").seed.nunique().eq(seeds).all()
    for curves in df[df.status == "complete"].curves_json:
        assert [c["epoch"] for c in json.loads(curves)] == list(range(1, epochs + 1))
    for name, s in ((s.study_name, optuna.load_study(study_name=s.study_name, storage=open_storage(str(folder))))
                    for s in optuna.get_all_study_summaries(open_storage(str(folder)))):
        assert not [t for t in s.trials if t.state == optuna.trial.TrialState.RUNNING], name
    # every baseline configuration trained once: distinct configurations = the study's baseline.trials
    base = df[df.role == "baseline"]
    assert base.groupby("arch_id").config_id.nunique().le(2).all()
    _never_twice_at_once(folder)
    return df


def test_ctrl_c_stops_records_interrupted_and_resume_finishes(study_file, tmp_path):
    path = study_file(budget={"trials": 3, "epochs": 6, "seeds": [0, 1]}, sampler={"name": "random", "seed": 4},
                      baseline={"search": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
                                "trials": 1})
    folder = tmp_path / "study"
    proc = start("sweep", str(path), "--out", str(folder), log=tmp_path / "first.log")
    try:
        wait_for(_runs_started(folder, 1), 240, "a run's first epoch")
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        rc = proc.wait(timeout=120)
    finally:
        kill_group(proc)
    out = (tmp_path / "first.log").read_text()
    assert rc == 130, out[-3000:]
    line = [ln for ln in out.splitlines() if "interrupted:" in ln]
    assert line and line[-1].startswith("stllr: interrupted: ") and line[-1].endswith(
        f"configurations done; resume with stllr sweep --resume {folder}"), out[-2000:]
    assert " of 3 configurations done" in line[-1]
    assert "results:" not in out and "report:" not in out and not (folder / "report").exists()
    df = pd.read_parquet(folder / "results.parquet")
    assert (df.status == "interrupted").sum() >= 1
    st = run("status", str(folder), "--json")
    status = json.loads(st.stdout)
    assert status["finished"] is False and status["budget"] == 3
    assert status["state"].startswith("unfinished: resume with stllr sweep --resume")

    res = run("sweep", "--resume", str(folder), "--quiet", "--no-report", timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    _check_finished(folder, budget=3, epochs=6, seeds=2)
    status = json.loads(run("status", str(folder), "--json").stdout)
    assert status["finished"] is True and status["state"] == "finished" and status["configurations_left"] == 0
    assert set(status["best"]) == {"stllr", "bptt"} and status["frontier_size"] >= 1


def test_sigterm_to_the_whole_job_is_an_interrupt_too(study_file, tmp_path):
    """A scheduler's SIGTERM (scancel, systemd) reaches every process of the job, Ray's own included."""
    path = study_file(budget={"trials": 2, "epochs": 15, "seeds": [0]}, rules=["stllr"], baseline=None,
                      sampler={"name": "random", "seed": 0})
    folder = tmp_path / "study"
    proc = start("sweep", str(path), "--out", str(folder), "--report", log=tmp_path / "log")
    try:
        wait_for(_runs_started(folder, 1), 240, "a run's first epoch")
        os.killpg(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        kill_group(proc)
    out = (tmp_path / "log").read_text()
    assert rc == 130, out[-3000:]
    assert "stllr: SIGTERM: stopping the running trials" in out
    done = re.search(r"stllr: interrupted: (\d) of 2 configurations done; resume with stllr sweep --resume", out)
    assert done, out[-2000:]
    assert int(done.group(1)) == json.loads(run("status", str(folder), "--json").stdout)["configurations_trained"]
    assert (folder / "report" / "report.html").exists()  # --report asks for it even when interrupted
    df = pd.read_parquet(folder / "results.parquet")
    assert "interrupted" in set(df.status)
    assert all(r.epochs_done >= 1 for r in df[df.status == "interrupted"].itertuples())


def test_a_killed_resume_resumed_again_trains_each_run_once(study_file, tmp_path):
    """The duplicate-baseline race: kill -9 a sweep, kill -9 its resume, resume again."""
    path = study_file(budget={"trials": 4, "epochs": 2, "seeds": [0, 1]}, sampler={"name": "random", "seed": 1},
                      baseline={"search": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
                                "trials": 2})
    folder = tmp_path / "study"
    first = start("sweep", str(path), "--out", str(folder), "--quiet", "--no-report", log=tmp_path / "1.log")
    try:
        wait_for(_runs_started(folder, 3, epoch=2), 240, "three runs at their second epoch")
    finally:
        kill_group(first)
    second = start("sweep", "--resume", str(folder), "--quiet", "--no-report", log=tmp_path / "2.log")
    try:
        n = len(list((folder / "runs").glob("*/row.json")))
        wait_for(lambda: len(list((folder / "runs").glob("*/row.json"))) >= n + 2, 240, "two more runs ended")
    finally:
        kill_group(second)
    res = run("sweep", "--resume", str(folder), "--quiet", "--no-report", timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    _check_finished(folder, budget=4, epochs=2, seeds=2)
    assert any(len([e for e in ev if e[2] == "start"]) > 1 for ev in _attempts(folder).values()), \
        "no run was interrupted and continued: the test did not kill in the middle of a run"


def test_a_truncated_checkpoint_restarts_its_run_from_scratch(study_file, tmp_path):
    path = study_file(search={"width": {"type": "categorical", "choices": [16]}},
                      budget={"trials": 1, "epochs": 12, "seeds": [0]}, rules=["stllr"], baseline=None,
                      sampler={"name": "random", "seed": 0})
    folder = tmp_path / "study"
    proc = start("sweep", str(path), "--out", str(folder), "--quiet", "--no-report", log=tmp_path / "1.log")
    try:
        wait_for(_runs_started(folder, 1, epoch=1), 240, "the first epoch")
    finally:
        kill_group(proc)
    (ckpt,) = list((folder / "runs").glob("*/checkpoint.pt"))
    # the Ray worker outlives its driver for a moment (it notices its raylet is gone): until it
    # has, it may write the next epoch's checkpoint over the truncated one
    pid = int((ckpt.parent / "worker.pid").read_text())
    deadline = time.time() + 30
    while time.time() < deadline and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.2)
    if os.path.exists(f"/proc/{pid}"):
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    assert not (ckpt.parent / "row.json").exists(), "the run ended before the kill: nothing to test"
    ckpt.write_bytes(ckpt.read_bytes()[:200])  # a disk that filled mid-write
    res = run("sweep", "--resume", str(folder), "--quiet", "--no-report", timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    df = pd.read_parquet(folder / "results.parquet")
    assert list(df.status) == ["complete"]
    assert [c["epoch"] for c in json.loads(df.curves_json[0])] == list(range(1, 13))
    assert list(ckpt.parent.glob("checkpoint.pt.unreadable-*"))


def test_a_disk_without_room_refuses_the_sweep_and_leaves_nothing(study_file, tmp_path):
    env_big = {"STLLR_MIN_FREE_MB": str(10**12)}
    res = run("sweep", str(study_file()), "--out", str(tmp_path / "s"), timeout=120, extra_env=env_big)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr[-2000:]
    assert "MB free, below the 1000000000000 MB a sweep keeps" in res.stderr
    assert not (tmp_path / "s").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MB filesystem (tmpfs; needs root, as CI has)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.parametrize("pack", [1, "auto"])
def test_a_disk_that_fills_stops_the_sweep_in_one_line_and_loses_nothing(study_file, small_disk, tmp_path, pack):
    # width 512: each checkpoint (weights and Adam's state) is ~0.5 MB, so 3 MB fill within a few runs
    # (packed, up to 16 runs write their checkpoints at once: the disk may fill before any has ended)
    path = study_file(search={"width": {"type": "categorical", "choices": [384, 512]},
                              "alpha_post": {"type": "float", "low": -1.0, "high": 1.0},
                              "learn_steps": {"type": "int", "low": 2, "high": 16}},
                      budget={"trials": 10, "epochs": 2, "seeds": [0, 1]}, sampler={"name": "random", "seed": 0},
                      resources={"cpu": 1, "gpu": 0, "pack": pack})
    folder = small_disk / "s"
    res = run("sweep", str(path), "--out", str(folder), timeout=400, extra_env={"STLLR_MIN_FREE_MB": "1"})
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("stllr: error: stopped by a nearly full disk: ") and "resume with stllr sweep" in last
    before = pd.read_parquet(folder / "results.parquet")
    done = before[before.status == "complete"].set_index("trial_id")
    assert len(done) >= (1 if pack == 1 else 0)
    assert set(before.status) <= {"complete", "interrupted", "running", "infeasible"}
    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)
    again = run("sweep", "--resume", str(folder), "--quiet", "--no-report", timeout=600,
                extra_env={"STLLR_MIN_FREE_MB": "1"})
    assert again.returncode == 0, again.stderr[-2000:]
    df = _check_finished(folder, budget=10, epochs=2, seeds=2)
    assert (df.set_index("trial_id").loc[done.index].ended_at == done.ended_at).all()  # nothing lost or redone


@pytest.mark.parametrize("when", ["gcs_server", 4.0])
def test_ctrl_c_while_ray_starts_stores_nothing_and_exits_130(study_file, tmp_path, when):
    """Ctrl-C once the local Ray's first process exists (Ray is starting), or 4 s in. (A fixed 1 s
    was a race on a loaded machine: the signal could land before Python had its handlers.)"""
    import time

    folder = tmp_path / "study"
    proc = start("sweep", str(study_file()), "--out", str(folder), log=tmp_path / "log")
    try:
        if isinstance(when, str):
            wait_for(lambda: bool(_children(proc.pid, when)), 120, f"the sweep's {when}", interval=0.05)
        else:
            time.sleep(when)
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=120)
    finally:
        kill_group(proc)
    out = (tmp_path / "log").read_text()
    assert rc == 130, out[-3000:]
    assert "Traceback" not in out and out.strip().splitlines()[-1].startswith("stllr: interrupted")
    if not (folder / "study.yaml").exists():  # stopped before the ledger: nothing at all
        assert not folder.exists() or not any(folder.iterdir())


def _children(pid: int, name: str) -> list[int]:
    """Processes whose parent is ``pid`` and whose command line names ``name``."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as fh:
                cmd = fh.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and name.encode() in cmd:
            out.append(int(d))
    return out


@pytest.mark.parametrize("victim", ["raylet", "gcs_server"])
def test_a_dead_local_ray_stops_the_sweep_with_one_line_and_resume_finishes(study_file, tmp_path, victim):
    """The sweep's own Ray loses its raylet (kill -9, as the OOM killer or another job's
    ``ray stop --force`` would): Ray's driver calls then block for good. The sweep must not hang:
    one line, exit 2, runs in flight recorded as interrupted; --resume finishes the study. (Tune's
    stopper sees the cluster without CPUs, or, when Ray's calls block, the watch of its processes.)"""
    path = study_file(budget={"trials": 2, "epochs": 12, "seeds": [0]}, rules=["stllr"], baseline=None,
                      sampler={"name": "random", "seed": 0})
    folder = tmp_path / "study"
    proc = start("sweep", str(path), "--out", str(folder), "--quiet", "--no-report", log=tmp_path / "out.log")
    try:
        wait_for(_runs_started(folder, 1), 240, "a run's first epoch")
        victims = _children(proc.pid, victim)
        assert victims, f"the sweep's local {victim} was not found among its children"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        rc = proc.wait(timeout=120)
    finally:
        kill_group(proc)
    out = (tmp_path / "out.log").read_text()
    assert rc == 2, out[-3000:]
    errors = [ln for ln in out.splitlines() if ln.startswith("stllr: error:")]
    assert errors and errors[-1].startswith("stllr: error: stopped by a Ray cluster without live nodes: "), out[-2000:]
    assert errors[-1].endswith(f"resume with stllr sweep --resume {folder}") and "intact" in errors[-1]
    assert "Traceback" not in out
    df = pd.read_parquet(folder / "results.parquet")
    # nothing left running: the run in flight is interrupted (or, on a loaded machine, its worker
    # finished it before it noticed its raylet was gone: complete)
    assert set(df.status) <= {"complete", "interrupted"} and len(df) >= 1, df.status.value_counts()
    res = run("sweep", "--resume", str(folder), "--quiet", "--no-report", timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    _check_finished(folder, budget=2, epochs=12, seeds=1)


def test_a_run_stopped_between_its_checkpoint_and_its_curves_keeps_every_epoch(tmp_path):
    """``curves.json`` is written after the epoch's checkpoint. A run stopped in between (killed,
    or, packed, a full disk that failed another member's checkpoint of the same epoch) resumes
    from a checkpoint one epoch ahead of its curves: that epoch comes back from the checkpoint
    (CI once lost epoch 1 of a packed run this way)."""
    from stllr_engine.network import NetworkSpec, build_network
    from stllr_engine.train import TrainConfig, save_checkpoint
    from study.trial import _resume_curves

    net = build_network(NetworkSpec(kind="mlp", input_shape=(4,), num_classes=2, width=8, depth=1, seed=0))
    ckpt, curves = str(tmp_path / "checkpoint.pt"), tmp_path / "curves.json"
    epoch = {e: {"epoch": e, "train_loss": 1.0 / e, "val_accuracy": 0.5 + 0.1 * e, "finished": False} for e in (1, 2, 3)}
    save_checkpoint(ckpt, net, None, None, 1, TrainConfig(), epoch[1])
    assert _resume_curves(str(curves), ckpt) == [epoch[1]]  # no curves.json yet
    curves.write_text(json.dumps([epoch[1]]))
    assert _resume_curves(str(curves), ckpt) == [epoch[1]]  # in step: nothing added twice
    save_checkpoint(ckpt, net, None, None, 2, TrainConfig(), epoch[2])
    assert _resume_curves(str(curves), ckpt) == [epoch[1], epoch[2]]
    curves.write_text(json.dumps([epoch[1], epoch[2], epoch[3]]))  # curves ahead of an older checkpoint
    assert _resume_curves(str(curves), ckpt) == [epoch[1], epoch[2]]
