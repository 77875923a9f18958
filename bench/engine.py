"""``stllr bench engine``: step time, learning memory and FLOP efficiency of both rules.

Cases (DESIGN §5, issue #2 item 9):

* SHD net (700 → 450 rec → 20, batch 128, T = 100): S-TLLR with learn_steps 10 and 90
  (window and streaming modes), with learn_steps 10 in the default mode (chunked, the
  automatic chunk: 5 steps) and learn_steps 90 in chunked mode (the automatic
  chunk, the default mode, and chunks of 3 and 15 steps), the engine's BPTT, the plainly unrolled autograd BPTT
  (:func:`stllr_engine.reference.reference_bptt_loss`) and S-TLLR through the naive
  outer-product reference (:func:`stllr_engine.reference.reference_stllr_grads`, one
  timed repetition);
* memory scan: S-TLLR (streaming) and BPTT at T = 25 and T = 400;
* a small VGG (width 16, 3 blocks) on 2×32×32 frames, T = 20;
* with ``--official DIR`` (a clone of the authors' repository): one S-TLLR step of the
  SHD net (``shd_rsnn_official``, learn_steps 90) in their code and in the engine, same
  weights and inputs, with the ratio of step times (target ≥ 50x) and the largest
  relative difference of the two gradients (``grad_rel_diff_vs_official``).

Chunked mode's two targets are ratios in the same run: its measured learning memory
over BPTT's (<= 0.25) and its step time over window mode's (<= 1.2), both learn_steps 90.
``chunk_steps`` is the chunk a row ran with (window mode: T; streaming: 1).

``--quick`` uses batch 32 and fewer repetitions (the ratios are still measured within
one run, on one configuration). Figures: ``step_time_s`` is the median of interleaved
repetitions; ``learning_memory_bytes_measured_per_batch`` is measured exactly for the whole batch
(:class:`stllr_engine.costs.CostProbe`), ``peak_step_bytes_measured_per_batch`` is every
allocation alive at the step's peak (:class:`stllr_engine.costs.AllocationTracker`;
window mode's forward buffers show here); ``*_macs_formula_per_sample`` are the formulas;
``achieved_gflops`` = 2 · batch · (forward + learning MACs) / step time (dense MAC
accounting); ``gemm_peak_gflops`` is a 4096² fp32 GEMM timed in the same run.

The engine rows run the fused time step (``--fused``, default ``auto``; :mod:`stllr_engine.fused`);
``stllr10_window_eager`` and ``bptt_eager`` run the same steps eager in the same rounds, and
``fused_compile_s`` is what this process spent building (or loading) the kernel. Issue #16's
targets: S-TLLR(10)/BPTT ≤ 0.55 and BPTT/unrolled ≤ 0.8 on the SHD net, each the median over
the rounds of the two steps' ratio within a round (the range over rounds is printed). S-TLLR(10) is
measured in the default mode (chunked), which every sweep runs, and in window mode, both
reported: window mode holds the whole sequence's currents and spikes ([T, B, n], 23 MB each
here) and reads them back from memory, where a chunk's stay in cache, so it is the slower of
the two on a CPU.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable

import torch

from bench.common import add_output_arguments, gemm_peak_gflops, paired_ratio, report, target, time_round_robin
from stllr_engine import fused
from stllr_engine.allocator import keep_freed_memory
from stllr_engine.bptt import bptt_step
from stllr_engine.costs import AllocationTracker, CostProbe, formula_costs
from stllr_engine.network import Network, NetworkSpec, build_network, preset
from stllr_engine.reference import reference_bptt_loss, reference_stllr_grads
from stllr_engine.errors import StllrError
from stllr_engine.stllr import STLLR_PRESETS, STLLRConfig, stllr_step
from stllr_engine.train import resolve_device

COLUMNS = ["model", "rule", "impl", "mode", "chunk_steps", "fused", "T", "learn_steps", "batch", "step_time_s",
           "learning_memory_bytes_measured_per_batch", "peak_step_bytes_measured_per_batch",
           "learning_macs_formula_per_sample", "achieved_gflops", "efficiency", "grad_rel_diff_vs_official"]


def _inputs(spec: NetworkSpec, T: int, batch: int, device: torch.device, density: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(T, batch, *spec.input_shape, generator=g) < density).float().to(device)
    labels = torch.randint(0, spec.num_classes, (batch,), generator=g).to(device)
    return x, labels


def _measured_memory(net: Network, fn: Callable[..., Any], x: torch.Tensor) -> tuple[int, int]:
    """(learning memory, peak step bytes) of one step, both for the whole batch."""
    probe = CostProbe(exclude=[*net.parameters(), x], count_flops=False)
    net.zero_grad(set_to_none=True)
    with AllocationTracker() as tracker:
        fn(probe)
    net.zero_grad(set_to_none=True)
    return probe.peak_bytes, tracker.peak_bytes


class _Case:
    def __init__(self, model: str, net: Network, x: torch.Tensor, labels: torch.Tensor, rule: str, impl: str,
                 mode: str, cfg: STLLRConfig | None, fused_setting: str = "auto"):
        self.model, self.net, self.x, self.labels = model, net, x, labels
        self.rule, self.impl, self.mode, self.cfg = rule, impl, mode, cfg
        self.fused = fused_setting if impl == "engine" else "off"

    @property
    def T(self) -> int:
        return self.x.shape[0]

    def run(self, probe: Any = None) -> None:
        with fused.use(self.fused):
            self._run(probe)

    def _run(self, probe: Any = None) -> None:
        net, x, y = self.net, self.x, self.labels
        net.zero_grad(set_to_none=True)
        if self.rule == "stllr" and self.impl == "engine":
            stllr_step(net, x, y, self.cfg, probe=probe)  # type: ignore[arg-type]
        elif self.rule == "stllr":
            reference_stllr_grads(net, x, y, self.cfg)  # type: ignore[arg-type]
        elif self.impl == "engine":
            bptt_step(net, x, y, probe=probe)
        else:
            reference_bptt_loss(net, x, y).backward()

    def record(self, step_time: float | None, peak: float) -> dict[str, Any]:
        f = formula_costs(self.net, self.rule, self.T, self.cfg)
        batch = self.x.shape[1]
        mem, peak_step = _measured_memory(self.net, self.run, self.x) if self.impl == "engine" else (None, None)
        rec: dict[str, Any] = {
            "model": self.model, "rule": self.rule, "impl": self.impl, "mode": self.mode,
            "chunk_steps": self.cfg.chunk_size(self.T) if self.cfg is not None and self.impl == "engine" else None,
            "T": self.T,
            "fused": self.fused != "off" and fused.active(self.x),
            "learn_steps": f["learn_steps"], "batch": batch, "bytes_per_value": f["bytes_per_value"],
            "step_time_s": step_time,
            "learning_memory_bytes_measured_per_batch": mem,
            "learning_memory_bytes_measured_per_sample": mem / batch if mem is not None else None,
            "learning_memory_bytes_formula_per_sample": f["learning_memory_bytes_formula_per_sample"],
            "peak_step_bytes_measured_per_batch": peak_step,
            "learning_macs_formula_per_sample": f["learning_macs_formula_per_sample"],
            "forward_macs_formula_per_sample": f["forward_macs_formula_per_sample"],
            "gemm_peak_gflops": peak,
        }
        if step_time:
            macs = f["forward_macs_formula_per_sample"] + f["learning_macs_formula_per_sample"]
            gflops = 2 * batch * macs / step_time / 1e9
            rec["achieved_gflops"] = gflops
            rec["efficiency"] = gflops / peak
        return rec


def run(quick: bool = False, device: str = "cpu", official: str | None = None,
        fused_setting: str = "auto") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    dev = resolve_device(device)
    keep_freed_memory()  # as every run does (RuntimeConfig.apply)
    if official is not None:
        _check_official_dir(official)  # before the long run, not after it
    with fused.use(fused_setting):  # builds the kernel now (timed), not inside the first timed step
        pass
    compile_s = fused.compile_seconds()
    peak = gemm_peak_gflops(dev)
    batch = 32 if quick else 128
    reps = 3 if quick else 7

    shd_spec = preset("shd_rsnn")
    shd = build_network(shd_spec).to(dev)
    x, y = _inputs(shd_spec, 100, batch, dev, density=0.05)
    cases: dict[str, _Case] = {}
    for ls in (10, 90):
        for mode in ("window", "streaming"):
            cases[f"stllr{ls}_{mode}"] = _Case("shd_rsnn", shd, x, y, "stllr", "engine", mode,
                                               STLLRConfig(learn_steps=ls, mode=mode), fused_setting)
    # S-TLLR(10) in the default mode (chunked, the automatic chunk): what every sweep runs
    cases["stllr10_chunked"] = _Case("shd_rsnn", shd, x, y, "stllr", "engine", "chunked",
                                     STLLRConfig(learn_steps=10), fused_setting)
    for c in (None, 3, 15):  # the automatic chunk (the default mode), and two others
        cases["stllr90_chunked" + (f"_c{c}" if c else "")] = _Case(
            "shd_rsnn", shd, x, y, "stllr", "engine", "chunked", STLLRConfig(learn_steps=90, chunk_steps=c),
            fused_setting)
    cases["bptt"] = _Case("shd_rsnn", shd, x, y, "bptt", "engine", "fused_scan", None, fused_setting)
    # the same steps eager (fused off), timed in the same rounds: what the fused step gains
    cases["stllr10_window_eager"] = _Case("shd_rsnn", shd, x, y, "stllr", "engine", "window",
                                          STLLRConfig(learn_steps=10, mode="window"), "off")
    cases["bptt_eager"] = _Case("shd_rsnn", shd, x, y, "bptt", "engine", "fused_scan", None, "off")
    cases["bptt_unrolled"] = _Case("shd_rsnn", shd, x, y, "bptt", "reference", "unrolled", None)
    rounds: dict[str, list[float]] = {}
    times = time_round_robin({k: c.run for k, c in cases.items()}, reps, dev, rounds=rounds)
    records = {k: cases[k].record(times[k], peak) for k in cases}

    # Memory scan: T = 25 and 400 (T = 100 above).
    for T in (25, 400):
        xt, yt = _inputs(shd_spec, T, batch, dev, density=0.05)
        for key, case in (
            (f"stllr_streaming_T{T}", _Case("shd_rsnn", shd, xt, yt, "stllr", "engine", "streaming",
                                             STLLRConfig(learn_steps=10, mode="streaming"))),
            (f"bptt_T{T}", _Case("shd_rsnn", shd, xt, yt, "bptt", "engine", "fused_scan", None)),
        ):
            t = time_round_robin({"c": case.run}, 1, dev, warmup=0)["c"]
            records[key] = case.record(t, peak)

    # Small VGG on 2×32×32 frames, T = 20.
    vgg_spec = preset("vgg9", width=16, depth=3)
    vgg = build_network(vgg_spec).to(dev)
    xv, yv = _inputs(vgg_spec, 20, 8 if quick else 16, dev, density=0.1)
    vcases = {
        "vgg_stllr_window": _Case("vgg_w16_d3", vgg, xv, yv, "stllr", "engine", "window",
                                  STLLRConfig(learn_steps=5, mode="window"), fused_setting),
        "vgg_stllr_streaming": _Case("vgg_w16_d3", vgg, xv, yv, "stllr", "engine", "streaming",
                                     STLLRConfig(learn_steps=5, mode="streaming"), fused_setting),
        "vgg_bptt": _Case("vgg_w16_d3", vgg, xv, yv, "bptt", "engine", "fused_scan", None, fused_setting),
    }
    vt = time_round_robin({k: c.run for k, c in vcases.items()}, 2 if quick else 3, dev)
    records.update({k: c.record(vt[k], peak) for k, c in vcases.items()})

    # Last, as it allocates GBs of eligibility tensors: the naive outer-product reference.
    ref = _Case("shd_rsnn", shd, x, y, "stllr", "reference", "outer_product", STLLRConfig(learn_steps=90))
    records["stllr90_reference"] = ref.record(time_round_robin({"r": ref.run}, 1, dev, warmup=0)["r"], peak)

    r = records
    targets = [
        target("S-TLLR(learn_steps=10, window) / BPTT step time, SHD net",
               r["stllr10_window"]["step_time_s"] / r["bptt"]["step_time_s"], "<=", 0.5),
        target("BPTT engine / unrolled reference step time, SHD net",
               r["bptt"]["step_time_s"] / r["bptt_unrolled"]["step_time_s"], "<=", 0.9),
        target("outer-product reference / S-TLLR(learn_steps=90, window) step time",
               r["stllr90_reference"]["step_time_s"] / r["stllr90_window"]["step_time_s"], ">=", 50.0),
        target("BPTT / S-TLLR(streaming) measured learning memory, SHD net T=100",
               r["bptt"]["learning_memory_bytes_measured_per_batch"]
               / r["stllr10_streaming"]["learning_memory_bytes_measured_per_batch"], ">=", 30.0),
        target("S-TLLR(streaming) memory T=400 / T=25",
               r["stllr_streaming_T400"]["learning_memory_bytes_measured_per_batch"]
               / r["stllr_streaming_T25"]["learning_memory_bytes_measured_per_batch"],
               "<=", 1.05),
        target("S-TLLR(streaming) peak step bytes (every allocation) T=400 / T=25",
               r["stllr_streaming_T400"]["peak_step_bytes_measured_per_batch"]
               / r["stllr_streaming_T25"]["peak_step_bytes_measured_per_batch"], "<=", 1.05),
        target(f"S-TLLR(learn_steps=90, chunked c={r['stllr90_chunked']['chunk_steps']}, the default) / BPTT "
               "measured learning memory, SHD net T=100",
               r["stllr90_chunked"]["learning_memory_bytes_measured_per_batch"]
               / r["bptt"]["learning_memory_bytes_measured_per_batch"], "<=", 0.25),
        target(f"S-TLLR(learn_steps=90, chunked c={r['stllr90_chunked']['chunk_steps']}, the default) / "
               "S-TLLR(learn_steps=90, window) step time, SHD net",
               r["stllr90_chunked"]["step_time_s"] / r["stllr90_window"]["step_time_s"], "<=", 1.2),
        target("S-TLLR(learn_steps=10, window) efficiency vs GEMM peak",
               r["stllr10_window"]["efficiency"], ">=", 0.65),
        target("BPTT efficiency vs GEMM peak", r["bptt"]["efficiency"], ">=", 0.65),
        # issue #16: the fused step's targets, and what it gains over the eager step (same rounds)
        # issue #16's ratios: the median over rounds of the two steps timed side by side
        target(f"#16: S-TLLR(learn_steps=10, chunked c={r['stllr10_chunked']['chunk_steps']}, the default mode) / "
               "BPTT step time, SHD net", *_paired(rounds, "stllr10_chunked", "bptt", "<=", 0.55)),
        target("#16, window mode: S-TLLR(learn_steps=10, window) / BPTT step time, SHD net",
               *_paired(rounds, "stllr10_window", "bptt", "<=", 0.55)),
        target("#16: BPTT engine / unrolled reference step time, SHD net",
               *_paired(rounds, "bptt", "bptt_unrolled", "<=", 0.8)),
        target(f"fused ({fused_setting}) / eager step time, S-TLLR(learn_steps=10, window), SHD net",
               r["stllr10_window"]["step_time_s"] / r["stllr10_window_eager"]["step_time_s"], "<=", 1.0),
        target(f"fused ({fused_setting}) / eager step time, BPTT, SHD net",
               r["bptt"]["step_time_s"] / r["bptt_eager"]["step_time_s"], "<=", 1.0),
    ]
    for rec in records.values():
        rec["fused_compile_s"] = compile_s  # this process's build or load of the kernel, once
    out = list(records.values())
    if official is not None:
        off_records, off_target = official_comparison(official, batch, dev)
        out += off_records
        targets.append(off_target)
    return out, targets


def _paired(rounds: dict[str, list[float]], num: str, den: str, op: str,
            threshold: float) -> tuple[float, str, float, list[float]]:
    value, per_round = paired_ratio(rounds, num, den)
    return value, op, threshold, per_round


def _check_official_dir(official_dir: str) -> None:
    if not os.path.isfile(os.path.join(official_dir, "models", "STDPAudioSNN.py")):
        raise StllrError(f"bench engine: --official {official_dir}: no models/STDPAudioSNN.py there: give the root "
                         "of a clone of github.com/mapolinario94/S-TLLR")


def official_comparison(official_dir: str, batch: int, device: torch.device, T: int = 100,
                        learn_steps: int = 90) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One S-TLLR step of the SHD net in the authors' code and in the engine, same run.

    The engine runs the ``shd_rsnn_official`` preset (window mode) with the authors'
    initial weights copied in, so the two compute the same update; the largest relative
    difference of their parameter gradients is reported alongside the step times.

    Returns:
        ``(records, target)``: one record per implementation and the ≥ 50x target.
    """
    import sys

    _check_official_dir(official_dir)
    sys.path.insert(0, os.path.abspath(official_dir))
    try:
        from models.STDPAudioSNN import AudioNet  # the authors' module (imports only torch and numpy)
    finally:
        sys.path.pop(0)
    cfg = STLLRConfig(**{**STLLR_PRESETS["shd_rsnn_official"].to_dict(), "learn_steps": learn_steps,
                         "mode": "window"})
    theirs = AudioNet(n_inputs=700, labels=20, activation=None, feedback_mode="BP",
                      factors=[cfg.lambda_post, cfg.lambda_pre, cfg.alpha_post, cfg.alpha_pre]).to(device)
    ours = build_network(preset("shd_rsnn_official")).to(device)
    hidden, readout = theirs.linear1, theirs.last_layer
    pairs = {"layers.0.weight": hidden.weight, "layers.0.bias": hidden.bias, "layers.0.rec_weight": hidden.weight_rec,
             "layers.0.gain": hidden.gain, "layers.0.rec_gain": hidden.gain_rec,
             "readout.weight": readout.weight, "readout.bias": readout.bias}
    mine = dict(ours.named_parameters())
    with torch.no_grad():
        for name, p in pairs.items():
            mine[name].copy_(p.reshape(mine[name].shape))
    x, y = _inputs(ours.spec, T, batch, device, density=0.05)

    def official_step() -> None:
        theirs.zero_grad(set_to_none=True)
        theirs.reset_states()
        for t in range(T):
            out = theirs(x[t], y)
            if T - t <= learn_steps:  # their --delay-ls window
                torch.nn.functional.cross_entropy(out, y).backward()

    def engine_step() -> None:
        ours.zero_grad(set_to_none=True)
        stllr_step(ours, x, y, cfg)

    times = time_round_robin({"official": official_step, "engine": engine_step}, {"official": 1, "engine": 3},
                             device, warmup=0)
    diff = max(float((mine[n].grad - p.grad.reshape(mine[n].shape)).norm() / p.grad.norm().clamp_min(1e-30))
               for n, p in pairs.items())
    base = {"model": "shd_rsnn_official", "rule": "stllr", "mode": "window", "T": T, "learn_steps": learn_steps,
            "batch": batch, "grad_rel_diff_vs_official": diff}
    records = [{**base, "impl": "official", "step_time_s": times["official"]},
               {**base, "impl": "engine", "step_time_s": times["engine"]}]
    tgt = target("authors' code / engine S-TLLR step time, SHD net (learn_steps=90, same weights)",
                 times["official"] / times["engine"], ">=", 50.0)
    return records, tgt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stllr bench engine", description=__doc__.split("\n")[0])
    add_arguments(ap)
    return execute(ap.parse_args(argv))


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--quick", action="store_true", help="batch 32, fewer repetitions (~1 min)")
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--fused", choices=fused.MODES, default="auto",
                    help="the fused time step for the engine rows (default auto); *_eager rows always run without")
    ap.add_argument("--official", metavar="DIR", default=None,
                    help="root of a clone of the authors' code (github.com/mapolinario94/S-TLLR): also time one "
                         "S-TLLR step of the SHD net in it, same weights, and print the ratio")


def execute(args: argparse.Namespace) -> int:
    note = ("--quick runs batch 32 and fewer repetitions; the targets are set for the full run "
            "(batch 128), where the reference ratio is larger") if args.quick else None
    return report(*run(quick=args.quick, device=args.device, official=args.official, fused_setting=args.fused),
                  args, COLUMNS, note)


if __name__ == "__main__":
    raise SystemExit(main())
