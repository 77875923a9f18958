"""``python -m bench.memory``: S-TLLR's measured learning memory against BPTT's at every
architecture a preset can train (DESIGN §8, "memory as the rule needs it").

For each preset (study file) and each architecture its search space holds (width × depth ×
T, every value; per-layer and factor settings do not change memory), one instrumented
training step of each rule on random spikes of the dataset's shape (batch 2; no data read):
S-TLLR in the preset's mode (the default, chunked, unless the file fixes another) at the
largest ``learn_steps`` the space allows, BPTT on the same network. Figures are bytes saved
for learning per sample (:func:`stllr_engine.costs.measure_costs`, exact: not RSS). Target:
S-TLLR below BPTT at every architecture (ratio S-TLLR / BPTT < 1); each miss is printed.
S-TLLR learns its own objective here (``per_step``); on CE(Σ_t o[t]) (``baseline.stllr_loss``)
it holds its window until the sequence ends, by design, and is not held to this target.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from typing import Any

import torch

from spaces import PRESET_NAMES, load_study
from spaces._study import input_info
from stllr_engine.costs import measure_costs
from stllr_engine.network import NetworkSpec, build_network
from stllr_engine.stllr import STLLRConfig
from stllr_engine.train import TrainConfig, rule_step


def _values(p: Any) -> list[Any]:
    v = p.values()
    if v is not None:
        return list(v)
    return sorted({p.smallest(), p.largest()})


def architectures(spec: Any) -> list[dict[str, Any]]:
    axes = {n: _values(spec.search[n]) for n in ("width", "depth", "T") if n in spec.search}
    out = []
    for combo in itertools.product(*axes.values()):
        params = dict(zip(axes, combo))
        if "learn_steps" in spec.search:
            params["learn_steps"] = spec.search["learn_steps"].largest()
        out.append(params)
    return out


def measure(spec: Any, params: dict[str, Any], batch: int = 2) -> dict[str, Any]:
    s_st = spec._sections(params, "stllr")
    shape, classes = input_info(spec.dataset, s_st["dataset"], spec.data_dir, spec.cache_dir)
    net_spec = NetworkSpec.from_dict({**s_st["network"], "input_shape": list(shape), "num_classes": classes})
    T = int(s_st["dataset"]["T"])
    st = STLLRConfig.from_dict(s_st["stllr"])
    st = STLLRConfig.from_dict({**st.to_dict(), "learn_steps": min(st.learn_steps, T)})
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(T, batch, *shape, generator=g) < 0.1).float()
    y = torch.randint(0, classes, (batch,), generator=g)
    arch = spec.arch(params)
    row: dict[str, Any] = {"preset": spec.name, "width": arch["width"], "depth": arch["depth"], "T": T,
                           "learn_steps": st.learn_steps, "mode": st.mode, "c": st.chunk_size(T)}
    for rule in ("stllr", "bptt"):
        net = build_network(net_spec)
        cfg = TrainConfig(rule=rule, stllr=st)
        costs = measure_costs(net, rule_step(cfg), x, y, rule, st if rule == "stllr" else None)
        row[rule] = costs["learning_memory_bytes_measured_per_sample"]
    row["ratio"] = row["stllr"] / row["bptt"]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    ap.add_argument("presets", nargs="*", default=list(PRESET_NAMES))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    misses = 0
    print(f"{'preset':28} {'width':>6} {'depth':>5} {'T':>4} {'ls':>4} {'mode':>9} {'c':>3} "
          f"{'S-TLLR B/sample':>16} {'BPTT B/sample':>14} {'ratio':>7}")
    for name in args.presets:
        spec = load_study(name, check_data=False)
        for params in architectures(spec):
            r = measure(spec, params)
            miss = r["ratio"] >= 1.0
            misses += miss
            print(f"{r['preset']:28} {str(r['width']):>6} {str(r['depth']):>5} {r['T']:>4} {r['learn_steps']:>4} "
                  f"{r['mode']:>9} {r['c']:>3} {r['stllr']:>16.0f} {r['bptt']:>14.0f} {r['ratio']:>7.3f}"
                  + ("  MISS" if miss else ""), flush=True)
    print(f"target S-TLLR / BPTT measured learning memory < 1 at every architecture: "
          f"{'PASS' if not misses else f'MISS at {misses} architecture(s)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
