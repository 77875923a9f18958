"""Measured learning memory and FLOPs (item 8d and 7): exact, so asserted exactly."""

from __future__ import annotations

import functools

import pytest
import torch

from stllr_engine.bptt import bptt_step
from stllr_engine.costs import CostProbe, measure_costs
from stllr_engine.network import NetworkSpec, build_network
from stllr_engine.stllr import STLLRConfig, stllr_step

SPEC = NetworkSpec(kind="rsnn", input_shape=(50,), num_classes=5, width=40, depth=1, gamma=0.9, theta=0.5,
                   surrogate="inverse_square", gamma_o=0.95)
B = 8


def _data(T: int):
    g = torch.Generator().manual_seed(T)
    return (torch.rand(T, B, 50, generator=g) < 0.2).float(), torch.randint(0, 5, (B,), generator=g)


def _stllr(mode: str, ls: int = 5):
    cfg = STLLRConfig(learn_steps=ls, mode=mode)
    return (lambda n, x, y, probe=None: stllr_step(n, x, y, cfg, probe=probe)[0]), cfg


def _memory(step, T: int, cfg: STLLRConfig | None = None) -> int:
    net = build_network(SPEC)
    x, y = _data(T)
    rule = "bptt" if cfg is None else "stllr"
    return measure_costs(net, step, x, y, rule, cfg)["learning_memory_bytes_measured_per_batch"]


def test_stllr_streaming_memory_is_independent_of_T():
    (_, m25), (_, m200) = _costs("streaming", 25), _costs("streaming", 200)
    # Exactly the carried state, by hand: u, y, tr_pre (input), tr_rec, tr_post, o, readout trace.
    assert m25 == m200 == 4 * B * (40 + 40 + 50 + 40 + 40 + 5 + 40)


@functools.lru_cache(maxsize=None)
def _costs(mode: str | None, T: int) -> tuple[int, int]:
    """(peak_step_bytes, learning_memory_bytes) of one step; mode None is BPTT."""
    return _peak_step(mode, T)


def _peak_step(mode: str | None, T: int) -> tuple[int, int]:
    step, cfg = _stllr(mode) if mode is not None else (bptt_step, None)
    x, y = _data(T)
    c = measure_costs(build_network(SPEC), step, x, y, "bptt" if cfg is None else "stllr", cfg)
    return c["peak_step_bytes_measured_per_batch"], c["learning_memory_bytes_measured_per_batch"]


def test_every_allocation_of_a_streaming_step_is_flat_in_T():
    """The independent tracker (every op's new storages) sees the same peak at T = 25 and 200."""
    (s25, _), (s200, _) = _costs("streaming", 25), _costs("streaming", 200)
    assert s25 == s200 == 43_872


def test_window_mode_forward_buffers_grow_with_T_and_are_visible():
    """Window mode hoists the forward over all T steps: at its peak (the hidden layer's
    scan) it holds that layer's currents and spikes, [B, 40] each, for every step. Its
    learning memory (what the step holds for learning) does not grow; its peak allocation
    does, by exactly that much."""
    (w25, l25), (w200, l200) = _costs("window", 25), _costs("window", 200)
    assert (w25, w200) == (130_588, 578_588)
    assert w200 - w25 == (200 - 25) * 4 * B * (40 + 40)
    assert l25 == l200


def test_bptt_peak_step_grows_with_T():
    # (the backward's four [B, n] scratch buffers are freed before the recurrent weight
    # gradient's GEMM, the step's peak, since the scan's backward became one function: -5,120)
    (b25, _), (b200, _) = _costs(None, 25), _costs(None, 200)
    assert (b25, b200) == (135_388, 1_031_388)


def test_the_fused_step_allocates_no_more_than_the_eager_step():
    from stllr_engine import fused
    from stllr_engine.costs import AllocationTracker

    if not fused.available():
        pytest.skip(f"the fused kernel does not build here: {fused._error}")
    for mode in ("window", "streaming", None):
        step, cfg = _stllr(mode) if mode is not None else (bptt_step, None)
        x, y = _data(25)
        peaks = {}
        for setting in ("off", "on"):
            net = build_network(SPEC)
            with AllocationTracker() as tracker, fused.use(setting):
                step(net, x, y)
            peaks[setting] = tracker.peak_bytes
        assert peaks["on"] <= peaks["off"], (mode, peaks)


def test_a_step_that_keeps_its_history_is_caught(monkeypatch):
    """Mutation: a streaming step that keeps every step's outputs, records and state alive
    (O(T) memory). What the step reports about itself stays flat; the tracker does not."""
    import stllr_engine.stllr as stllr

    kept = []
    real_run_chunk = stllr.run_chunk

    def hoarding_run_chunk(*args, **kwargs):
        out = real_run_chunk(*args, **kwargs)
        kept.append(out)
        return out

    monkeypatch.setattr(stllr, "run_chunk", hoarding_run_chunk)
    (p25, l25), (p200, l200) = _peak_step("streaming", 25), _peak_step("streaming", 200)
    assert l25 == l200  # the self-reported figure is fooled
    assert p200 > p25 + 175 * 4 * B * (40 + 40 + 5)  # at least u, spikes and o of every extra step


def test_bptt_memory_grows_in_proportion_to_T():
    (_, m25), (_, m200) = _costs(None, 25), _costs(None, 200)
    assert m200 / m25 == pytest.approx(8.0, rel=0.05)
    # v = u - θ and the spikes for every step; beyond them only the readout's T decay
    # weights, its time-weighted input sum [B, n], and the loss's [B, C] logits and labels.
    assert 0 < m200 - 2 * 200 * B * 40 * 4 <= 200 * 4 + B * 40 * 4 + 2 * B * 5 * 4 + B * 8 + 8


def test_window_mode_holds_its_records_until_learning():
    step_w, cfg_w = _stllr("window", ls=10)
    step_s, cfg_s = _stllr("streaming", ls=10)
    mw, ms = _memory(step_w, 50, cfg_w), _memory(step_s, 50, cfg_s)
    assert mw > ms
    # records per window step: tr_pre(50) psi, tr_post(t-1), y(t-1), tr_rec (4·40), readout tr(40), o(5)
    # (x is a view of the input batch, not counted); c is a [10] vector
    assert mw - ms == 4 * (10 * B * (50 + 4 * 40 + 40 + 5) + 10)


def test_measured_macs_of_the_learning_phase():
    net = build_network(SPEC)
    x, y = _data(30)
    step, cfg = _stllr("window", ls=6)
    c = measure_costs(net, step, x, y, "stllr", cfg)
    # per window step and sample: readout ΔW (40·5) and δ down (5·40); input layer: two
    # weight GEMMs (2·50·40); recurrent: two (2·40·40)
    assert c["learning_macs_measured_per_sample"] == 6 * (2 * 40 * 5 + 2 * 50 * 40 + 2 * 40 * 40)
    assert c["forward_macs_formula_per_sample"] == 30 * (50 * 40 + 40 * 40 + 40 * 5)
    # measured forward also holds the traces' prefix sums over the 24 steps before the
    # window (one GEMV each for the input trace and the readout's trace)
    assert c["forward_macs_measured_per_sample"] == c["forward_macs_formula_per_sample"] + 24 * (50 + 40)
    # the paper's 3 per hidden synapse (error path + two update terms), 2 for the readout
    assert c["learning_macs_formula_per_sample"] == 3 * 6 * (50 * 40 + 40 * 40) + 2 * 6 * 40 * 5
    b = measure_costs(net, bptt_step, x, y, "bptt")
    # backward: input weights at all 30 steps (no input gradient needed); recurrent input
    # and weight at the 29 steps that have a y[t-1]; the readout sees Σ_t o[t] only:
    # its weight and x̄ gradients (2·40·5) and x̄ spread back over the 30 steps (30·40)
    assert b["learning_macs_measured_per_sample"] == 30 * 50 * 40 + 29 * 2 * 40 * 40 + 2 * 40 * 5 + 30 * 40


def test_measure_costs_leaves_gradients_alone():
    net = build_network(SPEC)
    x, y = _data(10)
    for p in net.parameters():
        p.grad = torch.full_like(p, 3.0)
    measure_costs(net, bptt_step, x, y, "bptt")
    assert all(torch.all(p.grad == 3.0) for p in net.parameters())


def test_probe_counts_unique_storages_once():
    probe = CostProbe(count_flops=False)
    a = torch.zeros(100)
    probe.observe([a, a[:10], a.view(10, 10)])
    assert probe.peak_bytes == 400


def test_vgg9_one_step_measured_forward_equals_the_formula():
    from stllr_engine.network import build_network, preset

    net = build_network(preset("vgg9"))
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 1, 2, 32, 32, generator=g) < 0.2).float()
    y = torch.zeros(1, dtype=torch.long)
    cfg = STLLRConfig(learn_steps=1, alpha_post=-1.0, mode="window")
    c = measure_costs(net, lambda n, x, l, probe=None: stllr_step(n, x, l, cfg, probe=probe)[0], x, y, "stllr", cfg)
    assert c["forward_macs_formula_per_sample"] == 2 * 605_165_056
    # every conv and the FC, counted by FlopCounterMode (a one-step trace prefix is elementwise)
    assert c["forward_macs_measured_per_sample"] == 2 * 605_165_056
    # learning, one window step: two weight gradients per layer (causal and non-causal),
    # the input gradient of layers 2..8 and of the readout, and the readout update
    conv = [layer.synaptic_macs() for layer in net.layers]
    expected = 2 * sum(conv) + sum(conv[1:]) + 2 * 512 * 11
    assert c["learning_macs_measured_per_sample"] == expected
    assert c["learning_macs_formula_per_sample"] == 3 * (605_165_056 - 512 * 11) + 2 * 512 * 11


@pytest.mark.parametrize("mode", ["window", "streaming"])
def test_feed_forward_state_does_not_hold_the_spike_history(mode):
    """A non-recurrent layer carries only u and its traces, never a view of its spikes over T."""
    from stllr_engine.network import build_network

    net = build_network(NetworkSpec(kind="mlp", input_shape=(30,), num_classes=3, width=20, depth=2))
    x = (torch.rand(12, 4, 30) < 0.3).float()
    _, state = stllr_step(net, x, torch.zeros(4, dtype=torch.long), STLLRConfig(learn_steps=3, mode=mode))
    assert all(s.y is None for s in state.layers)
    for t in state.tensors():
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()


def test_fit_measures_memory_without_counting_the_input_batch():
    """fit() feeds a transposed batch; the measured memory must equal that of a contiguous one."""
    from torch.utils.data import DataLoader, TensorDataset

    from stllr_engine.train import TrainConfig, fit

    frames = (torch.rand(B, 20, 50, generator=torch.Generator().manual_seed(1)) < 0.2).float()
    labels = torch.randint(0, 5, (B,))
    x = frames.transpose(0, 1).contiguous()
    for rule, mode in (("bptt", "window"), ("stllr", "window"), ("stllr", "streaming")):
        cfg = TrainConfig(rule=rule, stllr=STLLRConfig(learn_steps=5, mode=mode), epochs=1)
        net = build_network(SPEC)
        m = next(fit(net, DataLoader(TensorDataset(frames, labels), batch_size=B), cfg))
        step = bptt_step if rule == "bptt" else _stllr(mode)[0]
        direct = measure_costs(build_network(SPEC), step, x, labels, rule, cfg.stllr)
        assert m["learning_memory_bytes_measured_per_batch"] == direct["learning_memory_bytes_measured_per_batch"], (rule, mode)


def test_standardised_weights_are_not_learning_memory():
    from stllr_engine.network import build_network

    spec = NetworkSpec(kind="vgg", input_shape=(2, 8, 8), num_classes=3, width=4, depth=1, theta=0.3)
    x = (torch.rand(6, 2, 2, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    y = torch.zeros(2, dtype=torch.long)
    plain = measure_costs(build_network(spec), bptt_step, x, y, "bptt")["learning_memory_bytes_measured_per_batch"]
    ws = measure_costs(build_network(spec.replace(weight_standardization=True)), bptt_step, x, y, "bptt")
    assert ws["learning_memory_bytes_measured_per_batch"] == plain


@pytest.mark.parametrize("signal", ["bp", "dfa"])
@pytest.mark.parametrize("mode", ["window", "streaming"])
def test_max_pool_adjoint_is_a_temporary(signal, mode):
    """S-TLLR saves nothing for autograd, max pooling included; DFA keeps no pooling inputs."""
    from stllr_engine.network import build_network

    spec = NetworkSpec(kind="vgg", input_shape=(2, 8, 8), num_classes=3, width=4, depth=2, theta=0.3, pool="max")
    net = build_network(spec)
    x = (torch.rand(6, 2, 2, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    probe = CostProbe(exclude=[*net.parameters(), x], count_flops=False)
    stllr_step(net, x, torch.zeros(2, dtype=torch.long), STLLRConfig(learn_steps=3, mode=mode, learning_signal=signal),
               probe=probe)
    assert probe.peak_saved_bytes == 0
    if signal == "dfa":
        from stllr_engine.forward import initial_state, run_chunk

        cfg = STLLRConfig(learn_steps=3)
        factors = cfg.factors(len(net.layers))
        st = initial_state(net, 2, factors, 0.0)
        from stllr_engine.forward import effective_weights

        w = effective_weights(net)
        _, recs, ro_rec, _ = run_chunk(net, x, st, w, 3, factors, 0.0, record_pool_inputs=False)
        assert all(r.x_raw is None for r in recs) and ro_rec is not None and ro_rec.x_raw is None


CONTRACT_NAMES = {
    "forward_macs_formula_per_sample", "learning_macs_formula_per_sample",
    "learning_memory_values_formula_per_sample", "learning_memory_bytes_formula_per_sample",
    "forward_macs_measured_per_sample", "learning_macs_measured_per_sample",
    "learning_memory_bytes_measured_per_batch", "learning_memory_bytes_measured_per_sample",
    "peak_step_bytes_measured_per_batch", "cuda_peak_bytes_measured_per_batch",
    "T", "batch", "learn_steps", "bytes_per_value", "counting",
}


@pytest.mark.parametrize("rule", ["stllr", "bptt"])
def test_measure_costs_returns_exactly_the_named_figures(rule):
    net = build_network(SPEC)
    x, y = _data(12)
    step, cfg = _stllr("window", ls=4)
    c = measure_costs(net, step if rule == "stllr" else bptt_step, x, y, rule, cfg if rule == "stllr" else None)
    assert set(c) == CONTRACT_NAMES
    assert (c["T"], c["batch"], c["bytes_per_value"]) == (12, B, 4)
    assert c["learn_steps"] == (4 if rule == "stllr" else 12)
    assert c["cuda_peak_bytes_measured_per_batch"] is None
    assert c["peak_step_bytes_measured_per_batch"] >= c["learning_memory_bytes_measured_per_batch"] > 0
    assert c["learning_memory_bytes_measured_per_sample"] == c["learning_memory_bytes_measured_per_batch"] / B
    assert "4 bytes per value" in c["counting"] and "forward buffers" in c["counting"]
