"""The optical-flow loss and evaluation (issue #18 item 4), against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from stllr_engine.errors import StllrError
from stllr_engine.flow import (ALPHA, EPSILON, FlowMetrics, charbonnier, flow_errors, flow_loss, photometric,
                               smoothness, warp)

RHO0 = EPSILON ** (2 * ALPHA)  # ρ(0)


def _rho(d: float) -> float:
    return (d * d + EPSILON ** 2) ** ALPHA


def test_warp_follows_the_flow_bilinearly_with_zeros_outside():
    img = torch.tensor([[[0.0, 1.0, 2.0], [10.0, 11.0, 12.0], [20.0, 21.0, 22.0]]], dtype=torch.float64)
    down = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    down[:, 1] = 1.0  # v = +1: each pixel reads the row below
    assert warp(img, down)[0, 0].tolist() == [[10.0, 11.0, 12.0], [20.0, 21.0, 22.0], [0.0, 0.0, 0.0]]
    diag = torch.full((1, 2, 3, 3), 0.5, dtype=torch.float64)  # half a pixel right and down
    w = warp(img, diag)[0, 0]
    assert float(w[0, 0]) == pytest.approx((0 + 1 + 10 + 11) / 4)
    assert float(w[2, 2]) == pytest.approx(22 / 4)  # three of its four neighbours are outside
    with pytest.raises(StllrError, match="must be \\[B, 2, H, W\\]"):
        warp(img, torch.zeros(1, 3, 3, 3))


def test_the_photometric_loss_is_smallest_at_the_true_flow():
    g = torch.Generator().manual_seed(0)
    prev = torch.rand(2, 8, 8, generator=g, dtype=torch.float64)
    nxt = torch.zeros_like(prev)
    nxt[:, :, 2:] = prev[:, :, :-2]  # the scene moved 2 pixels right
    true = torch.zeros(2, 2, 8, 8, dtype=torch.float64)
    true[:, 0] = 2.0
    # where the warp stays inside the image the residual is zero: ρ(0); the last two columns read outside
    inside = torch.ones(2, 8, 8, dtype=torch.bool)
    inside[:, :, 6:] = False
    resid = prev - warp(nxt, true)[:, 0]
    assert float(resid[inside].abs().max()) < 1e-12
    expected = (RHO0 * int(inside.sum()) + sum(_rho(float(d)) for d in prev[~inside])) / prev.numel()
    assert float(photometric(prev, nxt, true)) == pytest.approx(expected, rel=1e-12)
    for wrong in (0.0, 1.0, 3.0):
        other = true.clone()
        other[:, 0] = wrong
        assert float(photometric(prev, nxt, other)) > float(photometric(prev, nxt, true))


def test_second_order_smoothness_by_hand():
    x = torch.arange(5, dtype=torch.float64)
    flow = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    flow[0, 0] = (x ** 2)[None, :].expand(5, 5)  # u = x²: second difference 2 along x and the diagonals
    value = float(smoothness(flow))
    # each term averages over u and v (half of the values are v's zeros): x, diagonal, anti-diagonal see 2, y sees 0
    expected = 3 * (_rho(2.0) + RHO0) / 2 + RHO0
    assert value == pytest.approx(expected, rel=1e-12)
    assert float(charbonnier(torch.tensor([3.0, 4.0]))) == pytest.approx((_rho(3.0) + _rho(4.0)) / 2)


def test_the_multiscale_loss_sums_its_scales():
    g = torch.Generator().manual_seed(1)
    prev, nxt = torch.rand(1, 8, 8, generator=g, dtype=torch.float64), torch.rand(1, 8, 8, generator=g, dtype=torch.float64)
    flows = [torch.randn(1, 2, s, s, generator=g, dtype=torch.float64) for s in (8, 4, 2)]
    small = torch.nn.functional.interpolate
    by_hand = sum(float(photometric(small(prev[:, None], size=(f.shape[2],) * 2, mode="bilinear", align_corners=False)
                                    if f.shape[2] != 8 else prev,
                                    small(nxt[:, None], size=(f.shape[2],) * 2, mode="bilinear", align_corners=False)
                                    if f.shape[2] != 8 else nxt, f)) + 10 * float(smoothness(f)) for f in flows)
    assert float(flow_loss(flows, prev, nxt)) == pytest.approx(by_hand, rel=1e-12)
    # differentiable in the flows
    leaf = flows[0].clone().requires_grad_(True)
    flow_loss([leaf], prev, nxt).backward()
    assert leaf.grad is not None and float(leaf.grad.abs().max()) > 0


def test_aee_and_outliers_count_only_valid_points_with_events():
    flow = torch.zeros(2, 2, 2, 2, dtype=torch.float64)
    gt = torch.zeros(2, 2, 2, 2, dtype=torch.float64)
    gt[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # error 5: an outlier
    gt[0, :, 0, 1] = torch.tensor([1.0, 0.0])  # error 1
    gt[0, :, 1, 0] = torch.tensor([float("nan"), 1.0])  # invalid ground truth
    # gt[0, :, 1, 1] stays zero: invalid
    gt[1, :, 0, 0] = torch.tensor([0.0, 2.0])  # no event there: not counted
    events = torch.tensor([[[1, 1], [1, 1]], [[0, 0], [0, 0]]], dtype=torch.bool)
    aee, n, out = flow_errors(flow, gt, events)
    assert aee[0].item() == pytest.approx(3.0) and math.isnan(aee[1].item())
    assert n.tolist() == [2, 0] and out.tolist() == [1, 0]
    m = FlowMetrics()
    m.update(flow, gt, events)
    gt2 = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    gt2[0, 0] = 0.5  # error 0.5 at four points
    m.update(flow[:1], gt2, torch.ones(1, 2, 2, dtype=torch.bool))
    r = m.result()
    assert r["aee"] == pytest.approx((3.0 + 0.5) / 2)  # the mean of the frames' AEE
    assert r["outliers_pct"] == pytest.approx(100 * 1 / 6) and r["points"] == 6 and r["empty_frames"] == 1
