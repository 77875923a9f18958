"""Pinned numbers: LIF trajectories, Ψ values, and the cost formulas of VGG-9 and the SHD net."""

from __future__ import annotations

import math

import pytest
import torch

from stllr_engine.costs import formula_costs
from stllr_engine.errors import StllrError
from stllr_engine.network import NetworkSpec, build_network, preset
from stllr_engine.neurons import (
    SURROGATES,
    LIFParameters,
    LIFState,
    ReadoutState,
    get_surrogate,
    lif_step,
    readout_step,
    sigmoid_leak,
    spike,
)


def _trajectory(reset: str, steps: int = 7, current: float = 0.6):
    p = LIFParameters(gamma=0.5, theta=1.0, reset=reset)
    s = LIFState(torch.zeros(1, dtype=torch.float64))
    us, ys = [], []
    for _ in range(steps):
        y, v, s = lif_step(torch.tensor([current], dtype=torch.float64), s, p)
        us.append(float(v) + 1.0)  # membrane before the reset
        ys.append(int(y))
    return us, ys, float(s.u)


def test_lif_soft_reset_trajectory():
    us, ys, u_last = _trajectory("soft")
    # by hand: 0.6, 0.3+0.6, 0.45+0.6 -> spike, (1.05-1)/2+0.6, ...
    assert us == pytest.approx([0.6, 0.9, 1.05, 0.625, 0.9125, 1.05625, 0.628125], abs=1e-12)
    assert ys == [0, 0, 1, 0, 0, 1, 0]
    assert u_last == pytest.approx(0.628125, abs=1e-12)


def test_lif_hard_reset_trajectory():
    us, ys, _ = _trajectory("hard")
    assert us == pytest.approx([0.6, 0.9, 1.05, 0.6, 0.9, 1.05, 0.6], abs=1e-12)
    assert ys == [0, 0, 1, 0, 0, 1, 0]


def test_threshold_is_inclusive():
    y, v, _ = lif_step(torch.tensor([0.8]), LIFState(torch.tensor([0.0])), LIFParameters(gamma=0.5, theta=0.8))
    assert float(y) == 1.0 and float(v) == 0.0


def test_readout_trajectory():
    s = ReadoutState(torch.zeros(1, dtype=torch.float64))
    outs = []
    for c in (1.0, 0.0, 2.0):
        o, s = readout_step(torch.tensor([c], dtype=torch.float64), s, 0.5)
        outs.append(float(o))
    assert outs == pytest.approx([1.0, 0.5, 2.25])


@pytest.mark.parametrize(
    "name, at0, at01",
    [
        ("inverse_square", 1.0, 1 / 11**2),
        ("triangle", 0.3, 0.27),
        ("sigmoid", 1.0, 4 * (1 / (1 + math.exp(-0.1))) * (1 - 1 / (1 + math.exp(-0.1)))),
        ("arctan", 1.0, 0.5),
    ],
)
def test_surrogate_values(name, at0, at01):
    f = get_surrogate(name)
    v = torch.tensor([0.0, 0.1, -0.1], dtype=torch.float64)
    assert f(v).tolist() == pytest.approx([at0, at01, at01], rel=1e-12)
    out = torch.empty(3, dtype=torch.float64)
    assert f(v, out=out) is out and out.tolist() == pytest.approx([at0, at01, at01], rel=1e-12)


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_spike_derivative_is_the_surrogate(name):
    v = torch.linspace(-1.5, 1.5, 31, dtype=torch.float64, requires_grad=True)
    y = spike(v, name)
    assert y.tolist() == [float(t >= 0) for t in v.tolist()]
    (g,) = torch.autograd.grad(y.sum(), v)
    torch.testing.assert_close(g, get_surrogate(name)(v.detach()))


def test_unknown_surrogate_is_a_clear_error():
    with pytest.raises(StllrError, match="unknown surrogate 'relu': choose one of"):
        get_surrogate("relu")


def test_official_leak_parametrisation():
    assert sigmoid_leak(0.0) == 0.5
    assert sigmoid_leak(5.0) == pytest.approx(0.993307, abs=1e-6)


# -- formula costs (DESIGN §4, counted by hand) --------------------------------------------


def test_vgg9_formula_costs():
    net = build_network(preset("vgg9"))
    # conv MACs per step: 64·32²·2·9 + 128·32²·64·9 + 256·16²·128·9 + 256·16²·256·9
    #   + 512·8²·256·9 + 512·8²·512·9 + 2·512·4²·512·9, plus the 512·11 readout
    S = 1_179_648 + 75_497_472 + 75_497_472 + 150_994_944 + 75_497_472 + 150_994_944 + 2 * 37_748_736 + 5_632
    assert S == 605_165_056 == net.synaptic_macs()
    assert net.num_neurons() == 409_600  # 64·32² + 128·32² + 2·256·16² + 2·512·8² + 2·512·4²
    bptt = formula_costs(net, "bptt", 20)
    from stllr_engine.stllr import STLLR_PRESETS

    stllr = formula_costs(net, "stllr", 20, STLLR_PRESETS["dvs_gesture"])
    assert bptt["forward_macs_formula_per_sample"] == stllr["forward_macs_formula_per_sample"] == 20 * S == 12_103_301_120
    assert bptt["learning_macs_formula_per_sample"] == 24_206_602_240  # 2T·S
    assert stllr["learning_macs_formula_per_sample"] == 9_077_447_680  # 3·5·S_hidden + 2·5·S_readout
    assert bptt["learning_memory_values_formula_per_sample"] == 8_192_000  # T·N
    assert stllr["learning_memory_values_formula_per_sample"] == 819_200  # 2·N
    assert bptt["learning_memory_bytes_formula_per_sample"] == 32_768_000


def test_shd_net_formula_costs():
    from stllr_engine.stllr import STLLR_PRESETS, STLLRConfig

    net = build_network(preset("shd_rsnn"))
    S = 700 * 450 + 450 * 450 + 450 * 20
    assert S == 526_500 == net.synaptic_macs()
    bptt = formula_costs(net, "bptt", 100)
    stllr = formula_costs(net, "stllr", 100, STLLR_PRESETS["shd"])
    assert bptt["forward_macs_formula_per_sample"] == 52_650_000
    assert bptt["learning_macs_formula_per_sample"] == 105_300_000
    # 3·90·S_hidden + 2·90·S_readout: more than BPTT, as the paper's SHD row
    assert stllr["learning_macs_formula_per_sample"] == 3 * 90 * (700 * 450 + 450 * 450) + 2 * 90 * 450 * 20 == 141_345_000
    assert (bptt["learning_memory_values_formula_per_sample"], stllr["learning_memory_values_formula_per_sample"]) == (45_000, 900)  # ratio T/2 = 50
    causal_only = formula_costs(net, "stllr", 100, STLLRConfig(learn_steps=10, alpha_post=0.0))
    assert causal_only["learning_macs_formula_per_sample"] == 2 * 10 * S
    assert (stllr["T"], stllr["learn_steps"], bptt["learn_steps"], stllr["bytes_per_value"]) == (100, 90, 100, 4)
    assert "4 bytes per value" in stllr["counting"]


def test_vgg_width_depth_plan():
    net = build_network(NetworkSpec(kind="vgg", input_shape=(2, 32, 32), num_classes=11, width=64, depth=4))
    assert [layer.out_shape[0] for layer in net.layers] == [64, 128, 256, 256, 512, 512, 512, 512]
    small = build_network(NetworkSpec(kind="vgg", input_shape=(2, 16, 16), num_classes=5, width=8, depth=2))
    assert [layer.out_shape for layer in small.layers] == [(8, 16, 16), (16, 16, 16), (32, 8, 8), (32, 8, 8)]
    deep = build_network(NetworkSpec(kind="rsnn", input_shape=(40,), num_classes=3, width=30, depth=3))
    assert [layer.synaptic_macs() for layer in deep.layers] == [40 * 30 + 900, 30 * 30 + 900, 30 * 30 + 900]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"kind": "transformer"}, "network: kind='transformer': use one of 'rsnn', 'mlp', 'vgg'"),
        ({"width": 0}, "network: width=0 must be an integer >= 1"),
        ({"width": 12.5}, "network: width=12.5 must be an integer >= 1"),
        ({"width": "12"}, "network: width='12' must be an integer >= 1"),
        ({"gamma": 1.5}, "network: gamma=1.5 must lie in \\[0, 1\\]"),
        ({"theta": float("nan")}, "network: theta=nan must be a finite number"),
        ({"theta": 0.0}, "network: theta=0.0 must lie in \\(0, inf\\)"),
        ({"input_shape": (0,)}, "input_shape=\\(0,\\) must be a non-empty list of integers >= 1"),
        ({"input_shape": (-3,)}, "input_shape=\\(-3,\\) must be a non-empty list"),
        ({"kind": "vgg", "input_shape": (2, 12, 12), "depth": 3}, "divisible by 8"),
    ],
)
def test_bad_specs_are_clear_errors(changes, message):
    with pytest.raises(StllrError, match=message):
        build_network(NetworkSpec(**{"kind": "mlp", "input_shape": (10,), **changes}))


def test_formula_costs_needs_the_rule_settings_and_a_window_within_T():
    from stllr_engine.stllr import STLLRConfig

    net = build_network(preset("shd_rsnn"))
    with pytest.raises(StllrError, match="rule 'stllr' needs its settings: pass stllr=STLLRConfig"):
        formula_costs(net, "stllr", 100)
    with pytest.raises(StllrError, match="learn_steps=90 exceeds T=50: use learn_steps <= T"):
        formula_costs(net, "stllr", 50, STLLRConfig(learn_steps=90))
    with pytest.raises(StllrError, match="unknown rule 'eprop'"):
        formula_costs(net, "eprop", 50)


# -- the authors' networks (issue 6 item 7) ---------------------------------------------


def test_official_presets_are_the_authors_models():
    shd = build_network(preset("shd_rsnn_official"))
    assert shd.spec.gamma == shd.spec.gamma_o == pytest.approx(1 / (1 + math.exp(-5)))
    assert shd.spec.theta == 0.6 and shd.spec.surrogate == "inverse_square"
    names = {n for n, _ in shd.named_parameters()}
    assert names == {"layers.0.weight", "layers.0.bias", "layers.0.rec_weight", "layers.0.gain", "layers.0.rec_gain",
                     "readout.weight", "readout.bias"}
    layer = shd.layers[0]
    assert layer.ws_unbiased and layer.rec_standardization and layer.gain.shape == (450,)
    vgg = build_network(preset("vgg9_official"))
    assert vgg.readout.pre.steps == ("gap",)  # no pooling after the last block
    assert [layer.pre.steps for layer in vgg.layers] == [(), (), ("maxpool",), (), ("maxpool",), (), ("maxpool",), ()]
    assert all(layer.gain is not None and layer.ws_unbiased for layer in vgg.layers)
    assert vgg.synaptic_macs() == 605_165_056 and vgg.spec.gamma == 0.5 and vgg.spec.gamma_o == 0.0
    # the paper-equation presets are unchanged
    assert not build_network(preset("vgg9")).layers[0].ws_unbiased and preset("vgg9").pool_last_block
    assert {n for n, _ in build_network(preset("shd_rsnn")).named_parameters()} == {
        "layers.0.weight", "layers.0.bias", "layers.0.rec_weight", "readout.weight", "readout.bias"}


def test_new_spec_fields_round_trip_and_default_to_the_old_behaviour():
    from stllr_engine.stllr import STLLR_PRESETS, STLLRConfig

    spec = preset("shd_rsnn_official")
    assert NetworkSpec.from_dict(spec.to_dict()) == spec
    old = {k: v for k, v in preset("vgg9").to_dict().items()
           if k not in ("ws_variance", "ws_gain", "recurrent_standardization", "pool_last_block")}
    assert NetworkSpec.from_dict(old) == preset("vgg9")
    cfg = STLLR_PRESETS["shd_rsnn_official"]
    assert (cfg.readout_lambda, cfg.readout_bias, cfg.learn_steps) == (0.99, "error", 90)
    assert STLLRConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(StllrError, match="ws_gain=true needs weight_standardization"):
        NetworkSpec(ws_gain=True)
    with pytest.raises(StllrError, match="recurrent_standardization applies to kind 'rsnn' only"):
        NetworkSpec(kind="mlp", recurrent_standardization=True)
    with pytest.raises(StllrError, match="ws_variance='sample': use one of 'population', 'unbiased'"):
        NetworkSpec(ws_variance="sample")


def test_standardisation_by_hand():
    from stllr_engine.layers import standardize_weight

    w = torch.tensor([[1.0, 3.0, 5.0], [0.0, 0.0, 6.0]], dtype=torch.float64)
    gain = torch.tensor([2.0, 0.5], dtype=torch.float64)
    # row 0: mean 3, Σ(w-mean)² = 8; row 1: mean 2, Σ = 24; fan-in 3; eps 1e-4
    pop = [[-2 / math.sqrt(8 + 1e-4), 0.0, 2 / math.sqrt(8 + 1e-4)],
           [-2 / math.sqrt(24 + 1e-4), -2 / math.sqrt(24 + 1e-4), 4 / math.sqrt(24 + 1e-4)]]
    unb = [[-2 / math.sqrt(12 + 1e-4) * 2, 0.0, 2 / math.sqrt(12 + 1e-4) * 2],
           [-2 / math.sqrt(36 + 1e-4) * 0.5, -2 / math.sqrt(36 + 1e-4) * 0.5, 4 / math.sqrt(36 + 1e-4) * 0.5]]
    close = dict(rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(standardize_weight(w), torch.tensor(pop, dtype=torch.float64), **close)
    torch.testing.assert_close(standardize_weight(w, unbiased=True, gain=gain), torch.tensor(unb, dtype=torch.float64),
                               **close)
