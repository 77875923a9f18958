r"""Naive, obviously-correct references for the fast paths (tests and benchmarks only).

* :func:`reference_stllr_grads` steps through time one step at a time, gets
  ``δ[t] = ∂L[t]/∂y[t]`` from autograd on a graph of that step alone (state detached),
  and builds the explicit eligibility tensor ``e_ij[t]`` of every layer (``[B, out, in]``
  for dense layers, ``[B, C_out, positions, C_in·k·k]`` for conv layers via unfold),
  exactly as written in DESIGN §3. Memory and time are huge: small cases only.
  :func:`reference_stllr_online_sgd` applies each window step's update with a plain
  SGD step before the next step (online S-TLLR).
* :func:`reference_bptt_loss` is the plainly unrolled network, step by step, with
  :func:`stllr_engine.neurons.lif_step`, for autograd to differentiate through time.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from stllr_engine.layers import SpikingLayer
from stllr_engine.network import Network
from stllr_engine.neurons import LIFState, lif_step
from stllr_engine.stllr import STLLRConfig, learnable

__all__ = ["reference_stllr_grads", "reference_stllr_online_sgd", "reference_bptt_loss"]


def _eligibility(layer: SpikingLayer, psi: Tensor, tr_pre: Tensor, tr_post_prev: Tensor, x: Tensor,
                 a_pre: float, a_post: float) -> Tensor:
    """Explicit e[t]: dense ``[B, out, in]``; conv ``[B, C_out, L, C_in·k·k]``."""
    if layer.kind == "dense":
        return a_pre * psi[:, :, None] * tr_pre[:, None, :] + a_post * tr_post_prev[:, :, None] * x[:, None, :]
    k, pad = layer.kernel_size, layer.padding
    tr_u = F.unfold(tr_pre, k, padding=pad)  # [B, Cin·k·k, L]
    x_u = F.unfold(x, k, padding=pad)
    b, c = psi.shape[:2]
    psi_l, post_l = psi.reshape(b, c, -1), tr_post_prev.reshape(b, c, -1)  # [B, Cout, L]
    return (a_pre * psi_l[:, :, :, None] * tr_u.transpose(1, 2)[:, None]
            + a_post * post_l[:, :, :, None] * x_u.transpose(1, 2)[:, None])


def _apply_e(layer: SpikingLayer, delta: Tensor, e: Tensor) -> Tensor:
    """ΔW = Σ_b δ_i e_ij (conv: also summed over positions), in weight shape."""
    if layer.kind == "dense":
        return torch.einsum("bi,bij->ij", delta, e)
    b, c = delta.shape[:2]
    return torch.einsum("bcl,bclk->ck", delta.reshape(b, c, -1), e).reshape(layer.weight.shape)


def reference_stllr_grads(net: Network, x: Tensor, labels: Tensor, cfg: STLLRConfig) -> list[Tensor | None]:
    """S-TLLR updates by the equations, in the order of :func:`stllr_engine.stllr.learnable`.

    Args:
        net: network (its parameters are not modified).
        x: input ``[T, B, ...]``.
        labels: ``[B]`` or per-step ``[T, B]``.
        cfg: the rule settings (``mode`` and ``online`` are irrelevant here).
    """
    total: list[Tensor | None] = [None if p is None else torch.zeros_like(p) for p in learnable(net)]
    for update in _reference_steps(net, x, labels, cfg):
        for acc, g in zip(total, update):
            if acc is not None and g is not None:
                acc += g
    return total


def reference_stllr_online_sgd(net: Network, x: Tensor, labels: Tensor, cfg: STLLRConfig, lr: float) -> None:
    """Online S-TLLR by the equations: after every window step, ``p ← p − lr · update``.

    A plain SGD step on the parameters after each window step's explicit-eligibility
    update; the next step's forward uses the new weights. Modifies ``net`` in place.
    """
    with torch.no_grad():
        for update in _reference_steps(net, x, labels, cfg):
            for p, g in zip(learnable(net), update):
                if p is not None and g is not None:
                    p.sub_(g, alpha=lr)


def _reference_steps(net: Network, x: Tensor, labels: Tensor, cfg: STLLRConfig) -> Iterator[list[Tensor | None]]:
    """Yields each window step's update (learnable order), step by step; reads the
    parameters afresh at every step, so a caller may change them between steps."""
    T, batch = x.shape[0], x.shape[1]
    layers = net.hidden_layers
    ro = net.readout
    factors = cfg.factors(len(layers))
    lam_ro = cfg.readout_lambda if cfg.readout_lambda is not None else ro.gamma_o
    t_win = T - min(cfg.learn_steps, T)

    def zeros(shape):
        return x.new_zeros(batch, *shape)

    u = [zeros(layer.out_shape) for layer in layers]
    y_prev = [zeros(layer.out_shape) for layer in layers]
    tr_pre = [zeros(layer.x_shape) for layer in layers]
    tr_rec = [zeros(layer.out_shape) for layer in layers]
    tr_post = [zeros(layer.out_shape) for layer in layers]
    o = x.new_zeros(batch, ro.num_classes)
    tr_ro = zeros(ro.x_shape)
    c_ro = 0.0

    for t in range(T):
        with torch.no_grad():
            weights = [layer.effective_weight() for layer in layers]
        lab = labels if labels.dim() == 1 else labels[t]
        # requires_grad on the input makes the step's graph exist even without a bias
        inp: Tensor = x[t].clone().requires_grad_(cfg.learning_signal == "bp")
        xs_all, ys, vs = [], [], []
        with torch.enable_grad():
            for i, layer in enumerate(layers):
                xs = layer.pre(inp)
                cur = layer.add_bias(layer.synapse(xs, weights[i]))
                if layer.rec_weight is not None:
                    cur = cur + y_prev[i] @ layer.rec_weight.detach().t()
                y, v, st = lif_step(cur, LIFState(u[i]), layer.lif)
                xs_all.append(xs)
                ys.append(y)
                vs.append(v.detach())
                u[i] = st.u.detach()
                inp = y
            xo = ro.pre(inp)
            o = ro.gamma_o * o.detach() + xo @ ro.weight.detach().t() + ro.bias.detach()
            loss = F.cross_entropy(o, lab)
            if t >= t_win and cfg.learning_signal == "bp":
                *deltas, err = torch.autograd.grad(loss, ys + [o])  # δ_l[t] = ∂L[t]/∂y_l[t]
            else:
                deltas = None
                err = (torch.softmax(o.detach(), -1) - F.one_hot(lab, ro.num_classes).to(x.dtype)) / batch
        o = o.detach()
        tr_ro = lam_ro * tr_ro + xo.detach()
        c_ro = lam_ro * c_ro + 1.0
        update: list[Tensor | None] = [torch.einsum("bi,bj->ij", err, tr_ro), err.sum(0) * c_ro]
        for i, layer in enumerate(layers):
            f = factors[i]
            psi = _psi(layer, vs[i])
            xs = xs_all[i].detach()
            tr_pre[i] = f.lambda_pre * tr_pre[i] + xs
            if t >= t_win:
                if cfg.learning_signal == "bp":
                    delta = deltas[i]  # type: ignore[index]
                else:
                    delta = (err @ net.feedback_matrix(i)).reshape(batch, *layer.out_shape)
                e = _eligibility(layer, psi, tr_pre[i], tr_post[i], xs, f.alpha_pre, f.alpha_post)
                g_eff = _apply_e(layer, delta, e)
                g_b = (delta * psi).sum(dim=0 if layer.kind == "dense" else (0, 2, 3))
                g_r = None
                if layer.recurrent:
                    tr_rec_now = f.lambda_pre * tr_rec[i] + y_prev[i]
                    e_rec = _eligibility(layer, psi, tr_rec_now, tr_post[i], y_prev[i], f.alpha_pre, f.alpha_post)
                    g_r = torch.einsum("bi,bij->ij", delta, e_rec)
                update += [_through_standardisation(layer, g_eff), g_b if layer.bias is not None else None, g_r]
            if layer.recurrent:
                tr_rec[i] = f.lambda_pre * tr_rec[i] + y_prev[i]
            tr_post[i] = f.lambda_post * tr_post[i] + psi
            y_prev[i] = ys[i].detach()
        if t >= t_win:
            yield update


def _through_standardisation(layer: SpikingLayer, g_eff: Tensor) -> Tensor:
    """The update of the raw weight for an update ``g_eff`` of the weight the synapse uses."""
    if not layer.weight_standardization:
        return g_eff
    from stllr_engine.layers import standardize_weight

    w = layer.weight.detach().requires_grad_(True)
    with torch.enable_grad():
        (gw,) = torch.autograd.grad(standardize_weight(w), w, g_eff)
    return gw


def _psi(layer: SpikingLayer, v: Tensor) -> Tensor:
    from stllr_engine.neurons import get_surrogate

    return get_surrogate(layer.lif.surrogate)(v)


def reference_bptt_loss(net: Network, x: Tensor, labels: Tensor) -> Tensor:
    """``CE(Σ_t o[t], label)`` of the plainly unrolled network (differentiable)."""
    T, batch = x.shape[0], x.shape[1]
    layers = net.hidden_layers
    ro = net.readout
    u = [x.new_zeros(batch, *layer.out_shape) for layer in layers]
    y_prev = [x.new_zeros(batch, *layer.out_shape) for layer in layers]
    o = x.new_zeros(batch, ro.num_classes)
    o_sum = torch.zeros_like(o)
    for xt in x.unbind(0):
        inp = xt
        for i, layer in enumerate(layers):
            cur = layer.add_bias(layer.synapse(layer.pre(inp), layer.effective_weight()))
            if layer.rec_weight is not None:
                cur = cur + y_prev[i] @ layer.rec_weight.t()
            y, _, st = lif_step(cur, LIFState(u[i]), layer.lif)
            u[i], y_prev[i] = st.u, y
            inp = y
        o = ro.gamma_o * o + F.linear(ro.pre(inp), ro.weight, ro.bias)
        o_sum = o_sum + o
    return F.cross_entropy(o_sum, labels if labels.dim() == 1 else labels[-1])
