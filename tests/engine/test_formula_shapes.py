"""Shape-only costs (stllr_engine.shapes) against the built network: the same numbers as
formula_costs for every family, rule, window and per-layer factor; microseconds and no
allocation for absurd widths and depths; the run's memory lower bound by hand."""

from __future__ import annotations

import math
import time
import tracemalloc

import pytest

from stllr_engine.costs import formula_costs
from stllr_engine.errors import StllrError
from stllr_engine.network import NetworkSpec, build_network, preset
from stllr_engine.shapes import memory_need_bytes, network_shape, spec_formula_costs
from stllr_engine.stllr import STLLRConfig

SPECS = {
    "mlp": NetworkSpec(kind="mlp", input_shape=(64,), num_classes=10, width=16, depth=1),
    "mlp_deep": NetworkSpec(kind="mlp", input_shape=(64,), num_classes=10, width=24, depth=4),
    "mlp_2d_input": NetworkSpec(kind="mlp", input_shape=(2, 6, 5), num_classes=3, width=7, depth=2),
    "mlp_ws_gain": NetworkSpec(kind="mlp", input_shape=(12,), num_classes=4, width=9, depth=3,
                               weight_standardization=True, ws_gain=True),
    "rsnn": NetworkSpec(kind="rsnn", input_shape=(40,), num_classes=3, width=30, depth=1),
    "rsnn_deep": NetworkSpec(kind="rsnn", input_shape=(40,), num_classes=3, width=11, depth=5),
    "rsnn_rec_ws": NetworkSpec(kind="rsnn", input_shape=(20,), num_classes=5, width=13, depth=2,
                               weight_standardization=True, ws_gain=True, recurrent_standardization=True),
    "rsnn_rec_ws_only": NetworkSpec(kind="rsnn", input_shape=(20,), num_classes=5, width=13, depth=2,
                                    ws_gain=True, recurrent_standardization=True),
    "vgg_small": NetworkSpec(kind="vgg", input_shape=(2, 16, 16), num_classes=5, width=8, depth=2),
    "vgg_one_block": NetworkSpec(kind="vgg", input_shape=(3, 8, 6), num_classes=4, width=5, depth=1),
    "vgg_no_last_pool": NetworkSpec(kind="vgg", input_shape=(2, 12, 12), num_classes=4, width=3, depth=3,
                                    pool="max", pool_last_block=False),
    "vgg_deep_channels": NetworkSpec(kind="vgg", input_shape=(1, 64, 64), num_classes=2, width=2, depth=6),
    "flownet_small": NetworkSpec(kind="flownet", input_shape=(4, 16, 16), num_classes=2, width=4, depth=2),
    "flownet_deep_ws": NetworkSpec(kind="flownet", input_shape=(2, 32, 16), num_classes=2, width=2, depth=4,
                                   weight_standardization=True, ws_gain=True),
    "flownet_one_level": NetworkSpec(kind="flownet", input_shape=(4, 6, 6), num_classes=3, width=3, depth=1),
    "shd_rsnn": preset("shd_rsnn"),
    "shd_rsnn_official": preset("shd_rsnn_official"),
    "vgg9": preset("vgg9"),
    "vgg9_official": preset("vgg9_official"),
}
NETS = {name: build_network(spec) for name, spec in SPECS.items()}


def stllr_settings(layers: int) -> list[STLLRConfig]:
    """Windows, α_post 0 and non-0, and per-layer factors that switch α_post on and off."""
    out = [STLLRConfig(learn_steps=1, alpha_post=-1.0), STLLRConfig(learn_steps=5, alpha_post=0.0),
           STLLRConfig(learn_steps=8, alpha_post=0.5, learning_signal="dfa")]
    if layers > 1:
        out.append(STLLRConfig(learn_steps=3, alpha_post=1.0, layer_factors={layers - 1: {"alpha_post": 0.0}}))
        out.append(STLLRConfig(learn_steps=2, alpha_post=0.0,
                               layer_factors={i: {"alpha_post": 0.25 * i, "lambda_pre": 0.5} for i in range(layers)}))
        out.append(STLLRConfig(learn_steps=4, alpha_post=-0.0, layer_factors={0: {"lambda_post": 0.1}}))
    return out


@pytest.mark.parametrize("name", sorted(SPECS))
def test_shapes_equal_the_built_network(name):
    spec, net = SPECS[name], NETS[name]
    shape = network_shape(spec)
    assert shape.layer_macs() == [layer.synaptic_macs() for layer in net.hidden_layers]
    assert shape.layer_neurons() == [layer.num_neurons for layer in net.hidden_layers]
    assert shape.num_layers == len(net.hidden_layers)
    assert shape.readout_macs == net.readout.synaptic_macs()
    assert shape.synaptic_macs() == net.synaptic_macs()
    assert shape.num_neurons() == net.num_neurons()
    assert shape.parameters() == sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("T", [8, 20])
def test_formula_costs_equal_on_every_family(name, T):
    spec, net = SPECS[name], NETS[name]
    assert spec_formula_costs(spec, "bptt", T) == formula_costs(net, "bptt", T)
    assert spec_formula_costs(spec, "bptt", T, bytes_per_value=8) == formula_costs(net, "bptt", T, bytes_per_value=8)
    for st in stllr_settings(len(net.hidden_layers)):
        if st.learn_steps <= T:
            assert spec_formula_costs(spec, "stllr", T, st) == formula_costs(net, "stllr", T, st), st


@pytest.mark.parametrize("kind", ["mlp", "rsnn"])
@pytest.mark.parametrize("width,depth", [(1, 1), (3, 2), (17, 3), (64, 4)])
def test_widths_and_depths(kind, width, depth):
    spec = NetworkSpec(kind=kind, input_shape=(10,), num_classes=2, width=width, depth=depth)
    net = build_network(spec)
    for st in [STLLRConfig(learn_steps=4, alpha_post=0.0), STLLRConfig(learn_steps=6, alpha_post=2.0,
                                                                       layer_factors={depth - 1: {"alpha_post": 0.0}})]:
        assert spec_formula_costs(spec, "stllr", 6, st) == formula_costs(net, "stllr", 6, st)
    assert spec_formula_costs(spec, "bptt", 6) == formula_costs(net, "bptt", 6)


def test_hand_figures():
    # mlp 64 → 16 → 16 → 10, T = 8, window 4, layer 1 α_post = 0 (test_study's price by hand)
    spec = NetworkSpec(kind="mlp", input_shape=(64,), num_classes=10, width=16, depth=2)
    c = spec_formula_costs(spec, "stllr", 8, STLLRConfig(learn_steps=4, alpha_post=0.5,
                                                          layer_factors={1: {"alpha_post": 0.0}}))
    assert c["forward_macs_formula_per_sample"] == 8 * (64 * 16 + 16 * 16 + 16 * 10)
    assert c["learning_macs_formula_per_sample"] == 3 * 4 * 64 * 16 + 2 * 4 * 16 * 16 + 2 * 4 * 16 * 10
    assert c["learning_memory_bytes_formula_per_sample"] == 2 * 32 * 4
    # VGG-9 on 2×32×32, T = 20: DESIGN §7's 24.2e9 BPTT learning MACs
    assert spec_formula_costs(preset("vgg9"), "bptt", 20)["learning_macs_formula_per_sample"] == 24_206_602_240


def test_same_errors_as_the_engine():
    deep = NetworkSpec(kind="vgg", input_shape=(2, 32, 32), num_classes=2, width=4, depth=6)
    with pytest.raises(StllrError) as built:
        build_network(deep)
    with pytest.raises(StllrError) as shaped:
        spec_formula_costs(deep, "bptt", 5)
    assert str(shaped.value) == str(built.value) == (
        "vgg depth 6 halves 32x32 6 times: use an input size divisible by 64 or a smaller depth")
    net, spec = NETS["mlp_deep"], SPECS["mlp_deep"]
    cases = [("stllr", 8, STLLRConfig(learn_steps=4, layer_factors={4: {"alpha_post": 0.0}})),
             ("stllr", 3, STLLRConfig(learn_steps=4)), ("stllr", 8, None), ("adam", 8, None), ("bptt", 0, None)]
    for rule, T, st in cases:
        with pytest.raises(StllrError) as a:
            formula_costs(net, rule, T, st)
        with pytest.raises(StllrError) as b:
            spec_formula_costs(spec, rule, T, st)
        assert str(a.value) == str(b.value)
        if T == 8 and st is not None:
            assert str(b.value) == "S-TLLR: layer_factors names layer 4, but the network has 4 hidden layers"


def test_absurd_sizes_are_microseconds_and_allocate_nothing():
    wide = NetworkSpec(kind="mlp", input_shape=(64,), num_classes=10, width=2_000_000_000, depth=3)
    deep = NetworkSpec(kind="rsnn", input_shape=(700,), num_classes=20, width=450, depth=1500)
    st = STLLRConfig(learn_steps=5, alpha_post=-1.0)
    w = 2_000_000_000
    c = spec_formula_costs(wide, "stllr", 16, st)
    assert c["learning_macs_formula_per_sample"] == 3 * 5 * (64 * w + 2 * w * w) + 2 * 5 * w * 10
    assert c["learning_memory_values_formula_per_sample"] == 2 * 3 * w
    d = spec_formula_costs(deep, "bptt", 100)
    assert d["learning_macs_formula_per_sample"] == 2 * 100 * (700 * 450 + 1499 * 450 * 450 + 1500 * 450 ** 2 + 9000)
    assert d["learning_memory_values_formula_per_sample"] == 100 * 1500 * 450
    tracemalloc.start()
    start = time.perf_counter()
    for _ in range(500):
        spec_formula_costs(wide, "stllr", 16, st)
        spec_formula_costs(deep, "bptt", 100)
        memory_need_bytes(wide, "bptt", 16, batch_size=64)
    per_call = (time.perf_counter() - start) / 1500
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert per_call < 1e-3, per_call  # ~20 µs here
    assert peak < 200_000, peak  # no tensor, no per-layer list


def test_memory_need_by_hand():
    spec = SPECS["mlp"]  # 64 → 16 → 10: 64·16 + 16 + 16·10 + 10 = 1210 parameters
    net = NETS["mlp"]
    P = sum(p.numel() for p in net.parameters())
    assert P == 1210
    st = STLLRConfig(learn_steps=4)
    # Adam: weights, grads, 2 moments; S-TLLR keeps 2·16 trace values a sample; inputs 8·64 a sample
    assert memory_need_bytes(spec, "stllr", 8, st, batch_size=32) == 4 * (1210 * 4 + 32 * (2 * 16 + 8 * 64))
    assert memory_need_bytes(spec, "bptt", 8, batch_size=32, bytes_per_value=8) == 8 * (1210 * 4 + 32 * (8 * 16 + 8 * 64))
    assert memory_need_bytes(spec, "bptt", 8, batch_size=1, optimizer="sgd") == 4 * (1210 * 3 + 8 * 16 + 8 * 64)
    assert memory_need_bytes(spec, "bptt", 8, batch_size=1, optimizer="sgd", momentum=0.0) == 4 * (
        1210 * 2 + 8 * 16 + 8 * 64)
    dfa = STLLRConfig(learn_steps=4, learning_signal="dfa")  # + the 10×16 feedback matrix
    total, parts = memory_need_bytes(spec, "stllr", 8, dfa, batch_size=2, breakdown=True)
    assert parts == {"parameters": 4 * (1210 * 4 + 160), "learning": 4 * 2 * 32, "inputs": 4 * 2 * 8 * 64}
    assert total == sum(parts.values())
    # the parameters the optimiser holds are those of the built network (preset with gains)
    for name in ("shd_rsnn_official", "vgg9_official"):
        n = sum(p.numel() for p in NETS[name].parameters())
        values = spec_formula_costs(SPECS[name], "bptt", 10)["learning_memory_values_formula_per_sample"]
        inputs = 10 * math.prod(SPECS[name].input_shape)
        assert memory_need_bytes(SPECS[name], "bptt", 10, batch_size=3) == 4 * (4 * n + 3 * (values + inputs))
    with pytest.raises(StllrError, match=r"^memory: batch_size=0 must be an integer >= 1$"):
        memory_need_bytes(spec, "bptt", 8, batch_size=0)
    with pytest.raises(StllrError, match=r"^memory: optimizer='rmsprop': use one of 'adam', 'sgd'$"):
        memory_need_bytes(spec, "bptt", 8, batch_size=1, optimizer="rmsprop")
