"""The spiking encoder–decoder (kind ``flownet``, issue #18 item 2): shapes, exactness, costs.

S-TLLR on every layer (stride-2 encoder convs, upsample-then-conv decoder layers with skip
inputs, the conv flow head) against the explicit-eligibility reference, online S-TLLR
against the reference SGD, BPTT against the unrolled autograd network; the formula costs
against counts made by hand.
"""

from __future__ import annotations

import pytest
import torch

from stllr_engine.bptt import bptt_step
from stllr_engine.costs import formula_costs
from stllr_engine.errors import StllrError
from stllr_engine.layers import Transform
from stllr_engine.losses import CallableLoss
from stllr_engine.network import NetworkSpec, build_network, flownet_channels, preset
from stllr_engine.reference import reference_bptt_loss, reference_stllr_grads, reference_stllr_online_sgd
from stllr_engine.stllr import STLLRConfig, stllr_step

TOL = 1e-10


def _spec(**kw) -> NetworkSpec:
    base = dict(kind="flownet", input_shape=(2, 8, 8), num_classes=2, width=3, depth=2, gamma=0.9, theta=0.3,
                reset="hard", gamma_o=0.5)
    base.update(kw)
    return NetworkSpec(**base)


def _data(spec: NetworkSpec, T: int = 4, B: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(T, B, *spec.input_shape, generator=g) < 0.5).double()
    outputs = spec.num_classes * spec.input_shape[1] * spec.input_shape[2]
    return x, torch.randn(B, outputs, generator=g).double()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def test_the_layers_follow_the_spec():
    spec = NetworkSpec(kind="flownet", input_shape=(4, 64, 64), num_classes=2, width=64, depth=4)
    assert flownet_channels(spec) == ([64, 128, 256, 512], [256, 128, 64, 64])
    net = build_network(spec)
    shapes = [(layer.x_shape, layer.out_shape, layer.stride, layer.skip) for layer in net.hidden_layers]
    assert shapes == [
        ((4, 64, 64), (64, 32, 32), 2, None), ((64, 32, 32), (128, 16, 16), 2, None),
        ((128, 16, 16), (256, 8, 8), 2, None), ((256, 8, 8), (512, 4, 4), 2, None),
        # decoder: upsampled spikes of the layer below + the encoder's of the same resolution
        ((512 + 256, 8, 8), (256, 8, 8), 1, 2), ((256 + 128, 16, 16), (128, 16, 16), 1, 1),
        ((128 + 64, 32, 32), (64, 32, 32), 1, 0), ((64, 64, 64), (64, 64, 64), 1, None),
    ]
    assert net.readout.kind == "conv" and net.readout.weight.shape == (2, 64, 3, 3)
    assert net.readout.num_classes == 2 * 64 * 64
    assert net(torch.zeros(1, 3, 4, 64, 64)).shape == (3, 1, 2 * 64 * 64)
    p = preset("spike_flownet")
    assert (p.input_shape, p.width, p.depth, p.gamma, p.theta, p.reset) == ((4, 256, 256), 64, 4, 1.0, 0.75, "hard")


def test_a_size_the_encoder_cannot_halve_is_one_line():
    with pytest.raises(StllrError, match="divisible by 8"):
        NetworkSpec(kind="flownet", input_shape=(4, 12, 12), num_classes=2, width=4, depth=3)
    with pytest.raises(StllrError, match=r"\[C, H, W\]"):
        NetworkSpec(kind="flownet", input_shape=(64,), num_classes=2)


def test_upsampling_adjoint_is_autograds():
    t = Transform(("upsample",))
    x = torch.randn(3, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 2, 8, 10, dtype=torch.float64)
    (expected,) = torch.autograd.grad(t(x), x, g)
    assert t.out_shape((2, 4, 5)) == (2, 8, 10)
    assert _rel(t.adjoint(g, (2, 4, 5)), expected) < 1e-14


NETS = {
    "two_levels": _spec(),
    "three_levels_soft": _spec(input_shape=(2, 8, 8), width=2, depth=3, reset="soft", gamma=0.7, theta=0.2),
    "ws_gain": _spec(weight_standardization=True, ws_gain=True, ws_variance="unbiased"),
    "one_level": _spec(depth=1, num_classes=3),
}


def _net(name: str) -> torch.nn.Module:
    net = build_network(NETS[name]).double()
    with torch.no_grad():  # gains away from 1, so that their update is tested too
        for layer in net.hidden_layers:
            if layer.gain is not None:
                layer.gain.mul_(1.3)
    return net


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("signal", ["bp", "dfa"])
@pytest.mark.parametrize("mode", ["chunked", "window", "streaming"])
@pytest.mark.parametrize("alpha_post", [0.0, 0.7])
def test_stllr_is_the_explicit_eligibility_reference_on_every_layer(name, signal, mode, alpha_post):
    spec = NETS[name]
    net = _net(name)
    x, y = _data(spec)
    cfg = STLLRConfig(learn_steps=3, lambda_pre=0.6, lambda_post=0.3, alpha_post=alpha_post, learning_signal=signal,
                      mode=mode, layer_factors={0: {"alpha_pre": 0.8}})
    net.zero_grad()
    stllr_step(net, x, y, cfg, step_loss="mse")
    ref = reference_stllr_grads(net, x, y, cfg, step_loss="mse")
    for n, p in net.named_parameters():
        assert ref[n].abs().max() > 1e-6, f"{n}: the reference update is zero, the case tests nothing"
        assert _rel(p.grad, ref[n]) < TOL, n


def _photometric_like(o: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A non-quadratic regression loss on the two output maps (as a flow loss is)."""
    d = o - target
    return ((d * d + 1e-3**2) ** 0.45).mean() + 0.1 * (o.reshape(o.shape[0], 2, -1).diff(dim=2) ** 2).mean()


def test_a_callable_loss_and_sum_output_are_exact_too():
    spec = NETS["two_levels"]
    net = _net("two_levels")
    x, y = _data(spec, T=5, seed=2)
    loss = CallableLoss(_photometric_like)
    for kind in ("per_step", "sum_output"):
        cfg = STLLRConfig(learn_steps=2, lambda_pre=0.9, lambda_post=0.5, alpha_post=-1.0)
        net.zero_grad()
        stllr_step(net, x, y, cfg, loss=kind, step_loss=loss)
        ref = reference_stllr_grads(net, x, y, cfg, loss=kind, step_loss=loss)
        for n, p in net.named_parameters():
            assert _rel(p.grad, ref[n]) < TOL, (kind, n)


def test_online_stllr_is_the_reference_sgd():
    spec = NETS["two_levels"]
    x, y = _data(spec, T=4, seed=3)
    cfg = STLLRConfig(learn_steps=3, lambda_pre=0.6, lambda_post=0.3, alpha_post=0.5, online=True)
    net, ref = _net("two_levels"), _net("two_levels")
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    stllr_step(net, x, y, cfg, optimizer=opt, step_loss="mse")
    reference_stllr_online_sgd(ref, x, y, cfg, lr=0.05, step_loss="mse")
    start = _net("two_levels")
    for (n, p), q, p0 in zip(net.named_parameters(), ref.parameters(), start.parameters()):
        assert (q - p0).abs().max() > 1e-8, n  # every parameter moved
        assert _rel(p - p0, q - p0) < 1e-9, n


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("objective", ["sum_output", "per_step", "per_step_all"])
def test_bptt_is_unrolled_autograd(name, objective):
    spec = NETS[name]
    net = _net(name)
    x, y = _data(spec, T=4, seed=1)
    net.zero_grad()
    bptt_step(net, x, y, loss=objective, learn_steps=2, step_loss="mse")
    fast = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    reference_bptt_loss(net, x, y, objective, 2, step_loss="mse").backward()
    for n, p in net.named_parameters():
        assert p.grad.abs().max() > 1e-8, n
        assert _rel(fast[n], p.grad) < TOL, n


def test_formula_costs_are_the_hand_counts():
    # (4, 8, 8), width 2, depth 2, per step and sample:
    #   enc0 4→2, stride 2, out 2×4×4:          32 outputs · 4·9 = 1152 MACs, 32 neurons
    #   enc1 2→4, stride 2, out 4×2×2:          16 outputs · 2·9 =  288,      16
    #   dec0 up(4×4×4) ⊕ enc0 (2×4×4) → 2×4×4:  32 outputs · 6·9 = 1728,      32
    #   dec1 up(2×8×8) → 2×8×8:                128 outputs · 2·9 = 2304,     128
    #   head 2 maps of 8×8 from 2 channels:    128 outputs · 2·9 = 2304
    # S = 7776, N = 208
    net = build_network(NetworkSpec(kind="flownet", input_shape=(4, 8, 8), num_classes=2, width=2, depth=2))
    assert [layer.synaptic_macs() for layer in net.hidden_layers] == [1152, 288, 1728, 2304]
    assert net.readout.synaptic_macs() == 2304 and net.num_neurons() == 208
    bptt = formula_costs(net, "bptt", 10)
    assert bptt["forward_macs_formula_per_sample"] == 77760
    assert bptt["learning_macs_formula_per_sample"] == 2 * 10 * 7776
    assert bptt["learning_memory_values_formula_per_sample"] == 10 * 208
    # the paper's flow setting: S-TLLR learns at 1 of T = 10 steps
    st = formula_costs(net, "stllr", 10, STLLRConfig(learn_steps=1, alpha_post=-1.0))
    assert st["learning_macs_formula_per_sample"] == 3 * (1152 + 288 + 1728 + 2304) + 2 * 2304
    assert st["learning_memory_values_formula_per_sample"] == 2 * 208
    # memory T/2 = 5x less, as the paper reports for MVSEC
    assert bptt["learning_memory_values_formula_per_sample"] / st["learning_memory_values_formula_per_sample"] == 5


def test_a_pack_refuses_it_in_one_line():
    from stllr_engine.pack import check_packable
    from stllr_engine.train import TrainConfig

    nets = [build_network(NETS["two_levels"].replace(seed=s)) for s in (0, 1)]
    with pytest.raises(StllrError, match="trains unpacked"):
        check_packable(nets, [TrainConfig(rule="stllr")] * 2)
