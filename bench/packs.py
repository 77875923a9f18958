"""``stllr bench packs``: configurations per hour, K members packed against the same K run separately.

For each network and K in 1, 2, 4, 8, 16, 32 (issue #16 item 6), K members with their own
seeds, factors, windows and learning rates train on their own batches:

* ``separate``: K training steps one after the other, each member's own network with
  :func:`stllr_engine.stllr.stllr_step` (or :func:`stllr_engine.bptt.bptt_step`) and its
  own ``torch.optim.Adam`` — what K unpacked runs do;
* ``packed``: one :func:`stllr_engine.pack.pack_stllr_step` (or ``pack_bptt_step``) and one
  :class:`stllr_engine.pack.PackAdam` step for all K.

Both are timed in one run, interleaved (:func:`bench.common.time_round_robin`), on the same
members and batches; ``speedup`` = separate time / packed time at that K.
``configs_per_hour`` = 3600 · K / (round time · ``run_steps``), with ``run_steps`` the
training steps of one nominal run (``--run-steps``, default 360: 20 epochs of the digits
task's 18 batches of 64). Evaluation, data loading and Ray are not in these figures.

``--sweep PRESET --trials N``: instead, the end-to-end wall time of a sweep of that preset
(Ray, data, evaluation, the equal tuning and all included; no report) at a budget of N
configurations, with ``resources.pack`` automatic and with ``1``, back to back in one run;
target ≥ 3 (issue #16 item 6, e.g. ``--sweep balance_digits``).

Networks: ``digits_mlp`` (64 → 128 → 10, T 16, batch 64), ``timing_rsnn`` (32 → 128
recurrent → 8, T 40, batch 64), ``shd_rsnn`` (700 → 450 recurrent → 20, T 100, batch 128,
S-TLLR learn_steps 90; K up to 8 unless ``--full``), ``digits_vgg`` (1 × 8 × 8 → two 3 × 3
conv layers of 8 and 16 channels with weight standardisation and gains → 10, T 16, batch 64). Target (a ratio in one run): speedup
≥ 5 at K = 16 on ``digits_mlp``, S-TLLR.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

import torch

from bench.common import add_output_arguments, report, target, time_round_robin
from stllr_engine.allocator import keep_freed_memory
from stllr_engine.bptt import bptt_step
from stllr_engine.network import NetworkSpec, build_network, preset
from stllr_engine.pack import Pack, PackAdam, pack_bptt_step, pack_stllr_step
from stllr_engine.stllr import STLLRConfig, stllr_step
from stllr_engine.train import TrainConfig, resolve_device

COLUMNS = ["net", "rule", "K", "T", "batch", "separate_s", "packed_s", "speedup", "configs_per_hour_separate",
           "configs_per_hour_packed"]

NETS: dict[str, tuple[NetworkSpec, int, int, int]] = {
    # name: (spec, T, batch, S-TLLR learn_steps of member 0)
    "digits_mlp": (NetworkSpec(kind="mlp", input_shape=(64,), num_classes=10, width=128), 16, 64, 8),
    "timing_rsnn": (NetworkSpec(kind="rsnn", input_shape=(32,), num_classes=8, width=128), 40, 64, 20),
    "shd_rsnn": (preset("shd_rsnn"), 100, 128, 90),
    # a small VGG with weight standardisation on the digits as images (1 x 8 x 8, `image: true`)
    "digits_vgg": (NetworkSpec(kind="vgg", input_shape=(1, 8, 8), num_classes=10, width=8, depth=1,
                               weight_standardization=True, ws_gain=True), 16, 64, 8),
}


def _members(spec: NetworkSpec, rule: str, K: int, T: int, learn_steps: int) -> tuple[list[Any], list[TrainConfig]]:
    nets, cfgs = [], []
    for k in range(K):
        n = max(1, learn_steps - (k % 4) * max(1, learn_steps // 8))  # windows differ per member
        stllr = STLLRConfig(learn_steps=n, lambda_post=0.2 + 0.1 * (k % 5), alpha_post=(-1.0, 1.0, 0.0)[k % 3])
        cfgs.append(TrainConfig(rule=rule, lr=1e-3 * (1 + k % 7), stllr=stllr, loss="per_step"))
        nets.append(build_network(spec.replace(seed=k)))
    return nets, cfgs


def _case(name: str, rule: str, K: int, device: torch.device, reps: int, run_steps: int) -> dict[str, Any]:
    spec, T, batch, learn_steps = NETS[name]
    nets, cfgs = _members(spec, rule, K, T, learn_steps)
    for net in nets:
        net.to(device)
    g = torch.Generator().manual_seed(K)
    x = (torch.rand(K, T, batch, *spec.input_shape, generator=g) < 0.1).float().to(device)
    y = torch.randint(0, spec.num_classes, (K, batch), generator=g).to(device)
    opts = [torch.optim.Adam(n.parameters(), lr=c.lr) for n, c in zip(nets, cfgs)]
    pack = Pack.from_networks(nets, cfgs)
    pack_opt = PackAdam(pack.parameters(), [c.lr for c in cfgs], [0.0] * K)

    def separate() -> None:
        for k in range(K):
            opts[k].zero_grad(set_to_none=True)
            if rule == "stllr":
                stllr_step(nets[k], x[k], y[k], cfgs[k].stllr)
            else:
                bptt_step(nets[k], x[k], y[k], loss="per_step", learn_steps=cfgs[k].stllr.learn_steps)
            opts[k].step()

    def packed() -> None:
        pack_opt.zero_grad()
        if rule == "stllr":
            pack_stllr_step(pack, x, y)
        else:
            pack_bptt_step(pack, x, y, loss="per_step")
        pack_opt.step()

    fns: dict[str, Callable[[], Any]] = {"separate": separate, "packed": packed}
    times = time_round_robin(fns, reps, device)
    return {"net": name, "rule": rule, "K": K, "T": T, "batch": batch, "separate_s": times["separate"],
            "packed_s": times["packed"], "speedup": times["separate"] / times["packed"],
            "configs_per_hour_separate": 3600 * K / (times["separate"] * run_steps),
            "configs_per_hour_packed": 3600 * K / (times["packed"] * run_steps)}


def run(ks: list[int], nets: list[str], rules: list[str], device: str = "cpu", reps: int = 3, full: bool = False,
        run_steps: int = 360) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    dev = resolve_device(device)
    keep_freed_memory()  # as every run does (RuntimeConfig.apply)
    records = []
    for name in nets:
        for rule in rules:
            if name == "shd_rsnn" and rule == "bptt" and not full:
                continue
            for K in ks:
                if name == "shd_rsnn" and K > 8 and not full and dev.type == "cpu":
                    continue
                records.append(_case(name, rule, K, dev, reps if name != "shd_rsnn" else 1, run_steps))
    targets = []
    hit = [r for r in records if r["net"] == "digits_mlp" and r["rule"] == "stllr" and r["K"] == 16]
    if hit:
        targets.append(target("packed / separate configurations per hour, digits-size MLP, K = 16, S-TLLR",
                              hit[0]["speedup"], ">=", 5.0))
    return records, targets


SWEEP_COLUMNS = ["preset", "trials", "pack", "wall_s", "runs_complete", "mean_test_accuracy", "speedup"]


def run_sweeps(preset: str, trials: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One sweep of ``preset`` with packs and one without, timed end to end."""
    import os
    import tempfile
    import time

    import pandas as pd

    from study.runner import sweep

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "spaces", f"{preset}.yaml")
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="stllr-bench-packs-") as tmp:
        for pack in ("auto", 1):
            out = os.path.join(tmp, f"pack-{pack}")
            t0 = time.perf_counter()
            sweep(path, out=out, trials=trials, overrides={"resources.pack": pack}, quiet=True, report=False)
            wall = time.perf_counter() - t0
            df = pd.read_parquet(os.path.join(out, "results.parquet"))
            done = df[df.status == "complete"]
            records.append({"preset": preset, "trials": trials, "pack": pack, "wall_s": wall,
                            "runs_complete": len(done), "mean_test_accuracy": float(done.test_accuracy.mean())})
    ratio = float(records[1]["wall_s"]) / float(records[0]["wall_s"])
    records[0]["speedup"] = ratio
    tgt = target(f"unpacked / packed end-to-end sweep wall time, {preset} at {trials} configurations", ratio, ">=", 3.0)
    return records, [tgt]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--sweep", metavar="PRESET", default=None,
                    help="time a sweep of this preset end to end, packed and unpacked (e.g. balance_digits)")
    ap.add_argument("--trials", type=int, default=12, help="configurations of the --sweep budget")
    ap.add_argument("--k", default="1,2,4,8,16,32", help="pack sizes, comma-separated")
    ap.add_argument("--nets", default="digits_mlp,timing_rsnn,digits_vgg,shd_rsnn", help=f"of {', '.join(NETS)}")
    ap.add_argument("--rules", default="stllr,bptt", help="stllr, bptt or both")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per case (median)")
    ap.add_argument("--run-steps", type=int, default=360, help="training steps of one nominal run")
    ap.add_argument("--full", action="store_true", help="the SHD net at every K and for BPTT too (slow on a CPU)")
    add_output_arguments(ap)


def execute(args: argparse.Namespace) -> int:
    from stllr_engine.errors import StllrError

    if args.sweep is not None:
        if args.trials < 1:
            raise StllrError("--trials: give at least 1 configuration")
        return report(*run_sweeps(args.sweep, args.trials), args, SWEEP_COLUMNS)
    try:
        ks = [int(k) for k in args.k.split(",")]
    except ValueError:
        raise StllrError(f"--k {args.k!r}: give pack sizes as integers, e.g. 1,2,4,8") from None
    nets = args.nets.split(",")
    bad = [n for n in nets if n not in NETS]
    if bad or any(k < 1 for k in ks):
        raise StllrError(f"--nets: use {', '.join(NETS)}; --k: sizes >= 1")
    rules = args.rules.split(",")
    if any(r not in ("stllr", "bptt") for r in rules):
        raise StllrError("--rules: stllr, bptt or stllr,bptt")
    note = (f"configs_per_hour: training steps only, a nominal run of {args.run_steps} steps; the SHD net "
            "ran S-TLLR at K <= 8 (--full for all)" if not args.full else None)
    return report(*run(ks, nets, rules, args.device, args.reps, args.full, args.run_steps), args, COLUMNS, note)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stllr bench packs", description=__doc__.split("\n")[0])
    add_arguments(ap)
    return execute(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
