"""The same code on CUDA: equivalence with the CPU references, and GPU memory figures.

Skipped when no CUDA device is present.
"""

from __future__ import annotations

import pytest
import torch
from engine_cases import SPECS, grads_of, make_case, rel_err

from stllr_engine.bptt import bptt_step
from stllr_engine.costs import measure_costs
from stllr_engine.reference import reference_bptt_loss, reference_stllr_grads
from stllr_engine.stllr import STLLRConfig, stllr_step

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("mode", ["window", "streaming"])
@pytest.mark.parametrize("signal", ["bp", "dfa"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_stllr_on_cuda_matches_cpu_reference(name, signal, mode, reset):
    net, x, labels = make_case(name, reset)
    cfg = STLLRConfig(learn_steps=4, lambda_pre=0.7, lambda_post=0.4, alpha_post=0.5, learning_signal=signal, mode=mode)
    ref = reference_stllr_grads(net, x, labels, cfg)
    net.cuda()
    net.zero_grad(set_to_none=True)
    stllr_step(net, x.cuda(), labels.cuda(), cfg)
    got = grads_of(net)
    for n, r in ref.items():
        assert rel_err(got[n].cpu(), r) <= 1e-10, n


@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_bptt_on_cuda_matches_unrolled_cpu(name, reset):
    net, x, labels = make_case(name, reset)
    net.zero_grad(set_to_none=True)
    reference_bptt_loss(net, x, labels).backward()
    ref = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.cuda()
    net.zero_grad(set_to_none=True)
    bptt_step(net, x.cuda(), labels.cuda())
    for n, p in net.named_parameters():
        assert rel_err(p.grad.cpu(), ref[n]) <= 1e-8, n


def test_cuda_peak_memory_is_reported():
    net, x, labels = make_case("recurrent", T=50, batch=64)
    net.float().cuda()
    x, labels = x.float().cuda(), labels.cuda()
    c = measure_costs(net, bptt_step, x, labels, "bptt")
    assert c["cuda_peak_bytes_measured_per_batch"] >= c["learning_memory_bytes_measured_per_batch"] > 0
