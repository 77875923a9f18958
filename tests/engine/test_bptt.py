"""BPTT (fused LIF scan, hoisted GEMMs) == autograd through the plainly unrolled network,
for each of its objectives (``TrainConfig.loss``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from engine_cases import SPECS, make_case, rel_err

from stllr_engine import StllrError, TrainConfig
from stllr_engine.bptt import LOSSES, bptt_forward, bptt_outputs, bptt_step, lif_scan
from stllr_engine.reference import reference_bptt_loss
from stllr_engine.train import rule_step

LEARN_STEPS = 3  # the window of "per_step" in these cases (T = 8)


def _window(loss):
    return LEARN_STEPS if loss == "per_step" else None


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_bptt_gradients_equal_unrolled_autograd(name, reset, loss):
    net, x, labels = make_case(name, reset, T=8)
    net.zero_grad(set_to_none=True)
    stats = bptt_step(net, x, labels, loss=loss, learn_steps=_window(loss))
    got = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)
    objective = reference_bptt_loss(net, x, labels, loss, _window(loss))
    objective.backward()
    assert float(stats.objective) == pytest.approx(float(objective.detach()), rel=1e-12)
    with torch.no_grad():  # the reported loss is CE(Σ_t o[t]) whatever the objective
        assert float(stats.loss) == pytest.approx(float(reference_bptt_loss(net, x, labels)), rel=1e-12)
    for n, p in net.named_parameters():
        assert float(p.grad.abs().max()) > 0, f"{n} got no gradient"
        assert rel_err(got[n], p.grad) <= 1e-10, n


@pytest.mark.parametrize("loss", ["per_step", "per_step_all"])
@pytest.mark.parametrize("name", ["dense", "recurrent", "conv_avg"])
def test_per_step_losses_use_each_steps_own_label(name, loss):
    net, x, _ = make_case(name, T=8)
    labels = torch.randint(0, net.readout.num_classes, (8, x.shape[1]), generator=torch.Generator().manual_seed(9))
    net.zero_grad(set_to_none=True)
    stats = bptt_step(net, x, labels, loss=loss, learn_steps=_window(loss))
    got = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)
    objective = reference_bptt_loss(net, x, labels, loss, _window(loss))
    objective.backward()
    assert float(stats.objective) == pytest.approx(float(objective.detach()), rel=1e-12)
    for n, p in net.named_parameters():
        assert rel_err(got[n], p.grad) <= 1e-10, n


def _bptt_step_before_the_loss_key(net, x, labels):
    """``bptt_step`` as it was before ``loss`` existed, verbatim (its objective and readout)."""
    x = x.contiguous()
    labels = labels if labels.dim() == 1 else labels[-1]
    weights = [layer.effective_weights() for layer in net.hidden_layers]
    T, batch = x.shape[0], x.shape[1]
    inp = x
    for layer, sw in zip(net.hidden_layers, weights):
        xs = layer.pre(inp.reshape(T * batch, *inp.shape[2:]))
        current = layer.synapse(xs, sw.w, layer.bias).view(T, batch, *layer.out_shape)
        inp = lif_scan(current, sw.w_rec, layer.lif)
    ro = net.readout
    steps = torch.arange(T - 1, -1, -1, device=x.device, dtype=x.dtype)
    g = ro.gamma_o
    k = steps + 1.0 if g == 1.0 else (1.0 - g ** (steps + 1.0)) / (1.0 - g)
    xo = ro.pre(inp.reshape(T * batch, *inp.shape[2:])).view(T, -1)
    x_bar = (k @ xo).view(batch, -1)
    o_sum = F.linear(x_bar, ro.weight, ro.bias * k.sum())
    loss = F.cross_entropy(o_sum, labels)
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_sum_output_is_the_bptt_of_before_bit_for_bit(name):
    """The default objective reproduces today's numbers exactly: the same loss and the
    same gradients, bit for bit, by default, with loss="sum_output" and through fit's step."""
    net, x, labels = make_case(name, "soft", T=8)
    net.zero_grad(set_to_none=True)
    before_loss = _bptt_step_before_the_loss_key(net, x, labels)
    before = {n: p.grad.clone() for n, p in net.named_parameters()}
    for step in (bptt_step, lambda *a: bptt_step(*a, loss="sum_output"), rule_step(TrainConfig(rule="bptt")),
                 rule_step(TrainConfig(rule="bptt", loss="sum_output"))):
        net.zero_grad(set_to_none=True)
        stats = step(net, x, labels)
        assert torch.equal(stats.loss, before_loss) and torch.equal(stats.objective, before_loss)
        for n, p in net.named_parameters():
            assert torch.equal(p.grad, before[n]), n


def test_readout_sum_closed_form_matches_the_leaky_recursion():
    net, x, _ = make_case("recurrent", T=11)
    with torch.no_grad():
        o = net(x.transpose(0, 1))  # [T, B, C] by the recursion o[t] = γ_o o[t-1] + ...
        torch.testing.assert_close(bptt_forward(net, x), o.sum(0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gamma_o", [0.0, 0.7, 1.0])
@pytest.mark.parametrize("first", [0, 6, 10])
def test_per_step_outputs_match_the_leaky_recursion(gamma_o, first):
    """o[first:T] by the leak matrix == the recursion, including γ_o = 0 and 1."""
    net, x, _ = make_case("dense", T=11)
    net.readout.gamma_o = gamma_o
    with torch.no_grad():
        o = net(x.transpose(0, 1))
        torch.testing.assert_close(bptt_outputs(net, x, first=first), o[first:], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("reset", ["soft", "hard"])
def test_credit_reaches_the_first_step_through_time(reset, loss):
    """d loss / d x[0] travels through the membrane, the resets and the recurrence: the
    engine's input gradient equals the unrolled one and is not zero at t = 0 (with
    "per_step" too, whose window is the last steps only)."""
    net, x, labels = make_case("recurrent", reset, T=8)
    xe = x.clone().requires_grad_(True)
    bptt_step(net, xe, labels, loss=loss, learn_steps=_window(loss))
    xr = x.clone().requires_grad_(True)
    reference_bptt_loss(net, xr, labels, loss, _window(loss)).backward()
    assert float(xr.grad[0].abs().max()) > 0
    assert rel_err(xe.grad, xr.grad) <= 1e-10


def test_the_objectives_differ():
    """The three losses are three objectives: their gradients are not the same."""
    grads = []
    for loss in LOSSES:
        net, x, labels = make_case("recurrent", T=8)
        bptt_step(net, x, labels, loss=loss, learn_steps=_window(loss))
        grads.append(net.layers[0].weight.grad.clone())
    assert rel_err(grads[0], grads[1]) > 1e-3 and rel_err(grads[1], grads[2]) > 1e-3


@pytest.mark.parametrize("kwargs, message", [
    ({"loss": "mse"}, "BPTT: loss='mse': use one of 'sum_output', 'per_step', 'per_step_all'"),
    ({"loss": "per_step"}, "averages CE(o[t], label) over the last learn_steps steps: give learn_steps"),
    ({"loss": "per_step", "learn_steps": 9}, "learn_steps=9 exceeds the T=8 steps of the batch"),
    ({"loss": "per_step", "learn_steps": 0}, "BPTT: learn_steps=0 must be an integer >= 1"),
])
def test_bad_loss_arguments_are_one_line_errors(kwargs, message):
    net, x, labels = make_case("dense", T=8)
    with pytest.raises(StllrError) as err:
        bptt_step(net, x, labels, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)
