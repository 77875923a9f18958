r"""BPTT baseline: the same network and forward pass, autograd through time (DESIGN §3, §8).

The objective is ``loss`` (``TrainConfig.loss``; :data:`LOSSES`), with ``o[t]`` the
leaky readout at step ``t`` and CE the batch-mean cross-entropy:

* ``"sum_output"`` (the default, the paper's BPTT): ``CE(Σ_t o[t], label)``;
* ``"per_step"``: ``(1/n) Σ_{t ≥ T−n} CE(o[t], label[t])`` over the last ``n = learn_steps``
  steps, the objective S-TLLR follows (same window, same per-step labels);
* ``"per_step_all"``: the same mean over all ``T`` steps.

The spike's derivative is the same Ψ that S-TLLR uses, so with ``"per_step"`` the two
rules differ only in how credit travels through time. Speed comes from three things:

* feed-forward currents of all steps are one GEMM / convolution over ``T·B`` rows (and
  so are their weight gradients in the backward); with ``"sum_output"`` the linear
  readout enters the loss only through ``Σ_t o[t]``, a weighted sum over time of its
  inputs (one GEMV); with a per-step loss the readout is one GEMM over ``T·B`` rows and
  the leak ``o[t] = Σ_{s≤t} γ_o^{t−s} z[s]`` of the window's steps is one small
  ``[n, T]`` matrix product;
* the LIF scan of a layer is one autograd node (:class:`LIFScan`) with a hand-written
  backward through time. It saves only ``v = u − θ`` and the spikes (which the next
  layer's GEMM saves anyway), and it accumulates the recurrent-weight gradient as one
  GEMM over all steps. :mod:`stllr_engine.reference` holds the plainly unrolled autograd
  network the tests compare it with, for every loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stllr_engine import fused
from stllr_engine._checks import choice, integer
from stllr_engine.errors import StllrError
from stllr_engine.losses import StepLoss, get_step_loss
from stllr_engine.layers import SynapseWeights
from stllr_engine.network import Network
from stllr_engine.neurons import LIFParameters, get_surrogate, heaviside, lif_advance_
from stllr_engine.step_types import NoProbe, Probe, StepStats

__all__ = ["LOSSES", "LIFScan", "lif_scan", "bptt_forward", "bptt_outputs", "bptt_step", "loss_window"]

#: The objectives BPTT can minimise (``TrainConfig.loss``); see the module docstring.
LOSSES = ("sum_output", "per_step", "per_step_all")


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
        if fused.active(u):
            for t in range(T):
                rec = None
                if wt is not None and t > 0:  # y[t-1] W_recᵀ, in v[t]'s buffer (the kernel reads it first)
                    rec = torch.mm(spikes[t - 1], wt, out=vs[t])
                fused.lif_step(u, current[t], rec, vs[t], spikes[t], None, None, None, None, None,
                               p.gamma, p.theta, p.reset, p.surrogate)
        else:
            for t in range(T):
                y_prev = lif_advance_(u, current[t], p, vs[t], spikes[t], one, y_prev, wt)
        ctx.save_for_backward(vs, spikes, w_rec)
        ctx.p = p
        return spikes

    @staticmethod
    def backward(ctx, g_spikes: Tensor):  # type: ignore[override]
        vs, spikes, w_rec = ctx.saved_tensors
        g_cur = scan_backward(g_spikes, vs, w_rec, ctx.p, time_dim=0)
        g_w = None
        if w_rec is not None and ctx.needs_input_grad[1]:
            n = w_rec.shape[0]
            g_w = g_cur[1:].reshape(-1, n).t() @ spikes[:-1].reshape(-1, n)
        return g_cur, g_w, None


def scan_backward(g_spikes: Tensor, vs: Tensor, w_rec: Tensor | None, p: LIFParameters, time_dim: int) -> Tensor:
    """``g_I`` of every step, back through time, for :class:`LIFScan` (``time_dim`` 0: ``[T, B, ...]``)
    and :class:`stllr_engine.pack.PackLIFScan` (``time_dim`` 1: ``[K, T, B, n]``, the recurrent
    weights ``[K, n, n]`` batched): the one copy of the backward step (fused when on)."""
    T = vs.shape[time_dim]
    groups = vs.shape[0] if time_dim == 1 else 1

    def at(x: Tensor, t: int) -> Tensor:
        return x[t] if time_dim == 0 else x[:, t]

    g_cur = torch.empty_like(vs)
    g_u = torch.zeros_like(at(vs, 0))
    g_rec = torch.zeros_like(g_u) if w_rec is not None else None
    if fused.active(g_u):
        for t in range(T - 1, -1, -1):
            fused.lif_backward_step(at(g_spikes, t), g_rec if (g_rec is not None and t < T - 1) else None, g_u,
                                    at(vs, t), at(g_cur, t), p.gamma, p.theta, p.reset, p.surrogate, groups)
            if g_rec is not None and w_rec is not None and t > 0:
                torch.matmul(at(g_cur, t), w_rec, out=g_rec)
        return g_cur
    psi_fn = get_surrogate(p.surrogate)
    g_y = torch.empty_like(g_u)
    psi = torch.empty_like(g_u)
    for t in range(T - 1, -1, -1):
        v = at(vs, t)
        psi_fn(v, out=psi)
        if g_rec is not None and t < T - 1:
            torch.add(at(g_spikes, t), g_rec, out=g_y)
        else:
            g_y.copy_(at(g_spikes, t))
        if p.reset == "soft":
            g_y.sub_(g_u, alpha=p.theta)
            g_i = torch.addcmul(g_u, g_y, psi, out=at(g_cur, t))
        else:
            g_y.sub_((v + p.theta) * g_u)
            g_i = torch.addcmul(g_u * (1.0 - heaviside(v)), g_y, psi, out=at(g_cur, t))
        torch.mul(g_i, p.gamma, out=g_u)
        if g_rec is not None and w_rec is not None and t > 0:
            torch.matmul(g_i, w_rec, out=g_rec)
    return g_cur


def lif_scan(current: Tensor, w_rec: Tensor | None, p: LIFParameters) -> Tensor:
    """Differentiable spikes of a layer over time; see :class:`LIFScan`."""
    return LIFScan.apply(current, w_rec, p)


def _readout_inputs(net: Network, x: Tensor, weights: list[SynapseWeights] | None) -> Tensor:
    """The readout's inputs ``[T, B·F]`` (after its ``pre``) for time-major ``x``, with autograd."""
    T, batch = x.shape[0], x.shape[1]
    if weights is None:
        weights = [layer.effective_weights() for layer in net.hidden_layers]
    inp = x
    outputs: list[Tensor] = []  # every layer's spikes, for the layers that take a skip
    for layer, sw in zip(net.hidden_layers, weights):
        xs = layer.pre(inp.reshape(T * batch, *inp.shape[2:]))
        if layer.skip is not None:
            xs = layer.gather(xs, outputs[layer.skip].reshape(T * batch, *layer.skip_shape))  # type: ignore[misc]
        current = layer.synapse(xs, sw.w, layer.bias).view(T, batch, *layer.out_shape)
        inp = lif_scan(current, sw.w_rec, layer.lif)
        outputs.append(inp)
    return net.readout.pre(inp.reshape(T * batch, *inp.shape[2:])).view(T, -1)


def _sum_weights(g: float, T: int, like: Tensor) -> Tensor:
    """``k_s = Σ_{i=0}^{T-1-s} γ_o^i``: ``Σ_t o[t] = Σ_s k_s z[s]``."""
    steps = torch.arange(T - 1, -1, -1, device=like.device, dtype=like.dtype)  # T-1-s
    return steps + 1.0 if g == 1.0 else (1.0 - g ** (steps + 1.0)) / (1.0 - g)


def _sum_output(net: Network, xo: Tensor, T: int, batch: int) -> Tensor:
    # Σ_t o[t] with o[t] = Σ_{s<=t} γ_o^{t-s} (W x[s] + b)  =  W x̄ + b Σ_s k_s, where
    # x̄ = Σ_s k_s x[s] and k_s = Σ_{i=0}^{T-1-s} γ_o^i: the loss sees the readout only
    # through one weighted sum over time, so the readout is one small GEMM (and so are
    # its gradients) instead of T·B rows with 20 columns.
    ro = net.readout
    k = _sum_weights(ro.gamma_o, T, xo)
    x_bar = (k @ xo).view(batch, -1)
    return ro.synapse(x_bar, ro.weight, ro.bias * k.sum())


def _leak_matrix(g: float, T: int, first: int, like: Tensor) -> Tensor:
    """``K[t − first, s] = γ_o^{t−s}`` for ``s <= t`` (else 0), ``t`` in ``[first, T)``: ``[T − first, T]``."""
    t = torch.arange(first, T, device=like.device, dtype=like.dtype)[:, None]
    s = torch.arange(T, device=like.device, dtype=like.dtype)[None, :]
    lag = t - s
    causal = lag >= 0
    return torch.where(causal, torch.pow(g, lag.clamp_min(0.0)), torch.zeros((), device=like.device, dtype=like.dtype))


def _step_outputs(net: Network, xo: Tensor, T: int, batch: int, first: int) -> tuple[Tensor, Tensor]:
    """``(o[first:T] [n, B, C], z [T, B, C])``, ``z[s] = W x[s] + b`` the readout's input currents.

    ``o[t] = γ_o o[t−1] + z[s]`` unrolled: ``o[first:] = K z`` with :func:`_leak_matrix`.
    The readout GEMM runs first (``T·B`` rows, ``C`` columns), so the leak costs
    ``n·T·B·C`` MACs rather than ``n·T·B·F``.
    """
    ro = net.readout
    z = ro.synapse(xo.view(T * batch, -1), ro.weight, ro.bias).view(T, batch * ro.num_classes)
    o = _leak_matrix(ro.gamma_o, T, first, xo) @ z
    return o.view(T - first, batch, ro.num_classes), z.view(T, batch, ro.num_classes)


def bptt_forward(net: Network, x: Tensor, weights: list[SynapseWeights] | None = None) -> Tensor:
    """``Σ_t o[t]`` ``[B, C]`` for time-major ``x`` ``[T, B, ...]``, with autograd."""
    T, batch = x.shape[0], x.shape[1]
    return _sum_output(net, _readout_inputs(net, x, weights), T, batch)


def bptt_outputs(net: Network, x: Tensor, weights: list[SynapseWeights] | None = None, first: int = 0) -> Tensor:
    """``o[t]`` ``[T − first, B, C]`` for ``t`` in ``[first, T)``, time-major ``x``, with autograd."""
    T, batch = x.shape[0], x.shape[1]
    return _step_outputs(net, _readout_inputs(net, x, weights), T, batch, first)[0]


def loss_window(loss: str, T: int, learn_steps: int | None) -> int:
    """The first step of the loss's window: ``T − learn_steps`` (``"per_step"``), else 0.

    Raises:
        StllrError: an unknown loss; ``"per_step"`` without ``learn_steps`` or with
            ``learn_steps`` outside ``[1, T]``.

    >>> loss_window("per_step", 10, 4), loss_window("per_step_all", 10, None)
    (6, 0)
    >>> loss_window("per_step", 10, None)
    Traceback (most recent call last):
    ...
    stllr_engine.errors.StllrError: BPTT: loss='per_step' averages CE(o[t], label) over the last learn_steps steps: give learn_steps (training.stllr.learn_steps, S-TLLR's window)
    """
    choice("BPTT", "loss", loss, LOSSES)
    if loss != "per_step":
        return 0
    if learn_steps is None:
        raise StllrError("BPTT: loss='per_step' averages CE(o[t], label) over the last learn_steps steps: "
                         "give learn_steps (training.stllr.learn_steps, S-TLLR's window)")
    integer("BPTT", "learn_steps", learn_steps, 1)
    if learn_steps > T:
        raise StllrError(f"BPTT: loss='per_step' with learn_steps={learn_steps} exceeds the T={T} steps of the "
                         "batch: use learn_steps <= T")
    return T - learn_steps


def bptt_step(net: Network, x: Tensor, labels: Tensor, probe: Probe | None = None, *,
              loss: str = "sum_output", learn_steps: int | None = None,
              step_loss: StepLoss | str | None = None) -> StepStats:
    """One BPTT training step on the objective ``loss``, gradients into ``.grad``.

    Args:
        net: the network.
        x: input ``[T, B, ...]`` (time-major).
        labels: ``[B]`` (or ``[T, B]``: ``"sum_output"`` uses the last step's labels, the
            per-step losses each step's own).
        probe: optional instrumentation (costs).
        loss: ``"sum_output"``, ``"per_step"`` or ``"per_step_all"`` (module docstring).
        learn_steps: the window of ``"per_step"`` (required there, ``<= T``; ignored otherwise).
        step_loss: ``ℓ`` of ``L[t] = ℓ(o[t], target[t])`` (:mod:`stllr_engine.losses`; default
            cross-entropy, ``labels`` then being classes); ``"sum_output"`` is ``ℓ(Σ_t o[t], target)``.

    Returns:
        stats whose ``loss`` is ``ℓ(Σ_t o[t], target)`` (by default ``CE(Σ_t o[t], label)``)
        whatever the objective (comparable across rules) and whose ``objective`` is the value
        of ``loss``.
    """
    probe = probe or NoProbe()
    x = x.contiguous()
    T, batch = x.shape[0], x.shape[1]
    first = loss_window(loss, T, learn_steps)
    sl = get_step_loss(step_loss)
    final_labels = sl.final(labels)
    weights = [layer.effective_weights() for layer in net.hidden_layers]
    # (standardised) weights: derived from the parameters, not learning memory
    probe.exclude([t for sw in weights for t in sw if t is not None])
    if loss == "sum_output":
        with probe.phase("forward"):
            o_sum = bptt_forward(net, x, weights)
            objective = sl.values(o_sum[None], final_labels[None])[0]
        with probe.phase("learning"):
            objective.backward()
        correct = sl.correct(o_sum.detach(), labels)
        ce = objective.detach()
        return StepStats(ce, correct, batch, ce)
    with probe.phase("forward"):
        xo = _readout_inputs(net, x, weights)
        o, z = _step_outputs(net, xo, T, batch, first)
        classes = o.shape[-1]
        # the mean over the window's steps of the batch-mean L[t]
        objective = sl.mean(o, sl.window(labels, T, first))
        with torch.no_grad():  # Σ_t o[t] for the comparable loss and the accuracy
            o_sum = (_sum_weights(net.readout.gamma_o, T, z) @ z.view(T, -1)).view(batch, classes)
    with probe.phase("learning"):
        objective.backward()
    correct = sl.correct(o_sum, labels)
    return StepStats(sl.values(o_sum[None], final_labels[None])[0], correct, batch, objective.detach())
