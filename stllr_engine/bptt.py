r"""BPTT baseline: the same network and forward pass, autograd through time (DESIGN §3).

Loss ``CE(Σ_t o[t], label)``; the spike's derivative is the same Ψ that S-TLLR uses, so
the two rules differ only in time. Speed comes from two things:

* feed-forward currents of all steps are one GEMM / convolution over ``T·B`` rows (and
  so are their weight gradients in the backward); the linear readout enters the loss
  only through ``Σ_t o[t]``, a weighted sum over time of its inputs (one GEMV);
* the LIF scan of a layer is one autograd node (:class:`LIFScan`) with a hand-written
  backward through time. It saves only ``v = u − θ`` and the spikes (which the next
  layer's GEMM saves anyway), and it accumulates the recurrent-weight gradient as one
  GEMM over all steps. :mod:`stllr_engine.reference` holds the plainly unrolled autograd
  network the tests compare it with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from stllr_engine.layers import SynapseWeights
from stllr_engine.network import Network
from stllr_engine.neurons import LIFParameters, get_surrogate, heaviside, lif_advance_
from stllr_engine.step_types import NoProbe, Probe, StepStats

__all__ = ["LIFScan", "lif_scan", "bptt_forward", "bptt_step"]


class LIFScan(torch.autograd.Function):
    """Spikes ``[T, B, ...]`` of a LIF layer for currents ``[T, B, ...]`` (zero initial state).

    Backward, with ``g_u`` the gradient w.r.t. the post-reset membrane carried from t+1:

    * soft reset: ``g_y = ĝ_y[t] − θ g_u``, ``g_I[t] = g_u + g_y Ψ(v[t])``
    * hard reset: ``g_y = ĝ_y[t] − u_pre g_u``, ``g_I[t] = g_u (1 − y[t]) + g_y Ψ(v[t])``
    * ``g_u ← γ g_I[t]``; recurrent: ``ĝ_y[t−1] += g_I[t] W_rec``.
    """

    @staticmethod
    def forward(ctx, current: Tensor, w_rec: Tensor | None, p: LIFParameters) -> Tensor:  # type: ignore[override]
        T = current.shape[0]
        spikes = torch.empty_like(current)
        vs = torch.empty_like(current)
        u = torch.zeros_like(current[0])
        one = u.new_ones(())
        wt = w_rec.t() if w_rec is not None else None
        y_prev = None
        for t in range(T):
            y_prev = lif_advance_(u, current[t], p, vs[t], spikes[t], one, y_prev, wt)
        ctx.save_for_backward(vs, spikes, w_rec)
        ctx.p = p
        return spikes

    @staticmethod
    def backward(ctx, g_spikes: Tensor):  # type: ignore[override]
        vs, spikes, w_rec = ctx.saved_tensors
        p: LIFParameters = ctx.p
        psi_fn = get_surrogate(p.surrogate)
        T = vs.shape[0]
        g_cur = torch.empty_like(vs)
        g_u = torch.zeros_like(vs[0])
        g_y = torch.empty_like(g_u)
        psi = torch.empty_like(g_u)
        g_rec = torch.zeros_like(g_u) if w_rec is not None else None
        for t in range(T - 1, -1, -1):
            v = vs[t]
            psi_fn(v, out=psi)
            if g_rec is not None and t < T - 1:
                torch.add(g_spikes[t], g_rec, out=g_y)
            else:
                g_y.copy_(g_spikes[t])
            if p.reset == "soft":
                g_y.sub_(g_u, alpha=p.theta)
                g_i = torch.addcmul(g_u, g_y, psi, out=g_cur[t])
            else:
                g_y.sub_((v + p.theta) * g_u)
                g_i = torch.addcmul(g_u * (1.0 - heaviside(v)), g_y, psi, out=g_cur[t])
            torch.mul(g_i, p.gamma, out=g_u)
            if g_rec is not None and t > 0:
                torch.mm(g_i, w_rec, out=g_rec)
        g_w = None
        if w_rec is not None and ctx.needs_input_grad[1]:
            n = w_rec.shape[0]
            g_w = g_cur[1:].reshape(-1, n).t() @ spikes[:-1].reshape(-1, n)
        return g_cur, g_w, None


def lif_scan(current: Tensor, w_rec: Tensor | None, p: LIFParameters) -> Tensor:
    """Differentiable spikes of a layer over time; see :class:`LIFScan`."""
    return LIFScan.apply(current, w_rec, p)


def bptt_forward(net: Network, x: Tensor, weights: list[SynapseWeights] | None = None) -> Tensor:
    """``Σ_t o[t]`` ``[B, C]`` for time-major ``x`` ``[T, B, ...]``, with autograd."""
    T, batch = x.shape[0], x.shape[1]
    if weights is None:
        weights = [layer.effective_weights() for layer in net.hidden_layers]
    inp = x
    for layer, sw in zip(net.hidden_layers, weights):
        xs = layer.pre(inp.reshape(T * batch, *inp.shape[2:]))
        current = layer.synapse(xs, sw.w, layer.bias).view(T, batch, *layer.out_shape)
        inp = lif_scan(current, sw.w_rec, layer.lif)
    ro = net.readout
    # Σ_t o[t] with o[t] = Σ_{s<=t} γ_o^{t-s} (W x[s] + b)  =  W x̄ + b Σ_s k_s, where
    # x̄ = Σ_s k_s x[s] and k_s = Σ_{i=0}^{T-1-s} γ_o^i: the loss sees the readout only
    # through one weighted sum over time, so the readout is one small GEMM (and so are
    # its gradients) instead of T·B rows with 20 columns.
    steps = torch.arange(T - 1, -1, -1, device=x.device, dtype=x.dtype)  # T-1-s
    g = ro.gamma_o
    k = steps + 1.0 if g == 1.0 else (1.0 - g ** (steps + 1.0)) / (1.0 - g)
    xo = ro.pre(inp.reshape(T * batch, *inp.shape[2:])).view(T, -1)
    x_bar = (k @ xo).view(batch, -1)
    return F.linear(x_bar, ro.weight, ro.bias * k.sum())


def bptt_step(net: Network, x: Tensor, labels: Tensor, probe: Probe | None = None) -> StepStats:
    """One BPTT training step: loss ``CE(Σ_t o[t], label)``, gradients into ``.grad``.

    Args:
        net: the network.
        x: input ``[T, B, ...]`` (time-major).
        labels: ``[B]`` (or ``[T, B]``: the last step's labels are used).
    """
    probe = probe or NoProbe()
    x = x.contiguous()
    labels = labels if labels.dim() == 1 else labels[-1]
    weights = [layer.effective_weights() for layer in net.hidden_layers]
    # (standardised) weights: derived from the parameters, not learning memory
    probe.exclude([t for sw in weights for t in sw if t is not None])
    with probe.phase("forward"):
        o_sum = bptt_forward(net, x, weights)
        loss = F.cross_entropy(o_sum, labels)
    with probe.phase("learning"):
        loss.backward()
    correct = (o_sum.detach().argmax(-1) == labels).sum()
    ce = loss.detach()
    return StepStats(ce, correct, x.shape[1], ce)
