"""A fast, looser floor for ``stllr bench learning`` (the benchmark itself targets >= 90%)."""

from __future__ import annotations

import pytest

from bench.learning import train_task


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["stllr", "bptt"])
def test_digits_learned_by_both_rules(rule):
    r = train_task("digits", rule, epochs=4)
    assert r["test_accuracy"] >= 0.80, r
    assert r["learning_macs_formula_per_sample"] > 0 and r["learning_memory_bytes_measured_per_batch"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["stllr", "bptt"])
def test_synthetic_temporal_well_above_chance(rule):
    r = train_task("synthetic_temporal", rule, epochs=8)
    assert r["best_test_accuracy"] >= 2 * r["chance"], r
