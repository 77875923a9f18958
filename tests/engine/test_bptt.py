"""BPTT (fused LIF scan, hoisted GEMMs) == autograd through the plainly unrolled network."""

from __future__ import annotations

import pytest
import torch
from engine_cases import SPECS, make_case, rel_err

from stllr_engine.bptt import bptt_forward, bptt_step
from stllr_engine.reference import reference_bptt_loss


@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_bptt_gradients_equal_unrolled_autograd(name, reset):
    net, x, labels = make_case(name, reset, T=8)
    net.zero_grad(set_to_none=True)
    stats = bptt_step(net, x, labels)
    got = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)
    loss = reference_bptt_loss(net, x, labels)
    loss.backward()
    assert float(stats.loss) == pytest.approx(float(loss.detach()), rel=1e-12)
    for n, p in net.named_parameters():
        assert float(p.grad.abs().max()) > 0, f"{n} got no gradient"
        assert rel_err(got[n], p.grad) <= 1e-8, n


def test_readout_sum_closed_form_matches_the_leaky_recursion():
    net, x, _ = make_case("recurrent", T=11)
    with torch.no_grad():
        o = net(x.transpose(0, 1))  # [T, B, C] by the recursion o[t] = γ_o o[t-1] + ...
        torch.testing.assert_close(bptt_forward(net, x), o.sum(0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reset", ["soft", "hard"])
def test_credit_reaches_the_first_step_through_time(reset):
    """d loss / d x[0] travels through the membrane, the resets and the recurrence: the
    engine's input gradient equals the unrolled one and is not zero at t = 0."""
    net, x, labels = make_case("recurrent", reset, T=8)
    xe = x.clone().requires_grad_(True)
    bptt_step(net, xe, labels)
    xr = x.clone().requires_grad_(True)
    reference_bptt_loss(net, xr, labels).backward()
    assert float(xr.grad[0].abs().max()) > 0
    assert rel_err(xe.grad, xr.grad) <= 1e-8
