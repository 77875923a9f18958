"""``python -m bench.memory``: S-TLLR's measured learning memory is below BPTT's at every
architecture of a preset (exact byte counts, so the figures are asserted, not timed)."""

from __future__ import annotations

import pytest

from bench.memory import architectures, main, measure
from spaces import load_study


@pytest.mark.parametrize("name", ["quickstart", "nmnist", "scaling_synthetic"])
def test_every_architecture_of_a_preset_keeps_less_than_bptt(name):
    spec = load_study(name, check_data=False)
    rows = [measure(spec, p) for p in architectures(spec)]
    assert len(rows) == {"quickstart": 4, "nmnist": 4, "scaling_synthetic": 9}[name]
    for r in rows:
        assert r["mode"] == "chunked" and r["stllr"] < r["bptt"], r
    worst = max(r["ratio"] for r in rows)
    assert worst < {"quickstart": 0.13, "nmnist": 0.6, "scaling_synthetic": 0.16}[name], worst


def test_the_bench_prints_every_row_and_the_verdict(capsys):
    assert main(["quickstart"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len([ln for ln in out if ln.startswith("quickstart")]) == 4
    assert out[-1] == "target S-TLLR / BPTT measured learning memory < 1 at every architecture: PASS"
    # the quickstart's smallest network: 1064 B against 8532 B a sample (0.125)
    assert any(ln.split()[1:4] == ["64", "1", "16"] and ln.split()[-3:] == ["1064", "8532", "0.125"] for ln in out)
