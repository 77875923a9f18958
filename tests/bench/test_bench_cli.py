"""The benchmarks run end to end through the ``stllr`` command and print the promised fields."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest


def _stllr(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "study.cli", *args], capture_output=True, text=True, timeout=timeout)


def _lines(out: str) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [r for r in rows if "target" not in r], [r for r in rows if "target" in r]


@pytest.mark.slow
def test_bench_data_json():
    p = _stllr("bench", "data", "--samples", "150", "--json")
    assert p.returncode == 0, p.stderr
    records, targets = _lines(p.stdout)
    assert {r["learn_steps"] for r in records} == {10, 90}
    for r in records:
        assert r["samples"] == 150 and r["batch"] == 128
        assert 0 < r["cached_data_time_s"] < r["first_epoch_time_s"]
        assert r["step_time_s"] > 0 and r["data_to_step_ratio"] == pytest.approx(r["cached_data_time_s"] / r["step_time_s"])
    assert len(targets) == 2 and all("pass" in t for t in targets)


@pytest.fixture(scope="module")
def engine_quick() -> tuple[list[dict], list[dict]]:
    """One ``stllr bench engine --quick --json`` run, shared by the tests below."""
    p = _stllr("bench", "engine", "--quick", "--json")
    assert p.returncode == 0, p.stderr
    return _lines(p.stdout)


@pytest.mark.slow
def test_bench_engine_quick_json(engine_quick):
    records, targets = engine_quick
    fields = {"model", "rule", "impl", "mode", "T", "learn_steps", "batch", "step_time_s",
              "learning_memory_bytes_measured_per_batch", "learning_macs_formula_per_sample", "achieved_gflops",
              "gemm_peak_gflops"}
    for r in records:
        assert fields <= set(r)
    mem = "learning_memory_bytes_measured_per_batch"
    chunked = {r["chunk_steps"]: r for r in records if r["mode"] == "chunked" and r["learn_steps"] == 90}
    default10 = [r for r in records if r["mode"] == "chunked" and r["learn_steps"] == 10]
    assert [(r["rule"], r["T"], r["chunk_steps"], r["fused"]) for r in default10] == [("stllr", 100, 5, True)]
    by = {(r["model"], r["rule"], r["impl"], r["mode"], r["T"], r["learn_steps"]): r for r in records
          if r["mode"] != "chunked" and (r["impl"] != "engine" or r["fused"])}  # the eager twins: below
    eager = [r for r in records if r["impl"] == "engine" and not r["fused"]]
    assert sorted((r["rule"], r["mode"], r["T"], r["learn_steps"]) for r in eager) == [
        ("bptt", "fused_scan", 100, 100), ("stllr", "window", 100, 10)]
    for r in eager:  # the same step, eager: the same learning memory, measured exactly
        assert r["learning_memory_bytes_measured_per_batch"] == by[
            (r["model"], r["rule"], "engine", r["mode"], r["T"], r["learn_steps"])]["learning_memory_bytes_measured_per_batch"]
    assert all(r["fused_compile_s"] >= 0 for r in records)
    stream25 = by[("shd_rsnn", "stllr", "engine", "streaming", 25, 10)]
    stream400 = by[("shd_rsnn", "stllr", "engine", "streaming", 400, 10)]
    assert stream25[mem] == stream400[mem]  # exact, load-independent
    peak = "peak_step_bytes_measured_per_batch"
    assert stream25[peak] == stream400[peak]  # every allocation, independently tracked
    # BPTT learns over all T steps: its learn_steps is T
    bptt25 = by[("shd_rsnn", "bptt", "engine", "fused_scan", 25, 25)]
    bptt400 = by[("shd_rsnn", "bptt", "engine", "fused_scan", 400, 400)]
    assert bptt400[mem] / bptt25[mem] == pytest.approx(16, rel=0.03)
    assert by[("shd_rsnn", "bptt", "engine", "fused_scan", 100, 100)]["learning_macs_formula_per_sample"] == 105_300_000
    assert len(targets) == 15
    named = {t["target"]: t for t in targets}
    default = named["#16: S-TLLR(learn_steps=10, chunked c=5, the default mode) / BPTT step time, SHD net"]
    window = named["#16, window mode: S-TLLR(learn_steps=10, window) / BPTT step time, SHD net"]
    assert (default["threshold"], window["threshold"],
            named["#16: BPTT engine / unrolled reference step time, SHD net"]["threshold"]) == (0.55, 0.55, 0.8)
    # the median over rounds of the two steps' ratio in the same round (quick: 3 rounds)
    for t in (default, window, named["#16: BPTT engine / unrolled reference step time, SHD net"]):
        assert len(t["per_round"]) == 3 and t["value"] == statistics.median(t["per_round"]) > 0
    assert sum(t["target"].startswith("fused (auto) / eager step time") for t in targets) == 2
    # chunked rows on the SHD net (T 100, learn_steps 90): the automatic chunk (6) and two others;
    # a chunk holds its records, so memory above streaming's grows exactly with c (exact, load-free)
    assert set(chunked) == {6, 3, 15}
    assert all((r["model"], r["rule"], r["impl"], r["T"], r["learn_steps"]) == ("shd_rsnn", "stllr", "engine", 100, 90)
               and r["step_time_s"] > 0 for r in chunked.values())
    stream90 = by[("shd_rsnn", "stllr", "engine", "streaming", 100, 90)]
    assert stream90["chunk_steps"] == 1 and by[("shd_rsnn", "stllr", "engine", "window", 100, 90)]["chunk_steps"] == 100
    above = {c: r[mem] - stream90[mem] for c, r in chunked.items()}
    assert above[15] == 5 * above[3] == 2.5 * above[6] > 0
    ratios = {t["target"]: t for t in targets if "chunked c=6, the default" in t["target"]}
    assert len(ratios) == 2
    bptt100 = by[("shd_rsnn", "bptt", "engine", "fused_scan", 100, 100)]
    window90 = by[("shd_rsnn", "stllr", "engine", "window", 100, 90)]
    for t in ratios.values():
        if "memory" in t["target"]:
            assert (t["op"], t["threshold"]) == ("<=", 0.25)
            assert t["value"] == pytest.approx(chunked[6][mem] / bptt100[mem]) and t["pass"]  # exact: 0.23
        else:
            assert (t["op"], t["threshold"]) == ("<=", 1.2)
            assert t["value"] == pytest.approx(chunked[6]["step_time_s"] / window90["step_time_s"])


@pytest.mark.slow
def test_bench_engine_table_prints_the_chunked_rows_and_ratios(engine_quick, capsys):
    """The same results as a table: the chunked rows and both ratio lines with PASS or MISS."""
    from bench.common import emit
    from bench.engine import COLUMNS

    records, targets = engine_quick
    emit(records, targets, False, COLUMNS)
    out = capsys.readouterr().out
    header, *rows = out.split("\n\n")[0].splitlines()
    assert header.split()[3:5] == ["mode", "chunk_steps"]
    assert sorted(r.split()[4] for r in rows if r.split()[3] == "chunked") == ["15", "3", "5", "6"]
    lines = [line for line in out.splitlines() if "chunked c=6, the default" in line]
    assert len(lines) == 2
    assert lines[0].startswith("  [PASS] S-TLLR(learn_steps=90, chunked c=6, the default) / BPTT measured learning")
    assert lines[0].endswith("(want <= 0.25)")
    assert lines[1].startswith(("  [PASS] S-TLLR(learn_steps=90, chunked c=6", "  [MISS] S-TLLR(learn_steps=90, chunked c=6"))
    assert "/ S-TLLR(learn_steps=90, window) step time, SHD net" in lines[1] and lines[1].endswith("(want <= 1.2)")


def test_unknown_subcommand_is_one_line_and_nonzero():
    p = _stllr("bench", "gpu-magic")
    assert p.returncode == 2
    assert "invalid choice" in p.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_one_line_and_exit_2():
    p = _stllr("bench", "engine", "--quick", "--device", "cuda")
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0
    assert "stllr: error: device='cuda' but this torch has no CUDA device available" in p.stderr


def test_bad_sample_count_is_one_line_and_exit_2():
    p = _stllr("bench", "data", "--samples", "0")
    assert p.returncode == 2
    assert "argument --samples: must be >= 1, got 0" in p.stderr


@pytest.mark.slow
def test_bench_study_json():
    """A small platform-overhead run: the figure is computed from the runs' own measured times."""
    p = _stllr("bench", "study", "--configs", "2", "--run-seconds", "1", "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    records, targets = _lines(p.stdout)
    (r,) = records
    assert r["configs"] == 2 and r["concurrency"] == 2 and r["summed_run_s"] > 0
    assert r["overhead"] == pytest.approx(1 - (r["summed_run_s"] / 2) / r["wall_s"])
    assert targets[0]["threshold"] == 0.15 and targets[0]["op"] == "<="


def test_official_dir_without_the_authors_code_is_one_line_and_exit_2(tmp_path):
    p = _stllr("bench", "engine", "--quick", "--official", str(tmp_path))
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0
    assert "no models/STDPAudioSNN.py there: give the root of a clone of github.com/mapolinario94/S-TLLR" in p.stderr


@pytest.mark.skipif(not __import__("os").environ.get("STLLR_OFFICIAL_DIR"),
                    reason="set STLLR_OFFICIAL_DIR to a clone of the authors' code")
def test_the_engine_computes_the_authors_update():
    """Same weights and inputs: the shd_rsnn_official preset's S-TLLR update equals the
    authors' code's (float32: their layers cast spikes to float32)."""
    import os

    import torch

    from bench.engine import official_comparison

    records, _ = official_comparison(os.environ["STLLR_OFFICIAL_DIR"], 4, torch.device("cpu"), T=12, learn_steps=8)
    assert records[0]["grad_rel_diff_vs_official"] <= 1e-4


def test_bench_packs_json_reports_both_ways_and_the_k16_target():
    p = _stllr("bench", "packs", "--nets", "digits_mlp", "--k", "1,16", "--rules", "stllr", "--reps", "1", "--json")
    assert p.returncode == 0, p.stderr
    records, targets = _lines(p.stdout)
    assert [(r["net"], r["rule"], r["K"]) for r in records] == [("digits_mlp", "stllr", 1), ("digits_mlp", "stllr", 16)]
    for r in records:
        assert r["speedup"] == pytest.approx(r["separate_s"] / r["packed_s"])
        assert r["configs_per_hour_packed"] == pytest.approx(3600 * r["K"] / (r["packed_s"] * 360))
    assert len(targets) == 1 and targets[0]["value"] == pytest.approx(records[1]["speedup"])


def test_bench_packs_refuses_bad_sizes_in_one_line():
    p = _stllr("bench", "packs", "--k", "0")
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "--k" in p.stderr
